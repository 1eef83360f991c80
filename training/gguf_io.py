"""GGUF files in and out of the torch `Decoder`: import a model to fine-tune it, export it for llama.cpp.

Supported: `llama` (dense, or Mixtral-style with `{arch}.expert_count` and stacked `*_exps` tensors)
and `qwen3moe`. Tensor names (llama.cpp's, per block `blk.N.`):

    token_embd, output_norm, output (absent when the output reuses the embeddings)
    attn_norm, attn_q, attn_k, attn_v, attn_output, attn_q_norm + attn_k_norm (qwen3moe)
    ffn_norm, then ffn_gate/ffn_up/ffn_down (dense)
               or ffn_gate_inp (router) + ffn_gate_exps/ffn_up_exps/ffn_down_exps (experts)

`training.model` keeps its weights in GGUF layout (Q/K already permuted for llama's RoPE, experts
stacked), so each tensor maps to one parameter with the same numpy shape and nothing is reshuffled.

Import dequantizes every tensor (Q4_1, Q8_0, K-quants, F16, ...) to float32 with `gguf.quants` and
is strict: every parameter must come from the file and every tensor in the file must be used, so a
layout this module does not understand fails loudly instead of running with random weights.
What export needs and the model does not hold (the tokenizer, the chat template, the model card)
stays in `GGUFModelInfo`; architecture keys the `ModelConfig` has no field for go to its `extra`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType
from gguf.quants import dequantize

from engine.errors import ModelFileInvalid
from engine.models.catalog import read_model_info
from engine.models.gguf_header import TensorInfo, read_header
from training.gguf_metadata import MetadataValue, typed_metadata
from training.model import ARCHITECTURES, Decoder, ModelConfig

SaveDType = Literal["f16", "f32"]


class UnsupportedArchitecture(ModelFileInvalid):
    """A valid GGUF whose architecture the torch decoder does not implement."""


@dataclass(frozen=True)
class GGUFModelInfo:
    """What a GGUF file holds besides the weights, kept so that export can write it back."""

    path: Path | None
    architecture: str  # general.architecture
    name: str  # general.name (the file's stem when it has none)
    file_type: str  # e.g. "Q4_1", "F16", "ALL_F32"
    tokenizer: dict[str, MetadataValue] = field(default_factory=dict)  # every tokenizer.* key
    general: dict[str, MetadataValue] = field(default_factory=dict)  # general.* keys describing the model
    tensor_types: dict[str, GGMLQuantizationType] = field(default_factory=dict)  # GGUF tensor name -> type

    @property
    def chat_template(self) -> str:
        entry = self.tokenizer.get("tokenizer.chat_template")
        return str(entry.value) if entry else ""


# --- names -------------------------------------------------------------------------------------------

_TOP_LEVEL = {"embed.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
              "output.weight": "output.weight"}
# Decoder parameter name inside `blocks.N.` -> GGUF tensor name inside `blk.N.`
_IN_BLOCK = {
    "attn_norm.weight": "attn_norm.weight",
    "attn.q.weight": "attn_q.weight",
    "attn.k.weight": "attn_k.weight",
    "attn.v.weight": "attn_v.weight",
    "attn.out.weight": "attn_output.weight",
    "attn.q_norm.weight": "attn_q_norm.weight",
    "attn.k_norm.weight": "attn_k_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn.gate.weight": "ffn_gate.weight",
    "ffn.up.weight": "ffn_up.weight",
    "ffn.down.weight": "ffn_down.weight",
    "ffn.router.weight": "ffn_gate_inp.weight",
    "ffn.gate": "ffn_gate_exps.weight",
    "ffn.up": "ffn_up_exps.weight",
    "ffn.down": "ffn_down_exps.weight",
}


def gguf_tensor_name(parameter: str) -> str:
    """The llama.cpp tensor name of a `Decoder` parameter, e.g. blocks.3.ffn.gate -> blk.3.ffn_gate_exps.weight."""
    if parameter in _TOP_LEVEL:
        return _TOP_LEVEL[parameter]
    prefix, block, rest = parameter.split(".", 2)
    if prefix != "blocks" or rest not in _IN_BLOCK:
        raise KeyError(f"no GGUF tensor name for parameter {parameter!r}")
    return f"blk.{block}.{_IN_BLOCK[rest]}"


def _kept_in_f32(parameter: str, tensor: torch.Tensor) -> bool:
    # Norm weights are tiny and llama.cpp adds them in F32; the router decides which experts run,
    # so F16 rounding there can flip a top-k choice (llama.cpp's quantizer also leaves it alone).
    return tensor.dim() == 1 or parameter.endswith("ffn.router.weight")


# --- import ------------------------------------------------------------------------------------------

# Architecture keys turned into ModelConfig fields or checked against it; everything else under
# `{arch}.` travels in config.extra.
_CONFIG_KEYS = (
    "block_count", "embedding_length", "feed_forward_length", "expert_feed_forward_length",
    "attention.head_count", "attention.head_count_kv", "attention.key_length", "attention.value_length",
    "rope.freq_base", "rope.dimension_count", "attention.layer_norm_rms_epsilon", "context_length",
    "expert_count", "expert_used_count", "vocab_size",
)
# general.* keys that describe the file rather than the model: export writes its own.
_GENERAL_NOT_KEPT = {"general.architecture", "general.file_type", "general.quantization_version",
                     "general.alignment"}


def load_gguf(path: str | os.PathLike[str]) -> tuple[Decoder, GGUFModelInfo]:
    """The model in the GGUF file at `path` as a float32 `Decoder`, and what export needs to write it back.

    Raises `ModelMissing`/`ModelFileInvalid` (a `KnownError` naming the file) for a missing, damaged
    or unsupported file, `UnsupportedArchitecture` for an architecture other than llama and qwen3moe.
    """
    path = Path(path)
    summary = read_model_info(path)  # bounds-checked: a truncated or foreign file fails here, clearly
    if summary.architecture not in ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"{path} holds a '{summary.architecture}' model; Cleo can fine-tune only the architectures "
            f"{', '.join(ARCHITECTURES)}.",
            hint="Choose a llama (dense or Mixtral-style MoE) or qwen3moe model.",
        )
    header = read_header(path, skip_long_arrays=False)  # export writes the vocabulary back
    metadata = typed_metadata(header)
    if _int(metadata, "split.count", 1) > 1:
        raise ModelFileInvalid(f"{path} is one part of a split model.",
                               hint="Merge the parts into one file (llama-gguf-split --merge) first.")
    tensors = {t.name: t for t in header.tensors}
    config = _config(path, summary.architecture, metadata, tensors)
    info = GGUFModelInfo(
        path=path,
        architecture=summary.architecture,
        name=summary.name,
        file_type=summary.quantization,
        tokenizer={k: v for k, v in metadata.items() if k.startswith("tokenizer.")},
        general={k: v for k, v in metadata.items() if k.startswith("general.") and k not in _GENERAL_NOT_KEPT},
        tensor_types={name: t.type for name, t in tensors.items()},
    )

    # Built on the meta device: no time is spent initialising weights the file replaces.
    with torch.device("meta"):
        model = Decoder(config)
    wanted = {gguf_tensor_name(name): (name, tuple(p.shape)) for name, p in model.named_parameters()}
    missing = sorted(set(wanted) - set(tensors))
    unexpected = sorted(set(tensors) - set(wanted))
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"it lacks {_listing(missing)}")
        if unexpected:
            problems.append(f"it has tensors this {config.architecture} model does not use: {_listing(unexpected)}")
        raise ModelFileInvalid(f"{path} does not have the tensor layout of a {_describe(config)}: "
                               f"{'; '.join(problems)}.")
    file = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        state = {parameter: _dequantized(path, file, header.data_offset, tensors[name], shape)
                 for name, (parameter, shape) in wanted.items()}
    finally:
        del file  # release the mapping (on Windows it would keep the file locked)
    model.load_state_dict(state, strict=True, assign=True)
    return model, info


def _int(metadata: Mapping[str, MetadataValue], key: str, default: int) -> int:
    entry = metadata.get(key)
    return default if entry is None else int(entry.value)


def _config(path: Path, arch: str, metadata: dict[str, MetadataValue],
            tensors: Mapping[str, TensorInfo]) -> ModelConfig:
    def value(key: str, default: Any = None) -> Any:
        entry = metadata.get(f"{arch}.{key}")
        if entry is None:
            if default is None:
                raise ModelFileInvalid(f"{path} has no metadata key '{arch}.{key}', which a {arch} model needs.")
            return default
        if entry.type == GGUFValueType.ARRAY:
            # Per-layer head counts or widths (as in OpenELM) are not something this decoder does.
            raise ModelFileInvalid(f"{path} gives '{arch}.{key}' per layer; Cleo needs one value for all layers.")
        return entry.value

    embedding = tensors.get("token_embd.weight")
    if embedding is None:
        raise ModelFileInvalid(f"{path} has no token embeddings (token_embd.weight).")
    vocab_size = int(embedding.shape[1])  # GGUF shape [D, V]
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens.value) != vocab_size:
        raise ModelFileInvalid(f"{path} has {len(tokens.value)} tokens in its vocabulary but "
                               f"{vocab_size} rows of token embeddings.")
    hidden = int(value("embedding_length"))
    heads = int(value("attention.head_count"))
    head_dim = int(value("attention.key_length", hidden // heads))
    experts = int(value("expert_count", 0))
    # llama.cpp sizes Mixtral-style llama experts with feed_forward_length and qwen3moe experts with
    # expert_feed_forward_length (qwen3moe's feed_forward_length is its unused dense width).
    ffn_key = "expert_feed_forward_length" if arch == "qwen3moe" else "feed_forward_length"
    _refuse_what_the_decoder_does_not_do(path, arch, metadata, head_dim)
    config_keys = set(_CONFIG_KEYS) - ({"feed_forward_length"} if arch == "qwen3moe" else set())
    # Plain values, so that the config stays serialisable; export infers the GGUF types converters use.
    extra: dict[str, object] = {k: v.value for k, v in metadata.items()
                                if k.startswith(f"{arch}.") and k.removeprefix(f"{arch}.") not in config_keys}
    try:
        return ModelConfig(
            architecture=arch,  # type: ignore[arg-type]  # checked against ARCHITECTURES by the caller
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=int(value(ffn_key)),
            num_layers=int(value("block_count")),
            num_heads=heads,
            num_kv_heads=int(value("attention.head_count_kv", heads)),
            head_dim=head_dim,
            context_length=int(value("context_length")),
            rope_theta=_decimal(value("rope.freq_base", 10000.0)),
            rms_norm_eps=_decimal(value("attention.layer_norm_rms_epsilon")),
            num_experts=experts,
            experts_per_token=int(value("expert_used_count", 0)) if experts else 0,
            tie_embeddings="output.weight" not in tensors,
            extra=extra,
        )
    except ValueError as exc:
        raise ModelFileInvalid(f"{path} describes a model Cleo cannot build: {exc}.") from exc


def _decimal(value: float) -> float:
    """The shortest decimal that is the same float32 (1e-05, not 9.999999747378752e-06).

    GGUF stores these as float32, so an exported 1e-5 comes back as the nearest float32; taking its
    shortest repr makes export then import give back an equal ModelConfig. Computing in float32,
    torch and llama.cpp see the same number either way.
    """
    return float(str(np.float32(value)))


def _refuse_what_the_decoder_does_not_do(path: Path, arch: str, metadata: Mapping[str, MetadataValue],
                                         head_dim: int) -> None:
    """Keys that llama.cpp honours for these architectures and that change what the model computes."""

    def get(key: str) -> Any:
        entry = metadata.get(f"{arch}.{key}")
        return None if entry is None else entry.value

    problems = []
    scaling, factor = get("rope.scaling.type"), get("rope.scaling.factor") or get("rope.scale_linear")
    if scaling not in (None, "", "none", "linear") or (factor not in (None, 0.0, 1.0)):
        problems.append(f"RoPE scaling ({scaling or 'linear'}, factor {factor})")
    if get("rope.dimension_count") not in (None, head_dim):
        problems.append(f"RoPE on {get('rope.dimension_count')} of {head_dim} head dimensions")
    if get("attention.value_length") not in (None, head_dim):
        problems.append(f"value heads of {get('attention.value_length')} dimensions, keys of {head_dim}")
    if get("attention.causal") is False:
        problems.append("non-causal attention")
    if problems:
        raise ModelFileInvalid(f"{path} uses {', '.join(problems)}, which Cleo's trainer does not implement.")


def _dequantized(path: Path, file: np.ndarray, data_offset: int, tensor: TensorInfo,
                 shape: tuple[int, ...]) -> torch.Tensor:
    numpy_shape = tuple(reversed(tensor.shape))  # GGUF lists the fastest-varying dimension first
    if numpy_shape != shape:
        raise ModelFileInvalid(f"{path}: tensor {tensor.name} has shape {list(numpy_shape)}, "
                               f"the model needs {list(shape)}.")
    start = data_offset + tensor.offset
    # Rows of raw bytes, [..., bytes per row]: what gguf.quants expects for every type, F32 included.
    rows = file[start:start + tensor.n_bytes].reshape(*numpy_shape[:-1], -1)
    try:
        values = dequantize(rows, tensor.type)
    except NotImplementedError as exc:
        raise ModelFileInvalid(f"{path}: tensor {tensor.name} is stored as {tensor.type.name}, "
                               "which Cleo cannot convert back to numbers.",
                               hint="Use an F16, Q8_0, Q4_*, Q5_* or K-quant file of the model.") from exc
    # F32 comes back as a view of the read-only mapping; everything else is already a new array.
    return torch.from_numpy(np.array(values, dtype=np.float32, copy=not values.flags.writeable).reshape(shape))


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _describe(config: ModelConfig) -> str:
    kind = f"{config.num_experts}-expert MoE" if config.is_moe else "dense"
    tied = " with tied embeddings" if config.tie_embeddings else ""
    return f"{kind} {config.architecture} model{tied}"


# --- export ------------------------------------------------------------------------------------------

def save_gguf(
    model: Decoder,
    source: GGUFModelInfo | Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    dtype: SaveDType = "f16",
    name: str | None = None,
) -> Path:
    """Write `model` as a GGUF llama.cpp can run, atomically; return the path.

    `source` gives the tokenizer: a `GGUFModelInfo` from `load_gguf` (its tokenizer, chat template and
    general.* model card are carried over), or a mapping of `tokenizer.*` keys to values (plain
    Python values or `MetadataValue`). Norms and routers are written in F32, other matrices in `dtype`.
    """
    path = Path(path)
    config = model.config
    if isinstance(source, GGUFModelInfo):
        tokenizer, general = source.tokenizer, source.general
        default_name = source.name
    else:
        tokenizer = {key: MetadataValue.infer(v) for key, v in source.items()}
        general, default_name = {}, path.stem
    _check_tokenizer(tokenizer, config.vocab_size)

    partial = path.with_name(path.name + ".partial")
    writer = GGUFWriter(partial, arch=config.architecture)
    try:
        writer.add_name(name or default_name)
        for key, entry in general.items():
            if key != "general.name":
                writer.add_key_value(key, entry.value, entry.type, entry.item_type)
        writer.add_file_type(LlamaFileType.ALL_F32 if dtype == "f32" else LlamaFileType.MOSTLY_F16)
        _write_architecture(writer, config)
        for key, entry in tokenizer.items():
            writer.add_key_value(key, entry.value, entry.type, entry.item_type)
        for parameter, weight in model.named_parameters():
            values = weight.detach().to("cpu", torch.float32).numpy()
            if dtype == "f16" and not _kept_in_f32(parameter, weight):
                values = _as_f16(parameter, values)
            writer.add_tensor(gguf_tensor_name(parameter), values)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(partial, path)
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
    return path


def _check_tokenizer(tokenizer: Mapping[str, MetadataValue], vocab_size: int) -> None:
    # llama.cpp refuses a file without a tokenizer, or whose vocabulary and embeddings differ in size.
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens"):
        if key not in tokenizer:
            raise ValueError(f"the tokenizer fields lack {key}; pass the GGUFModelInfo of the model this one "
                             "was imported from")
    n_tokens = len(tokenizer["tokenizer.ggml.tokens"].value)
    if n_tokens != vocab_size:
        raise ValueError(f"the tokenizer has {n_tokens} tokens but the model's vocabulary has {vocab_size}")


def _write_architecture(writer: GGUFWriter, config: ModelConfig) -> None:
    c = config
    arch = c.architecture
    ours = {
        "context_length": c.context_length, "embedding_length": c.hidden_size, "block_count": c.num_layers,
        "feed_forward_length": c.intermediate_size, "attention.head_count": c.num_heads,
        "attention.head_count_kv": c.num_kv_heads, "attention.key_length": c.head_dim,
        "attention.value_length": c.head_dim, "rope.dimension_count": c.head_dim, "vocab_size": c.vocab_size,
    }
    if c.is_moe:
        ours |= {"expert_count": c.num_experts, "expert_used_count": c.experts_per_token}
    if arch == "qwen3moe":
        ours["expert_feed_forward_length"] = c.intermediate_size
        original = c.extra.get(f"{arch}.feed_forward_length")
        if isinstance(original, int):
            ours["feed_forward_length"] = original  # the original's unused dense width, written back as it was
    for key, number in ours.items():
        writer.add_uint32(f"{arch}.{key}", int(number))
    writer.add_float32(f"{arch}.rope.freq_base", float(c.rope_theta))
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", float(c.rms_norm_eps))
    # The config decides every key it has a field for (an extra expert_count from an imported MoE must
    # not survive into a dense export); only this architecture's other keys are carried over.
    derived = {f"{arch}.{key}" for key in (*_CONFIG_KEYS, *ours)}
    for key, raw in c.extra.items():
        if key.startswith(f"{arch}.") and key not in derived:
            entry = MetadataValue.infer(raw)
            writer.add_key_value(key, entry.value, entry.type, entry.item_type)


def _as_f16(parameter: str, values: np.ndarray) -> np.ndarray:
    # Checked before the cast: F16 would silently turn these into infinities (NaN fails the test too).
    if not (np.abs(values) <= np.finfo(np.float16).max).all():
        raise ValueError(f"{parameter} has values beyond F16's range (±65504) or NaN; save with dtype='f32'")
    return values.astype(np.float16)
