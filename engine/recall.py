"""Recall: what Cleo remembers that bears on a message, from memories and other conversations.

Two retrievers, fused by weighted reciprocal-rank fusion: BM25 over the FTS5 indexes, and
nearest neighbours of the query's MiniLM vector in sqlite-vec. On real multi-session chats BM25
alone beat dense MiniLM and equal-weight fusion (FACTS.md), so BM25 weighs more; the weights are
`RecallWeights` defaults, chosen with `bench/memory.py`. Importance and recency nudge the fused
score. Temporary chats and the conversation being answered are never searched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from engine.database import Database
from engine.events import RecalledItem
from engine.store import any_of, query_words
from engine.vectors import vector_index

Mode = Literal["hybrid", "bm25", "dense"]

# Words that match nearly everything and carry no topic; BM25 down-weights them, dropping is better.
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "could", "did", "do", "does", "for", "from",
    "had", "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "me", "my", "of", "on", "or", "our",
    "so", "that", "the", "their", "them", "then", "there", "these", "they", "this", "to", "was", "we", "were",
    "what", "when", "where", "which", "who", "why", "will", "with", "would", "you", "your", "about", "tell", "know",
    "remember", "whats", "usually", "like", "just", "really", "also", "any", "some", "get", "got",
})


# Row ids to (row id, item).
_Loader = Callable[[list[int]], Iterable[tuple[int, RecalledItem]]]


class Embeds(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class RecallWeights:
    # Measured with bench/memory.py (720 questions over 20 users' dated sessions): at 0.7/0.3 with
    # offset 60 a hit found only by the vectors can never outrank BM25's 50th, and paraphrased
    # questions suffer; 0.5/0.5 with offset 10 gained 0.09 balanced hit@5 and still beat BM25
    # alone on questions that share words with the answer.
    bm25: float = 0.5
    dense: float = 0.5
    rank_offset: int = 10  # the k of reciprocal-rank fusion
    importance: float = 0.2  # a memory of importance 1 scores up to this much more
    recency: float = 0.1  # something from today scores up to this much more than something old
    recency_days: float = 30.0


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


class Recall:
    """Searches on the caller's thread; the query's vector is computed meanwhile on a thread of its own.

    Embedding the query (~10 ms) and the BM25 searches (up to ~20 ms at 100k messages) both run
    outside the GIL, so overlapping them keeps recall within its budget. That thread owns its own
    copy of the embedder (one llama.cpp model per thread, DESIGN.md decision 2).
    """

    def __init__(self, database: Database, embedder: Embeds | None, weights: RecallWeights | None = None) -> None:
        self.database = database
        self.embedder = embedder
        self.weights = weights or RecallWeights()

    def search(self, query: str, *, k: int = 5, exclude_conversation: str | None = None,
               memories: bool = True, messages: bool = True, mode: Mode = "hybrid") -> list[RecalledItem]:
        """The `k` best items for `query`, best first."""
        pool = max(50, 5 * k)
        pending = self._embed_soon(query) if mode != "bm25" and self.embedder is not None else None
        words = _keywords(query)
        lexical = ([] if mode == "dense" or not memories else self._memory_bm25(words, pool),
                   [] if mode == "dense" or not messages else self._message_bm25(words, pool, exclude_conversation))
        vector = pending.result() if pending is not None else None
        scored: list[tuple[float, RecalledItem]] = []
        if memories:
            dense = self._memory_knn(vector, pool) if vector is not None else []
            scored += self._fuse(lexical[0], dense, "memories", self._memory_items, k)
        if messages:
            dense = self._message_knn(vector, pool, exclude_conversation) if vector is not None else []
            scored += self._fuse(lexical[1], dense, "messages", self._message_items, k)
        scored.sort(key=lambda pair: pair[0], reverse=True)
        return [item for _, item in scored[:k]]

    def _embed_soon(self, text: str) -> Future[np.ndarray]:
        assert self.embedder is not None
        path = getattr(self.embedder, "path", None)
        if path is None:  # an embedder that cannot be copied: compute it now
            done: Future[np.ndarray] = Future()
            done.set_result(self.embedder.embed([text])[0])
            return done
        worker = self.database.caches.get("query_embedder")
        if not isinstance(worker, QueryEmbedder):
            worker = self.database.caches["query_embedder"] = QueryEmbedder(Path(path))
        return worker.embed(text)


    def _fuse(self, bm25: list[int], dense: list[int], table: str, load: _Loader,
              k: int) -> list[tuple[float, RecalledItem]]:
        """Weighted reciprocal-rank fusion of two rankings of row ids, nudged by importance and age;
        the best `k`. Only their texts are read: a candidate may be a megabyte long."""
        w = self.weights
        fused: dict[int, float] = {}
        for weight, ranking in ((w.bm25, bm25), (w.dense, dense)):
            for rank, rowid in enumerate(ranking):
                fused[rowid] = fused.get(rowid, 0.0) + weight / (w.rank_offset + rank + 1)
        if not fused:
            return []
        importance = "importance" if table == "memories" else str(_MESSAGE_IMPORTANCE)
        facts = self.database.conn.execute(
            f"SELECT rowid, created_at, {importance} FROM {table} WHERE rowid IN ({','.join('?' * len(fused))})",
            list(fused)).fetchall()
        now = time.time()
        scores = {}
        for rowid, created_at, weight in facts:
            age_days = max(0.0, now - created_at) / 86400
            boost = (1 + w.importance * weight) * (1 + w.recency * math.exp(-age_days / w.recency_days))
            scores[rowid] = fused[rowid] * boost
        best = sorted(scores, key=scores.__getitem__, reverse=True)[:k]
        items = {rowid: item for rowid, item in load(best)}
        return [(scores[r], replace(items[r], score=scores[r])) for r in best if r in items]

    # --- the four retrievers: rowids, best first -------------------------------------------------

    def _memory_bm25(self, words: list[str], pool: int) -> list[int]:
        if not words:
            return []
        rows = self.database.conn.execute(
            "SELECT m.rowid FROM memories_fts JOIN memories m ON m.rowid = memories_fts.rowid "
            "WHERE memories_fts MATCH ? AND m.status = 'active' ORDER BY bm25(memories_fts) LIMIT ?",
            (any_of(words), pool)).fetchall()
        return [r[0] for r in rows]

    def _message_bm25(self, words: list[str], pool: int, exclude: str | None) -> list[int]:
        if not words:
            return []
        # Rank in the index alone first (joining every match before sorting is slow at 100k
        # messages), with room for the hits the filter below removes.
        ranked = [r[0] for r in self.database.conn.execute(
            "SELECT rowid FROM messages_fts WHERE messages_fts MATCH ? ORDER BY bm25(messages_fts) LIMIT ?",
            (any_of(words), 2 * pool + self._excluded_messages(exclude))).fetchall()]
        return self._searchable_messages(ranked, exclude)[:pool]

    def _memory_knn(self, vector: np.ndarray, pool: int) -> list[int]:
        inactive = self.database.conn.execute("SELECT count(*) FROM memories WHERE status != 'active'").fetchone()[0]
        ranked = vector_index(self.database, "memory_vectors").search(vector, pool + inactive)
        active = _in_order(ranked, self.database.conn.execute(
            f"SELECT rowid FROM memories WHERE status = 'active' AND rowid IN ({','.join('?' * len(ranked))})",
            ranked).fetchall())
        return active[:pool]

    def _message_knn(self, vector: np.ndarray, pool: int, exclude: str | None) -> list[int]:
        # Nearest first, then filter: ask for as many more as the filter could remove.
        ranked = vector_index(self.database, "message_vectors").search(vector, pool + self._excluded_messages(exclude))
        return self._searchable_messages(ranked, exclude)[:pool]

    def _excluded_messages(self, exclude: str | None) -> int:
        # Through the conversation index: a join over every message took 16 ms at 100k.
        return int(self.database.conn.execute(
            "SELECT count(*) FROM messages WHERE conversation_id IN "
            "(SELECT id FROM conversations WHERE temporary = 1 OR id IS ?)", (exclude,)).fetchone()[0])

    def _searchable_messages(self, ranked: list[int], exclude: str | None) -> list[int]:
        """`ranked` without messages of temporary chats or of `exclude`, order kept."""
        if not ranked:
            return []
        rows = self.database.conn.execute(
            f"SELECT m.rowid FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            f"WHERE c.temporary = 0 AND c.id IS NOT ? AND m.rowid IN ({','.join('?' * len(ranked))})",
            (exclude, *ranked)).fetchall()
        return _in_order(ranked, rows)

    # --- rows to items ----------------------------------------------------------------------------

    def _memory_items(self, rowids: list[int]) -> Iterable[tuple[int, RecalledItem]]:
        rows = self.database.conn.execute(
            f"SELECT rowid, id, content, created_at, source_conversation_id, source_message_id "
            f"FROM memories WHERE rowid IN ({','.join('?' * len(rowids))})", rowids).fetchall()
        for r in rows:
            yield r[0], RecalledItem("memory", r[2], 0.0, r[3], r[4], r[5], memory_id=r[1])

    def _message_items(self, rowids: list[int]) -> Iterable[tuple[int, RecalledItem]]:
        rows = self.database.conn.execute(
            f"SELECT rowid, id, content, created_at, conversation_id, role, source_id "
            f"FROM messages WHERE rowid IN ({','.join('?' * len(rowids))})", rowids).fetchall()
        for r in rows:
            yield r[0], RecalledItem("message", r[2], 0.0, r[3], r[4], r[1], role=r[5], source_id=r[6])


_MESSAGE_IMPORTANCE = 0.5  # messages carry no importance of their own; a memory is rated around them


def _in_order(ranked: list[int], rows: Iterable[Sequence[int]]) -> list[int]:
    keep = {r[0] for r in rows}
    return [rowid for rowid in ranked if rowid in keep]


def _keywords(query: str) -> list[str]:
    words = query_words(query)
    kept = [w for w in words if w.lower() not in _STOPWORDS]
    return kept or words


class QueryEmbedder:
    """A thread with its own copy of the embedder, for query vectors; closed with the database."""

    def __init__(self, path: Path) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="cleo-recall")
        self._embedder = self._thread.submit(self._load, path).result()

    @staticmethod
    def _load(path: Path) -> Any:
        from engine.llama_backend import Embedder

        return Embedder(path, threads=1)

    def embed(self, text: str) -> Future[np.ndarray]:
        return self._thread.submit(lambda: self._embedder.embed([text])[0])

    def close(self) -> None:
        self._thread.submit(self._embedder.close).result()
        self._thread.shutdown()
