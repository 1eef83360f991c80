"""Sentence embeddings from a GGUF model in llama.cpp: the vectors memory searches with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.models.gguf_header import read_header
from engine.runtime.llama import load_gguf


class Embedder:
    """A sentence embedding model (BERT GGUF with mean pooling) on one thread."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self.path = path
        read_header(path)  # a bad file gets a clear error here, before llama.cpp sees it
        self._llm = load_gguf(path, n_ctx=512, n_threads=threads, n_threads_batch=threads, embedding=True)
        self.dimension = int(self._llm.n_embd())

    def tokenize(self, text: str) -> list[int]:
        """Token ids as the model sees `text`, with its start and end markers."""
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised vectors for `texts`, one row each: [len(texts), dimension]."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = np.asarray(self._llm.embed(list(texts)), dtype=np.float32)  # [n, dim]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def close(self) -> None:
        self._llm.close()
