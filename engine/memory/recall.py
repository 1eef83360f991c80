"""Recall: what Cleo remembers that bears on a message, from memories and other conversations.

Two retrievers, fused by weighted reciprocal-rank fusion: BM25 over the FTS5 indexes, and
nearest neighbours of the query's MiniLM vector in sqlite-vec. On real multi-session chats BM25
alone beat dense MiniLM and equal-weight fusion, so BM25 weighs more; the weights are
`RecallWeights` defaults, chosen with `bench/memory.py`. Importance and recency nudge the fused
score. Temporary chats and the conversation being answered are never searched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from engine.events import RecalledItem
from engine.memory.vectors import VectorIndex, vector_index
from engine.storage.conversations import any_of, query_words
from engine.storage.database import Database

Mode = Literal["hybrid", "bm25", "dense"]
T = TypeVar("T")

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
    copy of the embedder: a llama.cpp model belongs to the thread that loaded it.
    """

    def __init__(self, database: Database, embedder: Embeds | None, weights: RecallWeights | None = None) -> None:
        self.database = database
        self.embedder = embedder
        self.weights = weights or RecallWeights()

    def search(self, query: str, *, k: int = 5, exclude_conversation: str | None = None,
               memories: bool = True, messages: bool = True, mode: Mode = "hybrid") -> list[RecalledItem]:
        """The `k` best items for `query`, best first."""
        pool = max(50, 5 * k)
        # Nearest first, then filtered: ask for as many more as the filters could remove. The
        # query's vector is on its way while the messages to exclude are counted.
        wanted: Future[dict[str, tuple[VectorIndex, int]]] = Future()
        pending = self._nearest_soon(query, wanted) if mode != "bm25" and self.embedder is not None else None
        searches = {}
        try:
            excluded = self._excluded_messages(exclude_conversation) if messages else 0
            if memories:
                searches["memories"] = (vector_index(self.database, "memory_vectors"), _MEMORY_OVERFETCH * pool)
            if messages:
                searches["messages"] = (vector_index(self.database, "message_vectors"), pool + excluded)
        finally:  # the query thread waits for this
            wanted.set_result(searches)
        words = _keywords(query)
        lexical = ([] if mode == "dense" or not memories else self._memory_bm25(words, pool),
                   [] if mode == "dense" or not messages else self._message_bm25(words, pool, exclude_conversation,
                                                                                 excluded))
        nearest = pending.result() if pending is not None else {}
        scored: list[tuple[float, RecalledItem]] = []
        if memories:
            dense = self._active_memories(nearest.get("memories", []))[:pool]
            scored += self._fuse(lexical[0], dense, "memories", self._memory_items, k)
        if messages:
            dense = self._searchable_messages(nearest.get("messages", []), exclude_conversation)[:pool]
            scored += self._fuse(lexical[1], dense, "messages", self._message_items, k)
        scored.sort(key=lambda pair: pair[0], reverse=True)
        return [item for _, item in scored[:k]]

    def _nearest_soon(self, text: str,
                      wanted: Future[dict[str, tuple[VectorIndex, int]]]) -> Future[dict[str, list[int]]]:
        """Embeds `text` and searches the `wanted` indexes for that many of its neighbours each, on the
        query thread when there is one: both overlap the BM25 searches (llama.cpp and numpy release
        the GIL). A product over 100k message vectors takes ~10 ms on one core."""
        assert self.embedder is not None

        def nearest(vector: np.ndarray) -> dict[str, list[int]]:
            return {name: index.search(vector, want) for name, (index, want) in wanted.result().items()}

        path = getattr(self.embedder, "path", None)
        if path is None:  # an embedder that cannot be copied: compute it in `result()`
            embedder = self.embedder
            return _Later(lambda: nearest(embedder.embed([text])[0]))
        worker = self.database.caches.get("query_embedder")
        if not isinstance(worker, QueryEmbedder):
            worker = self.database.caches["query_embedder"] = QueryEmbedder(Path(path))
        return worker.embed_then(text, nearest)

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

    # --- the retrievers: rowids, best first ----------------------------------------------------

    def _memory_bm25(self, words: list[str], pool: int) -> list[int]:
        words = self._distinctive(words, "memories_fts")
        if not words:
            return []
        # Ranked in the index alone, then filtered, as for messages below.
        ranked = [r[0] for r in self.database.conn.execute(
            "SELECT rowid FROM memories_fts WHERE memories_fts MATCH ? ORDER BY bm25(memories_fts) LIMIT ?",
            (any_of(words), _MEMORY_OVERFETCH * pool)).fetchall()]
        return self._active_memories(ranked)[:pool]

    def _message_bm25(self, words: list[str], pool: int, exclude: str | None, excluded: int) -> list[int]:
        words = self._distinctive(words, "messages_fts")
        if not words:
            return []
        # Rank in the index alone first (joining every match before sorting is slow at 100k
        # messages), with room for the hits the filter below removes.
        ranked = [r[0] for r in self.database.conn.execute(
            "SELECT rowid FROM messages_fts WHERE messages_fts MATCH ? ORDER BY bm25(messages_fts) LIMIT ?",
            (any_of(words), 2 * pool + excluded)).fetchall()]
        return self._searchable_messages(ranked, exclude)[:pool]

    def _distinctive(self, words: list[str], table: str) -> list[str]:
        """`words` without those found in more than `_COMMON_SHARE` of the rows, unless all are.

        FTS5 scores every row that matches any word before it can sort, so one everyday word
        ("good" in a tenth of 100k messages) costs ~10 ms while adding little to the ranking: its
        BM25 weight is a third of a rare word's. Words found nowhere are dropped too. Counts are
        cached per word and forgotten when the table has grown by a tenth.
        """
        rows = self.database.conn.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
        cache = self.database.caches.get(f"{table}_counts")
        if not isinstance(cache, _WordCounts) or rows > cache.rows * 1.1 or rows < cache.rows:
            cache = self.database.caches[f"{table}_counts"] = _WordCounts(rows)
        counts = {}
        for word in dict.fromkeys(w.lower() for w in words):
            if word not in cache.counts:
                cache.counts[word] = self.database.conn.execute(
                    f"SELECT count(*) FROM {table} WHERE {table} MATCH ?", (any_of([word]),)).fetchone()[0]
            if cache.counts[word]:
                counts[word] = cache.counts[word]
        rare = [w for w, n in counts.items() if n <= _COMMON_SHARE * rows]
        return rare or sorted(counts, key=counts.__getitem__)[:1]

    def _active_memories(self, ranked: list[int]) -> list[int]:
        if not ranked:
            return []
        return _in_order(ranked, self.database.conn.execute(
            f"SELECT rowid FROM memories WHERE status = 'active' AND rowid IN ({','.join('?' * len(ranked))})",
            ranked).fetchall())

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

    def items_by_id(self, memory_ids: list[str], message_ids: list[str]) -> dict[str, RecalledItem]:
        """Items for memories and messages named by id; those deleted or forgotten since are missing."""
        found = {item.memory_id or "": item for _, item in self._memory_items(memory_ids, by="id")}
        found.update((item.message_id or "", item) for _, item in self._message_items(message_ids, by="id"))
        return found

    def _memory_items(self, keys: Sequence[int | str], *, by: str = "rowid") -> Iterable[tuple[int, RecalledItem]]:
        rows = self.database.conn.execute(
            f"SELECT rowid, id, content, created_at, source_conversation_id, source_message_id "
            f"FROM memories WHERE {by} IN ({','.join('?' * len(keys))})", keys).fetchall()
        for r in rows:
            yield r[0], RecalledItem("memory", r[2], 0.0, r[3], r[4], r[5], memory_id=r[1])

    def _message_items(self, keys: Sequence[int | str], *, by: str = "rowid") -> Iterable[tuple[int, RecalledItem]]:
        rows = self.database.conn.execute(
            f"SELECT rowid, id, content, created_at, conversation_id, role, source_id "
            f"FROM messages WHERE {by} IN ({','.join('?' * len(keys))})", keys).fetchall()
        for r in rows:
            yield r[0], RecalledItem("message", r[2], 0.0, r[3], r[4], r[1], role=r[5], source_id=r[6])


_MESSAGE_IMPORTANCE = 0.5  # messages carry no importance of their own; a memory is rated around them
_MEMORY_OVERFETCH = 2  # candidates per memory wanted, so that superseded ones can be filtered out
_COMMON_SHARE = 0.05  # a word in more rows than this is left out of BM25 queries (see `_distinctive`)


class _Later(Future[T]):
    """A future computed on the thread that asks for its result."""

    def __init__(self, compute: Callable[[], T]) -> None:
        super().__init__()
        self._compute = compute

    def result(self, timeout: float | None = None) -> T:
        if not self.done():
            self.set_result(self._compute())
        return super().result(timeout)


@dataclass
class _WordCounts:
    rows: int  # the table's largest rowid when counted
    counts: dict[str, int] = field(default_factory=dict)


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
        from engine.runtime.embedder import Embedder

        return Embedder(path, threads=1)

    def embed_then(self, text: str, then: Callable[[np.ndarray], T]) -> Future[T]:
        """`then(vector of text)`, on this thread."""
        return self._thread.submit(lambda: then(self._embedder.embed([text])[0]))

    def close(self) -> None:
        self._thread.submit(self._embedder.close).result()
        self._thread.shutdown()
