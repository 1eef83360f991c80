"""The training loop: one script for a laptop CPU, one GPU, or `torchrun --nproc_per_node N`.

AdamW with warmup and cosine decay, gradient clipping, gradient accumulation (gradients are only
synchronised on the last micro-batch), bf16 autocast on CUDA and fp32 on the CPU. Parallelism
is DDP or FSDP2 (`fully_shard`) when started by torchrun, nothing otherwise.

Checkpoints hold everything an exact resume needs: model, optimizer, scheduler, the step (the
data are a pure function of the step, see `BatchSource`) and the random generators. They are written
with `torch.distributed.checkpoint` into `step-N.partial/` and renamed when complete, so a crash
or a full disk mid-write leaves the previous checkpoint as it was. A NaN loss stops training
without writing, keeping the last good checkpoint.

The step, the scheduler and the generators' states are plain JSON (`training.progress`), never
a pickle: checkpoints get shared, and unpickling one runs whatever code it names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from training.model import Decoder, ModelConfig
from training.progress import ProgressUnreadable, read_progress, restore_random_state, write_progress

log = logging.getLogger(__name__)

Parallel = Literal["auto", "none", "ddp", "fsdp"]
CONFIG_FILE = "config.json"


class TrainingError(Exception):
    """Something the person training must fix (a mismatched checkpoint, a NaN, a full disk)."""


class BatchSource(Protocol):
    """Where the trainer takes its batches: training data as a pure function of the position, so
    resuming needs only the step, and fixed held-out batches to evaluate on."""

    def batch(self, index: int, rank: int, world_size: int) -> dict[str, Tensor]:
        """Micro-batch `index` for `rank`: "input_ids" and "labels" [B, T]; labels[b, t] is the token
        that should follow input_ids[b, t], or -100 where nothing is learned."""
        ...

    def held_out(self) -> Iterator[dict[str, Tensor]]:
        """The fixed evaluation batches; each may carry "n_bytes", the UTF-8 bytes its labels cover."""
        ...


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    learning_rate: float = 3e-4
    min_learning_rate_ratio: float = 0.1  # cosine decays to this share of the peak
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    micro_batches: int = 1  # gradient accumulation
    seed: int = 0
    checkpoint_every: int = 100
    eval_every: int = 0  # 0: only at the end
    parallel: Parallel = "auto"
    output: str = "runs/cleo"

    def resume_fields(self) -> dict[str, Any]:
        """What must match for a checkpoint to be continued (not `steps`: a run may be extended)."""
        fields = dataclasses.asdict(self)
        for free in ("steps", "checkpoint_every", "eval_every", "output", "parallel"):
            fields.pop(free)
        return fields


@dataclass
class TrainResult:
    steps_done: int
    last_loss: float
    held_out: dict[str, float]
    checkpoint: Path | None


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warmup to the peak, then cosine down to `min_learning_rate_ratio` of it."""
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    floor = peak * config.min_learning_rate_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, model_config: ModelConfig, config: TrainConfig, data: BatchSource, *,
                 model: Decoder | None = None, device: torch.device | None = None) -> None:
        self.model_config = model_config
        self.config = config
        self.data = data
        self.rank, self.world_size = _distributed_setup()
        self.device = device or _default_device(self.rank)
        torch.manual_seed(config.seed)
        self.model = (model or Decoder(model_config)).to(self.device)
        self.wrapped = self._parallelise(self.model)
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        keep = [p for n, p in self.model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": keep, "weight_decay": 0.0}],
            lr=config.learning_rate, betas=(0.9, 0.95))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: learning_rate(config, step) / config.learning_rate)
        self.step = 0
        self.output = Path(config.output)

    # --- the loop -------------------------------------------------------------------------------

    def train(self, *, progress: bool = True, stop_after: int | None = None) -> TrainResult:
        """Train to `config.steps` (or pause after step `stop_after`, checkpointed, to resume later)."""
        loss_value = float("nan")
        last = min(self.config.steps, stop_after or self.config.steps)
        bar = _progress(self.config.steps, self.step) if progress and self.rank == 0 else None
        started, tokens = time.perf_counter(), 0
        while self.step < last:
            loss_value, step_tokens = self.train_step()
            if not math.isfinite(loss_value):
                raise self._diverged(f"The loss became {loss_value} at step {self.step + 1}")
            self.step += 1
            tokens += step_tokens
            if bar is not None:
                elapsed = time.perf_counter() - started
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens * self.world_size / elapsed:.0f}")
                bar.update(1)
            if self.step % self.config.checkpoint_every == 0 or self.step == last:
                if not all(torch.isfinite(p).all() for p in self.model.parameters()):
                    raise self._diverged(f"The weights became infinite or NaN by step {self.step}")
                self.save_checkpoint()
            if self.config.eval_every and self.step % self.config.eval_every == 0 and self.rank == 0:
                log.info("step %d held-out %s", self.step, self.evaluate())
        if bar is not None:
            bar.close()
        return TrainResult(self.step, loss_value, self.evaluate(), self.latest_checkpoint())

    def _diverged(self, what: str) -> TrainingError:
        return TrainingError(f"{what}; training stopped without saving. The last good checkpoint is "
                             f"{self.latest_checkpoint() or 'none yet'}. Lower the learning rate or check the data.")

    def train_step(self) -> tuple[float, int]:
        """One optimizer step over `micro_batches` micro-batches; the mean loss and the tokens seen."""
        self.wrapped.train()
        total, tokens = 0.0, 0
        n = self.config.micro_batches
        for micro in range(n):
            batch = self.data.batch(self.step * n + micro, self.rank, self.world_size)
            ids, labels = batch["input_ids"].to(self.device), batch["labels"].to(self.device)
            last = micro == n - 1
            with self._no_sync(not last), self._autocast():
                out = self.wrapped(ids, *self._packing(batch))
                loss = _loss(out.logits, labels) + out.aux_loss
            (loss / n).backward()
            total += loss.item() / n
            tokens += ids.numel()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if math.isfinite(total):
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, tokens

    def _packing(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Positions and document numbers of a packed batch, if it has them (plain batches do not)."""
        def on_device(key: str) -> torch.Tensor | None:
            return batch[key].to(self.device) if key in batch else None

        return on_device("position_ids"), on_device("segment_ids")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out loss (nats per learned token), perplexity and, when the data know their bytes, bits per byte."""
        self.wrapped.eval()
        nll, count, n_bytes = 0.0, 0, 0
        for batch in self.data.held_out():
            ids, labels = batch["input_ids"].to(self.device), batch["labels"].to(self.device)
            with self._autocast():
                logits = self.wrapped(ids, *self._packing(batch)).logits
            nll += F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                   reduction="sum").item()
            count += int((labels != -100).sum())
            n_bytes += int(batch.get("n_bytes", torch.tensor(0)).sum())
        if not count:
            return {}
        result = {"loss": nll / count, "perplexity": math.exp(min(nll / count, 50.0))}
        if n_bytes:
            result["bits_per_byte"] = nll / math.log(2) / n_bytes
        return result

    # --- checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        final = self.output / f"step-{self.step:07d}"
        partial = final.with_name(final.name + ".partial")
        model_state, optimizer_state = get_state_dict(self.wrapped, self.optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        try:
            if self.rank == 0:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
            _barrier()
            with _single_process_ok():
                dcp.save(state, checkpoint_id=str(partial), no_dist=not dist.is_initialized())
            if self.rank == 0:
                write_progress(partial, self.step, self.scheduler.state_dict())
                (partial / CONFIG_FILE).write_text(json.dumps(
                    {"model": _jsonable(self.model_config), "train": self.config.resume_fields()}, indent=2))
                os.replace(partial, final)
            _barrier()
        except OSError as exc:
            if self.rank == 0:
                shutil.rmtree(partial, ignore_errors=True)
            raise TrainingError(f"Writing the checkpoint {final} failed ({exc.strerror or exc}); the previous "
                                f"checkpoint {self.latest_checkpoint() or '(none)'} is intact. Free disk space "
                                "and resume.") from exc
        return final

    def latest_checkpoint(self) -> Path | None:
        found = sorted(p for p in self.output.glob("step-*") if p.is_dir() and not p.name.endswith(".partial"))
        return found[-1] if found else None

    def resume(self, checkpoint: Path | None = None) -> bool:
        """Continue from `checkpoint` (default: the latest in `output`); False when there is none."""
        checkpoint = checkpoint or self.latest_checkpoint()
        if checkpoint is None:
            return False
        saved = json.loads((checkpoint / CONFIG_FILE).read_text())
        mismatched = _differences(saved["model"], _jsonable(self.model_config), "model") + \
            _differences(saved["train"], self.config.resume_fields(), "training")
        if mismatched:
            raise TrainingError(f"The checkpoint {checkpoint} was made with another configuration: "
                                + "; ".join(mismatched) + ". Use the same settings, or another output folder.")
        model_state, optimizer_state = get_state_dict(self.wrapped, self.optimizer)
        with _single_process_ok():  # loads in place into the two state dicts
            dcp.load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(checkpoint),
                     no_dist=not dist.is_initialized())
        set_state_dict(self.wrapped, self.optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
        try:
            step, scheduler, random_state = read_progress(checkpoint, self.scheduler.state_dict())
        except ProgressUnreadable as exc:
            raise TrainingError(f"The checkpoint {checkpoint} cannot be resumed: {exc}. Nothing in it was run. "
                                "Resume from another checkpoint, or start again in another output folder.") from exc
        self.step = step
        self.scheduler.load_state_dict(scheduler)
        restore_random_state(random_state)
        return True

    # --- plumbing ---------------------------------------------------------------------------------

    def _parallelise(self, model: Decoder) -> nn.Module:
        mode = self.config.parallel
        if mode == "auto":
            mode = "ddp" if self.world_size > 1 else "none"
        if mode == "none" or (self.world_size == 1 and mode == "ddp"):
            return model
        if mode == "ddp":
            ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(model, device_ids=ids)
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model

    def _no_sync(self, skip: bool) -> contextlib.AbstractContextManager[None]:
        """Inside: backward accumulates locally; DDP all-reduces only on the last micro-batch."""
        if skip and isinstance(self.wrapped, nn.parallel.DistributedDataParallel):
            return self.wrapped.no_sync()
        if skip and hasattr(self.wrapped, "set_requires_gradient_sync"):  # FSDP2
            return _restore_sync(self.wrapped)
        return contextlib.nullcontext()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


@contextlib.contextmanager
def _single_process_ok() -> Iterator[None]:
    """DCP warns when it runs without a process group; for a one-process run that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


@contextlib.contextmanager
def _restore_sync(module: Any) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def _loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy over the learned positions (labels are already the next tokens)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


def _distributed_setup() -> tuple[int, int]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _default_device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _jsonable(config: ModelConfig) -> dict[str, Any]:
    fields = dataclasses.asdict(config)
    fields.pop("extra", None)
    fields.pop("dispatch", None)  # how experts are computed, not what: free to change between runs
    return json.loads(json.dumps(fields))


def _differences(saved: dict[str, Any], now: dict[str, Any], what: str) -> list[str]:
    return [f"{what} {key} was {saved.get(key)!r}, now {now.get(key)!r}"
            for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]


def _progress(total: int, done: int) -> Any:
    from tqdm import tqdm  # type: ignore[import-untyped]

    return tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)
