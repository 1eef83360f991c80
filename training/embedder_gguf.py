"""Convert a BERT sentence embedder (safetensors + tokenizer.json) into a GGUF llama.cpp runs.

Written for all-MiniLM-L6-v2 (6 layers, 384-d, mean pooling) but driven by its config, so other
BERT-base-shaped sentence-transformers models convert the same way. The GGUF layout follows
llama.cpp's `bert` architecture: tensor names `token_embd`, `position_embd`, `token_types`,
`blk.N.attn_{q,k,v,output}`, `blk.N.ffn_{up,down}` and three LayerNorms per block; the WordPiece
vocabulary is stored in llama.cpp's spelling (continuations lose `##`, word starts gain U+2581).
Only `gguf` and `numpy` are used: the safetensors format is read directly.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, PoolingType, TokenType

from engine.errors import ModelFileInvalid

_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
_WORD_START = "\u2581"

# Hugging Face BERT name (after `encoder.layer.N.`) -> llama.cpp name (after `blk.N.`).
_LAYER_NAMES = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_EMBEDDING_NAMES = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.token_type_embeddings": "token_types",
    "embeddings.LayerNorm": "token_embd_norm",
}


@dataclass(frozen=True)
class EmbedderSource:
    """The files of a sentence-transformers BERT model, already read into memory."""

    weights: bytes  # model.safetensors
    tokenizer: dict[str, Any]  # tokenizer.json
    config: dict[str, Any]  # config.json
    pooling: dict[str, Any]  # 1_Pooling/config.json
    name: str
    license: str


def read_safetensors(blob: bytes, origin: str) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as numpy arrays (views into `blob`)."""
    try:
        (header_len,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + header_len])
    except (struct.error, ValueError) as exc:
        raise ModelFileInvalid(f"{origin} is not a readable safetensors file ({exc}).") from exc
    body = memoryview(blob)[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ModelFileInvalid(f"{origin}: tensor {name} has unsupported dtype {info['dtype']}.")
        start, end = info["data_offsets"]
        array = np.frombuffer(body[start:end], dtype=_DTYPES[info["dtype"]])
        tensors[name] = array.reshape(info["shape"])
    return tensors


def convert_embedder(source: EmbedderSource, out: Path, report: Callable[[str], None] = print) -> None:
    """Write `out`, a llama.cpp `bert` GGUF with mean pooling, from `source`."""
    cfg = source.config
    if cfg.get("model_type") != "bert":
        raise ModelFileInvalid(f"{source.name}: model_type is {cfg.get('model_type')!r}, expected 'bert'.")
    if not source.pooling.get("pooling_mode_mean_tokens"):
        raise ModelFileInvalid(f"{source.name}: only mean-pooling sentence embedders are supported.")
    tensors = read_safetensors(source.weights, f"{source.name}/model.safetensors")

    writer = GGUFWriter(out, arch="bert")
    writer.add_name(source.name)
    writer.add_license(source.license)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_layer_norm_eps(cfg["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(PoolingType.MEAN)
    writer.add_file_type(1)  # mostly F16
    _write_vocabulary(writer, source.tokenizer, cfg.get("type_vocab_size", 2))

    for name, array in _gguf_tensors(tensors, cfg["num_hidden_layers"]):
        # Matrices in F16 halve the file. Norms, biases and the small position and token-type
        # tables stay F32: llama.cpp adds the token-type row to F32 activations directly, and
        # its CPU add has no F32 + F16 kernel.
        as_f16 = array.ndim == 2 and name not in ("position_embd.weight", "token_types.weight")
        data = array.astype(np.float16 if as_f16 else np.float32)
        writer.add_tensor(name, data, raw_dtype=GGMLQuantizationType.F16 if as_f16 else GGMLQuantizationType.F32)

    report(f"Writing {out.name}: BERT, {cfg['num_hidden_layers']} layers, {cfg['hidden_size']}-d, mean pooling")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()


def _gguf_tensors(tensors: dict[str, np.ndarray], n_layers: int) -> Iterator[tuple[str, np.ndarray]]:
    used = set()
    for hf_name, array in tensors.items():
        stem, _, kind = hf_name.rpartition(".")
        target = _EMBEDDING_NAMES.get(stem)
        if target is None and stem.startswith("encoder.layer."):
            _, _, layer, rest = stem.split(".", 3)
            if rest in _LAYER_NAMES and int(layer) < n_layers:
                target = f"blk.{layer}.{_LAYER_NAMES[rest]}"
        if target is None:
            continue  # position_ids and the pooler head are not used for sentence embeddings
        used.add(f"{target}.{kind}")
        yield f"{target}.{kind}", array
    expected = 5 + n_layers * 16  # 3 embedding tables + a LayerNorm; 8 weight/bias pairs a layer
    if len(used) != expected:
        raise ModelFileInvalid(f"Expected {expected} BERT tensors in the weights, found {len(used)}.")


def _write_vocabulary(writer: GGUFWriter, tokenizer: dict[str, Any], type_count: int) -> None:
    model = tokenizer.get("model", {})
    if model.get("type") != "WordPiece":
        raise ModelFileInvalid(f"tokenizer.json holds a {model.get('type')} model, expected WordPiece.")
    by_id = {index: token for token, index in model["vocab"].items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ModelFileInvalid("tokenizer.json's vocabulary has gaps in its token ids.")
    special = {entry["id"]: entry["content"] for entry in tokenizer.get("added_tokens", []) if entry["special"]}

    tokens, types = [], []
    for index in range(len(by_id)):
        token = by_id[index]
        if index in special:
            tokens.append(token)
            types.append(TokenType.CONTROL)
        else:
            tokens.append(token[2:] if token.startswith("##") else _WORD_START + token)
            types.append(TokenType.NORMAL)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(type_count)

    ids = {content: index for index, content in special.items()}
    writer.add_bos_token_id(ids["[CLS]"])  # llama.cpp's WordPiece path starts every text with BOS
    writer.add_sep_token_id(ids["[SEP]"])
    writer.add_unk_token_id(ids["[UNK]"])
    writer.add_pad_token_id(ids["[PAD]"])
    writer.add_mask_token_id(ids["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)  # ... and ends it with [SEP], as the model was trained
    writer.add_add_eos_token(False)
