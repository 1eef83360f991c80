"""A checkpoint's progress: the step, the learning-rate scheduler and the random generators.

Written as plain JSON (`progress.json`; the generators' byte states as base64), never as a
pickle: checkpoints get shared, and unpickling one runs whatever code it names. Checkpoints of
earlier versions hold `progress.pt`, a pickle; it is still read, with
`torch.load(weights_only=True)`, which builds tensors and plain data and refuses anything else.
"""

from __future__ import annotations

import base64
import binascii
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

PROGRESS_FILE = "progress.json"
OLD_PROGRESS_FILE = "progress.pt"

RandomState = dict[str, Any]  # "torch": a byte tensor; "cuda": a list of them, one per device


class ProgressUnreadable(Exception):
    """A progress file that is damaged, or not what training writes."""


def write_progress(folder: Path, step: int, scheduler: dict[str, Any]) -> None:
    def text(state: Tensor) -> str:
        return base64.b64encode(state.numpy().tobytes()).decode("ascii")

    generators: dict[str, Any] = {"torch": text(torch.get_rng_state())}
    if torch.cuda.is_available():
        generators["cuda"] = [text(device) for device in torch.cuda.get_rng_state_all()]
    (folder / PROGRESS_FILE).write_text(json.dumps({"step": step, "scheduler": scheduler, "rng": generators}),
                                        encoding="utf-8")


def read_progress(checkpoint: Path, fresh_scheduler: dict[str, Any]) -> tuple[int, dict[str, Any], RandomState]:
    """The step, scheduler state and generator states in `checkpoint`, checked against what training
    writes (`fresh_scheduler`: a new scheduler's state, for its fields); `ProgressUnreadable` if not."""
    path = checkpoint / PROGRESS_FILE
    try:
        if path.exists():
            progress = json.loads(path.read_text(encoding="utf-8"))
            saved = progress["rng"]
            generators: RandomState = {"torch": _byte_tensor(saved["torch"])}
            if "cuda" in saved:
                generators["cuda"] = [_byte_tensor(device) for device in saved["cuda"]]
        else:
            path = checkpoint / OLD_PROGRESS_FILE
            progress = torch.load(path, weights_only=True)  # tensors and plain data only: no code runs
            generators = progress["rng"]
        step, scheduler = progress["step"], progress["scheduler"]
        unknown = set(scheduler) - set(fresh_scheduler) if isinstance(scheduler, dict) else {"(not a mapping)"}
        if isinstance(step, bool) or not isinstance(step, int) or step < 0 or unknown:
            raise ValueError(f"step {step!r} or scheduler fields {sorted(unknown)} are not what training writes")
        cpu, cuda = generators.get("torch"), generators.get("cuda", [])
        if not isinstance(cpu, Tensor) or cpu.shape != torch.get_rng_state().shape \
                or not all(isinstance(t, Tensor) for t in cuda):
            raise ValueError("the random generators' states are not what torch keeps")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, pickle.UnpicklingError,
            binascii.Error) as exc:
        raise ProgressUnreadable(f"{path} is damaged or not written by Cleo's training ({exc})") from exc
    return step, scheduler, generators


def restore_random_state(generators: RandomState) -> None:
    torch.set_rng_state(generators["torch"])
    if "cuda" in generators and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(generators["cuda"])


def _byte_tensor(text: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8).clone()
