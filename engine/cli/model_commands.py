"""`cleo models list` and `cleo models info PATH`: the catalog, printed for people or as JSON.

Names and architectures come from the files' metadata: they are printed through `terminal_text`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine.cli.terminal_text import printable
from engine.models.catalog import ModelCatalog, ModelInfo, read_model_info


def run(action: str, *, path: Path | None, as_json: bool) -> int:
    if action == "info":
        assert path is not None  # argparse requires it for `info`
        info = read_model_info(path)
        print(json.dumps(_as_json(info), indent=2) if as_json else printable(describe(info)))
        return 0
    models, unusable = ModelCatalog().scan()
    if as_json:
        print(json.dumps({"models": [_as_json(m) for m in models],
                          "unusable": [{"path": str(u.path), "problem": u.problem} for u in unusable]}, indent=2))
        return 0
    if not models and not unusable:
        print("No models yet. Run `python -m training.defaults` to build Cleo's default models.")
    for info in models:
        print(printable(describe(info)), end="\n\n")
    for bad in unusable:
        print(printable(f"unusable: {bad.path}\n  {bad.problem}\n"))
    return 0


def describe(info: ModelInfo) -> str:
    """A few lines a person can read: what the model is and how big."""
    experts = f"MoE, {info.experts} experts, {info.experts_used} used per token" if info.is_moe else "dense"
    kind = "embeddings" if info.is_embedding_model else ("chat" if info.has_chat_template else "no chat template")
    return (f"{info.name}\n  {info.path}\n  {info.architecture}, {experts}, {_count(info.parameters)} parameters, "
            f"{info.quantization}, {info.file_size / 1e6:.0f} MB\n  context {info.context_length} tokens, {kind}")


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _as_json(info: ModelInfo) -> dict[str, Any]:
    data = asdict(info)
    data["path"] = str(info.path)
    data["is_moe"] = info.is_moe
    data["is_embedding_model"] = info.is_embedding_model
    data["has_chat_template"] = info.has_chat_template
    del data["chat_template"]  # long; `has_chat_template` says what the list needs
    return data  # printed with json.dumps' default ensure_ascii: every control character escaped
