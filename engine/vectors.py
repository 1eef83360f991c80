"""Nearest neighbours in memory, over the vectors stored in sqlite-vec.

sqlite-vec 0.1.9 searches by brute force without SIMD: ~57 ms for 100k messages (FACTS.md), over
the recall budget. The vec0 tables stay the durable copy; this index holds the same vectors in
one float32 matrix (1.5 KB per message) and answers with a single matrix-vector product, about
10 ms at 100k. It is loaded on first use and kept in step by the code that writes vectors
(`MemoryBook`); a row deleted behind its back only costs a slot, because recall joins every hit
back to its table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.database import EMBEDDING_DIMENSION, Database


class VectorIndex:
    def __init__(self, database: Database, table: str) -> None:
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
        self._flush()
        if not len(self._rowids) or k <= 0:
            return []
        scores = self._matrix @ np.asarray(query, dtype=np.float32)  # [N]
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [int(r) for r in self._rowids[top] if r >= 0]

    def _flush(self) -> None:
        if self._pending_rowids:
            self._rowids = np.concatenate([self._rowids, np.array(self._pending_rowids, dtype=np.int64)])
            self._matrix = np.concatenate([self._matrix, np.stack(self._pending)])
            self._pending_rowids, self._pending = [], []


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
