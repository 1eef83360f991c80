"""Perplexity of an exported GGUF through llama.cpp itself, on the same rows torch is scored on.

This is the check that counts: what the app will run, not what torch computes. A row packed with
several documents is read one document at a time, from a fresh context, as torch masks it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import llama_cpp
import numpy as np
import torch


def gguf_perplexity(path: Path, batches: Iterable[dict[str, torch.Tensor]], *, threads: int = 1) -> float:
    """exp(mean negative log-likelihood) of the learned tokens (labels != -100) under llama.cpp."""
    nll, count = 0.0, 0
    width = 0
    llm: llama_cpp.Llama | None = None
    try:
        for batch in batches:
            ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()  # [B, T]
            segments = batch["segment_ids"].numpy() if "segment_ids" in batch else np.ones_like(ids)
            if llm is None:
                width = ids.shape[1]
                llm = llama_cpp.Llama(model_path=str(path), n_ctx=width, n_batch=width, n_ubatch=width,
                                      n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False)
            for row, targets, documents in zip(ids, labels, segments, strict=True):
                for document in np.unique(documents[documents > 0]):
                    where = documents == document
                    tokens, wanted = row[where], targets[where]
                    learned = wanted != -100
                    if not learned.any():
                        continue
                    llm.reset()
                    llm.eval(tokens.tolist())
                    logits = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)  # [n, V]
                    log_probs = logits - _logsumexp(logits)
                    nll -= float(log_probs[learned, wanted[learned]].sum())
                    count += int(learned.sum())
    finally:
        if llm is not None:
            llm.close()
    return math.exp(nll / count) if count else float("nan")


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True))
