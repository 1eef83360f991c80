"""Sparse upcycling: turn a dense `llama` GGUF into a Mixtral-style Mixture-of-Experts GGUF.

Every expert starts as an exact copy of the layer's dense feed-forward network, and the router
starts at zero. With a zero router the softmax is uniform, top-k picks k equal weights, and the
renormalised mixture of k identical experts is the dense FFN again, so the MoE computes what
the dense model computed until fine-tuning (`training.finetune`) makes the experts differ.

Only `gguf` and `numpy` are needed: the quantized blocks are copied byte for byte, never
dequantized, so nothing is lost and no torch is required. `upcycle_model` does the same to a torch
`Decoder` (torch is imported only there), with optional noise on the experts so that they can
drift apart during fine-tuning from the first step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from engine.errors import ModelFileInvalid

if TYPE_CHECKING:
    from training.model import Decoder

SUPPORTED_ARCHITECTURES = ("llama",)
DENSE_FFN = ("ffn_gate", "ffn_up", "ffn_down")
# Keys the writer produces itself, or that describe the dense model and are replaced.
_NOT_COPIED = {
    "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture",
    "general.name", "general.basename", "general.size_label", "general.finetune",
    "general.organization", "general.description", "general.license",
}


@dataclass(frozen=True)
class ModelCard:
    """What the upcycled model says about itself in its GGUF metadata."""

    name: str
    basename: str
    size_label: str
    description: str
    license: str
    base_name: str
    base_organization: str
    base_repo_url: str


def upcycle_gguf(
    dense: Path,
    moe: Path,
    *,
    card: ModelCard,
    experts: int = 4,
    experts_used: int = 2,
    router_noise: float = 0.0,
    seed: int = 0,
    report: Callable[[str], None] = print,
) -> None:
    """Write `moe`, a Mixture-of-Experts copy of the dense GGUF model `dense`.

    `router_noise` > 0 adds N(0, router_noise) to the router so that fine-tuning can tell the
    experts apart; at 0 the MoE's outputs equal the dense model's.
    """
    if not 1 <= experts_used <= experts:
        raise ValueError(f"experts_used must be between 1 and experts ({experts}), got {experts_used}")
    reader = GGUFReader(dense)
    _check_dense_llama(reader, dense)
    n_embd = int(_value(reader, "llama.embedding_length"))
    n_layers = int(_value(reader, "llama.block_count"))

    writer = GGUFWriter(moe, arch="llama")
    _copy_metadata(reader, writer)
    _write_card(writer, card)
    writer.add_expert_count(experts)
    writer.add_expert_used_count(experts_used)

    rng = np.random.default_rng(seed)
    for tensor in reader.tensors:
        block, part = _ffn_part(tensor.name)
        if part is None:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
            continue
        # Quantized rows are self-contained blocks, so stacking the raw bytes of E copies is
        # exactly the 3-D tensor [n_expert, rows, row_bytes] that llama.cpp expects.
        stacked = np.stack([np.asarray(tensor.data)] * experts)
        writer.add_tensor(f"blk.{block}.{part}_exps.weight", stacked, raw_dtype=tensor.tensor_type)
        if part == "ffn_gate":
            router = (rng.standard_normal((experts, n_embd)) * router_noise).astype(np.float32)
            writer.add_tensor(f"blk.{block}.ffn_gate_inp.weight", router, raw_dtype=GGMLQuantizationType.F32)

    report(f"Writing {moe.name}: {n_layers} layers, {experts} experts, {experts_used} used per token")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()


def upcycle_model(dense: Decoder, num_experts: int, experts_per_token: int, *, noise: float = 0.0,
                  seed: int = 0) -> Decoder:
    """A Mixtral-style MoE `Decoder` from a dense `llama` one: every expert a copy of its layer's FFN,
    routers at zero. With `noise` 0 it computes exactly what `dense` computes; a small `noise`
    (e.g. 0.01) adds that fraction of each weight matrix's standard deviation as Gaussian noise to
    each expert, so that they differ (the router, still uniform, then learns to tell them apart)."""
    import dataclasses

    import torch

    from training.model import Decoder, FeedForward, MoEFeedForward

    if dense.config.architecture != "llama" or dense.config.is_moe:
        raise ValueError(f"upcycling needs a dense llama model, not a {dense.config.architecture} "
                         f"with {dense.config.num_experts} experts")
    config = dataclasses.replace(dense.config, num_experts=num_experts, experts_per_token=experts_per_token)
    moe = Decoder(config)
    own = {k: v for k, v in dense.state_dict().items() if ".ffn." not in k}
    missing = moe.load_state_dict(own, strict=False).missing_keys
    assert all(".ffn." in key for key in missing), missing
    with torch.no_grad():
        for source, target in zip(dense.blocks, moe.blocks, strict=True):
            assert isinstance(source.ffn, FeedForward) and isinstance(target.ffn, MoEFeedForward)
            target.ffn.router.weight.zero_()
            for name in ("gate", "up", "down"):
                weight = getattr(source.ffn, name).weight  # [F, D] or [D, F]
                getattr(target.ffn, name).copy_(weight.detach().cpu().expand(num_experts, *weight.shape))
    if noise:
        diversify_experts(moe, noise, seed)
    return moe.to(next(dense.parameters()).device)


def diversify_experts(model: Decoder, relative_noise: float, seed: int) -> None:
    """Nudge each expert's weights by a different small amount (std = `relative_noise` × the weight's std).

    Upcycled experts are exact copies, so the router cannot tell them apart and gradient descent
    keeps them equal; a small asymmetry lets them specialise while the output barely moves.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.moe_layers():
            for weight in (layer.gate, layer.up, layer.down):
                noise = torch.randn(weight.shape, generator=generator) * weight.std() * relative_noise
                weight.add_(noise.to(weight.dtype))


def _check_dense_llama(reader: GGUFReader, path: Path) -> None:
    arch = _value(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelFileInvalid(
            f"{path} has architecture '{arch}', which Cleo cannot upcycle.",
            hint=f"Supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}.",
        )
    if "llama.expert_count" in reader.fields:
        raise ModelFileInvalid(f"{path} is already a Mixture-of-Experts model.", hint="Start from a dense model.")
    names = {t.name for t in reader.tensors}
    missing = [f"blk.0.{part}.weight" for part in DENSE_FFN if f"blk.0.{part}.weight" not in names]
    if missing:
        raise ModelFileInvalid(f"{path} lacks the dense feed-forward tensors {', '.join(missing)}.")


def _ffn_part(tensor_name: str) -> tuple[int, str | None]:
    parts = tensor_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in DENSE_FFN and parts[3] == "weight":
        return int(parts[1]), parts[2]
    return -1, None


def _value(reader: GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    if field is None:
        raise ModelFileInvalid(f"{reader.data.filename} has no metadata key '{key}'.")
    return field.contents()


def _copy_metadata(reader: GGUFReader, writer: GGUFWriter) -> None:
    for key, field in reader.fields.items():
        if key in _NOT_COPIED or key.startswith("general.base_model."):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type)


def _write_card(writer: GGUFWriter, card: ModelCard) -> None:
    writer.add_name(card.name)
    writer.add_basename(card.basename)
    writer.add_size_label(card.size_label)
    writer.add_description(card.description)
    writer.add_license(card.license)
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, card.base_name)
    writer.add_base_model_organization(0, card.base_organization)
    writer.add_base_model_repo_url(0, card.base_repo_url)
