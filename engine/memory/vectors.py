"""Nearest neighbours in memory, over the vectors stored in sqlite-vec.

sqlite-vec 0.1.9 searches by brute force without SIMD: ~57 ms for 100k messages, over
the recall budget. The vec0 tables stay the durable copy; this index holds the same vectors in
one float32 matrix (1.5 KB per message) and answers with a matrix-vector product, ~10 ms at 100k
on one core and split across the cores for a large index. It is loaded on first use and kept in
step by the code that writes vectors (`MemoryBook`); a row deleted behind its back only costs a
slot, because recall joins every hit back to its table.

numpy's BLAS is held to one thread here, and the split is done by hand: OpenBLAS's own threads
keep spinning after each product, which halved the speed of the SQL searches and the query
embedding that run beside it (and would slow llama.cpp reading the prompt right after recall).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise

import numpy as np
from threadpoolctl import threadpool_limits

from engine.storage.database import Database
from engine.storage.migrations import EMBEDDING_DIMENSION

_ROWS_PER_PART = 25_000  # below this, splitting a product costs more than it saves


class VectorIndex:
    def __init__(self, database: Database, table: str) -> None:
        _single_threaded_blas()
        rows = database.conn.execute(f"SELECT rowid, embedding FROM {table}").fetchall()
        self._rowids = np.array([r[0] for r in rows], dtype=np.int64)  # [N]
        self._matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(
            len(rows), EMBEDDING_DIMENSION).copy()  # [N, 384], unit rows
        self._pending_rowids: list[int] = []
        self._pending: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._rowids) + len(self._pending_rowids)

    def add(self, rowids: Sequence[int], vectors: np.ndarray) -> None:
        """New (or replaced) vectors; appended in batches, so adding one per turn stays cheap."""
        self.remove(rowids)
        self._pending_rowids.extend(int(r) for r in rowids)
        self._pending.extend(np.asarray(vectors, dtype=np.float32).reshape(-1, EMBEDDING_DIMENSION))

    def remove(self, rowids: Sequence[int]) -> None:
        if len(rowids) == 0:
            return
        self._flush()
        gone = np.isin(self._rowids, np.asarray(rowids, dtype=np.int64))
        self._rowids[gone] = -1
        self._matrix[gone] = 0.0

    def search(self, query: np.ndarray, k: int) -> list[int]:
        """Row ids of the `k` most similar vectors (cosine: the rows are unit length), best first."""
        return [rowid for rowid, _ in self.nearest(query, k)]

    def nearest(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """`search` with each row's cosine similarity to `query`."""
        self._flush()
        if not len(self._rowids) or k <= 0:
            return []
        vector = np.asarray(query, dtype=np.float32)
        parts = min(_cores(), len(self._matrix) // _ROWS_PER_PART)
        if parts < 2:
            scores, rows = _best(self._matrix, vector, k, 0)
        else:  # numpy releases the GIL while it multiplies: each part on a core of its own
            bounds = np.linspace(0, len(self._matrix), parts + 1).astype(int)
            others = [_helpers().submit(_best, self._matrix[a:b], vector, k, a) for a, b in pairwise(bounds[1:])]
            found = [_best(self._matrix[:bounds[1]], vector, k, 0), *(f.result() for f in others)]
            scores, rows = _best_of(np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]), k)
        return [(int(r), float(s)) for r, s in zip(self._rowids[rows], scores, strict=True) if r >= 0]

    def _flush(self) -> None:
        if self._pending_rowids:
            self._rowids = np.concatenate([self._rowids, np.array(self._pending_rowids, dtype=np.int64)])
            self._matrix = np.concatenate([self._matrix, np.stack(self._pending)])
            self._pending_rowids, self._pending = [], []


def _best(matrix: np.ndarray, vector: np.ndarray, k: int, first_row: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and row numbers (counted from `first_row`) of the `k` rows nearest `vector`, best first."""
    return _best_of(matrix @ vector, np.arange(first_row, first_row + len(matrix)), k)


def _best_of(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top])]
    return scores[top], rows[top]


@cache
def _cores() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@cache
def _helpers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_cores() - 1, thread_name_prefix="cleo-vectors")


@cache
def _single_threaded_blas() -> None:
    threadpool_limits(limits=1, user_api="blas")


def vector_index(database: Database, table: str) -> VectorIndex:
    """The one index of `table` for this open database (built on first use)."""
    index = database.caches.get(table)
    if not isinstance(index, VectorIndex):
        index = database.caches[table] = VectorIndex(database, table)
    return index


def forget_vectors(database: Database, table: str, rowids: Sequence[int]) -> None:
    """Take deleted rows out of the index, if it has been built (otherwise it never sees them)."""
    index = database.caches.get(table)
    if isinstance(index, VectorIndex):
        index.remove(rowids)
