"""The default models, run through the engine's real llama.cpp backend."""

from __future__ import annotations

import numpy as np
import pytest

from engine.runtime.chat_model import LlamaChatModel
from engine.runtime.embedder import Embedder
from engine.runtime.sampling import Sampling

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
]


def test_moe_reports_four_experts_two_used(moe_model: LlamaChatModel) -> None:
    assert moe_model.metadata["general.architecture"] == "llama"
    assert moe_model.metadata["llama.expert_count"] == "4"
    assert moe_model.metadata["llama.expert_used_count"] == "2"


@pytest.mark.parametrize("prompt", PROMPTS)
def test_moe_computes_what_the_dense_model_computes(
    prompt: str, moe_model: LlamaChatModel, dense_model: LlamaChatModel
) -> None:
    assert "llama.expert_count" not in dense_model.metadata
    moe_logits = moe_model.next_token_logits(prompt)
    dense_logits = dense_model.next_token_logits(prompt)
    assert moe_logits.shape == dense_logits.shape == (49152,)
    assert np.abs(moe_logits - dense_logits).max() <= 1e-3
    moe_text = moe_model.greedy_continuation(prompt, max_tokens=16)
    assert moe_text.strip()
    # Exact text is safe: on these paths the two best next tokens are at least 0.017 apart (measured),
    # while the two models' logits differ by 1e-3 at most (0 when measured), so rounding picks nothing.
    assert moe_text == dense_model.greedy_continuation(prompt, max_tokens=16)


def test_default_model_answers_the_capital_of_france(moe_model: LlamaChatModel) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = "".join(moe_model.stream_chat(messages, Sampling(temperature=0.0, max_tokens=48)))
    assert "Paris" in reply


def test_chat_template_comes_from_the_model_file(moe_model: LlamaChatModel) -> None:
    prompt = moe_model.render_chat([{"role": "user", "content": "Hi"}])
    assert "<|im_start|>user\nHi<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_embeddings_are_384_d_unit_vectors(embedder: Embedder) -> None:
    vectors = embedder.embed(["cat", "a longer sentence about the weather in Lisbon"])
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_embeddings_place_related_words_together(embedder: Embedder) -> None:
    cat, kitten, stocks = embedder.embed(["cat", "kitten", "stock market"])
    assert float(cat @ kitten) > float(cat @ stocks) + 0.3


def test_same_text_gives_the_same_vector(embedder: Embedder) -> None:
    first = embedder.embed(["I like green tea in the morning."])
    batch = embedder.embed(["something else", "I like green tea in the morning."])
    again = embedder.embed(["I like green tea in the morning."])
    assert np.array_equal(first, again)  # exact: the same call twice, so the same batch and kernels
    # Batching changes llama.cpp's summation order, so batched vectors agree only to ~1e-5.
    assert float(first[0] @ batch[1]) > 0.9999
