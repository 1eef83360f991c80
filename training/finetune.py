"""Fine-tune Cleo's default MoE on the shared chat data, export it, quantize it, install it.

    python -m training finetune-default [--steps N] [--seq-len T] [--batch-size B]

1. Reads the upcycled default model (`training.defaults`) into torch and gives each expert a small, different
   nudge: the copies are identical, and identical experts receive identical gradients forever.
2. Measures held-out perplexity of the dense base, of the upcycled model before training, and
   after training, all on the same held-out conversations (fixed by the seed).
3. Trains (single process or torchrun), exports F16 GGUF, quantizes to Q8_0 and Q4_K_M, checks
   the exported file's perplexity through llama.cpp, and writes the result into Cleo's models
   folder, where the model catalog lists it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.paths import default_chat_model, ensure, folders
from engine.settings import DEFAULT_SYSTEM_PROMPT
from training.data import TrainingData, chat_data
from training.evaluate import gguf_perplexity
from training.gguf_io import load_gguf, save_gguf
from training.model import Decoder
from training.quantize import quantize
from training.tokenizer import Tokenizer
from training.train import TrainConfig, Trainer
from training.upcycle import diversify_experts

log = logging.getLogger(__name__)

def _shared_data() -> Path:
    """The project's licence-clean chat data: `$CLEO_SHARED_DATA`, or `shared/data` beside the checkout."""
    if os.environ.get("CLEO_SHARED_DATA"):
        return Path(os.environ["CLEO_SHARED_DATA"])
    for folder in Path(__file__).resolve().parents:
        if (folder / "shared" / "data").is_dir():
            return folder / "shared" / "data"
    return Path(__file__).resolve().parents[2] / "shared" / "data"  # named in the error when it is missing


SHARED_DATA = _shared_data()
FINE_TUNED_NAME = "cleo-moe-4x135m-chat"


@dataclass(frozen=True)
class Recipe:
    steps: int = 200
    seq_len: int = 512
    batch_size: int = 8
    learning_rate: float = 1e-4
    warmup_steps: int = 20
    expert_noise: float = 0.01  # relative size of each expert's nudge
    seed: int = 0
    held_out_fraction: float = 0.02
    limit: int | None = None  # conversations read (for quick runs)
    data: tuple[str, ...] = ()  # default: every file in ../shared/data


def data_files(recipe: Recipe) -> list[Path]:
    if recipe.data:
        return [Path(p) for p in recipe.data]
    return sorted(p for p in SHARED_DATA.iterdir() if p.suffix == ".json" or p.is_dir())


def held_out_perplexity(model: Decoder, data: TrainingData) -> float:
    trainer = Trainer(model.config, TrainConfig(steps=0, output=str(folders().cache / "eval")), TrainingBatches(data),
                      model=model)
    return trainer.evaluate()["perplexity"]


class TrainingBatches:
    """`TrainingData` as the trainer's `BatchSource`: training batches by position, held-out rows in order."""

    def __init__(self, data: TrainingData) -> None:
        self.data = data

    def batch(self, index: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
        return self.data.train.batch(index, rank, world_size)

    def held_out(self) -> Iterator[dict[str, torch.Tensor]]:
        assert self.data.held_out is not None
        return self.data.held_out.sequential()


def finetune_default(recipe: Recipe, output: Path, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole recipe; returns the report (also written to `output/report.json`)."""
    source = default_chat_model()
    model, info = load_gguf(source)
    dense, _ = load_gguf(_dense_base())
    tokenizer = Tokenizer.from_gguf(source)
    data = chat_data(data_files(recipe), tokenizer, seq_len=recipe.seq_len, batch_size=recipe.batch_size,
                     seed=recipe.seed, held_out_fraction=recipe.held_out_fraction, skip_bad=True,
                     system_prompt=DEFAULT_SYSTEM_PROMPT, limit=recipe.limit)
    report: dict[str, Any] = {"recipe": dataclasses.asdict(recipe), "data": data.stats}
    report["perplexity_dense_base"] = held_out_perplexity(dense, data)
    del dense
    report["perplexity_upcycled_before"] = held_out_perplexity(model, data)
    diversify_experts(model, recipe.expert_noise, recipe.seed)

    config = TrainConfig(steps=recipe.steps, learning_rate=recipe.learning_rate, warmup_steps=recipe.warmup_steps,
                         seed=recipe.seed, checkpoint_every=max(1, recipe.steps // 4), output=str(output / "run"))
    trainer = Trainer(model.config, config, TrainingBatches(data), model=model)
    trainer.resume()
    result = trainer.train(progress=progress)
    report["perplexity_after"] = result.held_out["perplexity"]
    report["ratio_after_to_dense"] = report["perplexity_after"] / report["perplexity_dense_base"]
    report["target_met"] = report["ratio_after_to_dense"] <= 0.85
    report["expert_load"] = _expert_load(trainer.model, data)

    f16 = save_gguf(trainer.model.cpu(), info, output / f"{FINE_TUNED_NAME}-f16.gguf", dtype="f16",
                    name="Cleo MoE 4x135M Chat")
    models = ensure(folders().models)
    report["files"] = {}
    for kind in ("Q8_0", "Q4_K_M"):
        target = models / f"{FINE_TUNED_NAME}-{kind.lower()}.gguf"
        quantize(f16, target, kind)
        report["files"][kind] = str(target)
    assert data.held_out is not None
    report["perplexity_exported_f16_llama_cpp"] = gguf_perplexity(f16, data.held_out.sequential())
    report["perplexity_q4_k_m_llama_cpp"] = gguf_perplexity(Path(report["files"]["Q4_K_M"]),
                                                             data.held_out.sequential())
    (output / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _dense_base() -> Path:
    from training.defaults import base_chat_model

    return base_chat_model()


@torch.no_grad()
def _expert_load(model: Decoder, data: TrainingData) -> list[list[float]]:
    """Share of token slots each expert got, per layer, on the held-out data."""
    assert data.held_out is not None
    model.eval()
    totals: torch.Tensor | None = None
    for batch in data.held_out.sequential():
        model(batch["input_ids"], batch.get("position_ids"), batch.get("segment_ids"))
        counts = torch.stack([layer.stats.tokens_per_expert for layer in model.moe_layers()
                              if layer.stats is not None])
        totals = counts if totals is None else totals + counts
    assert totals is not None
    return (totals / totals.sum(-1, keepdim=True)).round(decimals=3).tolist()
