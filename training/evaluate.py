"""Perplexity of an exported GGUF through llama.cpp itself, on the same rows torch is scored on.

This is the check that counts: what the app will run, not what torch computes.
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
            if llm is None:
                width = ids.shape[1]
                llm = llama_cpp.Llama(model_path=str(path), n_ctx=width, n_batch=width, n_ubatch=width,
                                      n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False)
            for row, targets in zip(ids, labels, strict=True):
                learned = targets != -100
                if not learned.any():
                    continue
                llm.reset()
                llm.eval(row.tolist())
                logits = np.asarray(llm.scores[: len(row)], dtype=np.float64)  # [T, V]
                log_probs = logits - _logsumexp(logits)
                nll -= float(log_probs[learned, targets[learned]].sum())
                count += int(learned.sum())
    finally:
        if llm is not None:
            llm.close()
    return math.exp(nll / count) if count else float("nan")


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True))
