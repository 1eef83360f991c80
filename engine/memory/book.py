"""What Cleo remembers about the user: `MemoryBook`, its memories and the log of every change.

Memories (profile, preference, fact, event, instruction) live in the database with a log of
every change and its reason. Nothing is overwritten: a contradiction supersedes the old memory
(kept, marked, visible in its history); a near-duplicate bumps the one already there; with "ask
before remembering" on, proposals wait in an inbox for approval. The book also keeps the vectors
of memories and messages that recall searches.

Forgetting is the exception to "nothing is overwritten": a forgotten memory goes with the versions
it replaced, the summary it was made from and the text of their history, and the text leaves the
database file, its log and the backups (`engine.storage.forgetting`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.chat.conversation import Message
from engine.errors import KnownError
from engine.memory.recall import Embeds, vector_bytes
from engine.memory.vectors import forget_vectors, vector_index
from engine.storage.database import Database
from engine.storage.forgetting import erase_deleted

MEMORY_KINDS = ("profile", "preference", "fact", "event", "instruction")
_DUPLICATE_SIMILARITY = 0.92  # cosine above which two memories say the same thing (MiniLM)
_EMBED_BATCH = 32

_COLUMNS = ("id, kind, content, importance, status, pinned, superseded_by, source_message_id, "
            "source_conversation_id, created_at, updated_at, last_used_at, use_count")


class MemoryMissing(KnownError):
    """A memory id that does not exist (any more)."""


@dataclass(frozen=True)
class Memory:
    """One thing Cleo remembers, with where it came from and how it has been used."""

    id: str
    kind: str
    content: str
    importance: float
    status: str  # "proposed" (in the inbox), "active", "superseded" (by a correction), "invalidated" (no longer true)
    pinned: bool
    superseded_by: str | None
    source_message_id: str | None
    source_conversation_id: str | None
    created_at: float
    updated_at: float
    last_used_at: float | None
    use_count: int


@dataclass(frozen=True)
class LogEntry:
    """One change to a memory, with its reason."""

    memory_id: str
    action: str
    content: str
    reason: str
    source_message_id: str | None
    at: float


class MemoryBook:
    """The memories in the database: read, add, correct, forget, and the vectors recall searches."""

    def __init__(self, database: Database, embedder: Embeds | None) -> None:
        self.database = database
        self.conn = database.conn
        self.embedder = embedder

    # --- reading ----------------------------------------------------------------------------------

    def get(self, memory_id: str) -> Memory:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM memories WHERE id = ?", (memory_id,)).fetchone()
        if row is None:
            raise MemoryMissing(f"There is no memory {memory_id!r}.", hint="It may have been forgotten already.")
        return _record(row)

    def memories(self, *, status: str = "active", kind: str | None = None) -> list[Memory]:
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM memories WHERE status = ? AND (? IS NULL OR kind = ?) "
            "ORDER BY pinned DESC, created_at, rowid", (status, kind, kind)).fetchall()
        return [_record(r) for r in rows]

    def about_user(self, limit: int) -> list[Memory]:
        """Pinned, profile and instruction memories, pinned first, then oldest first (a stable order)."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM memories WHERE status = 'active' AND (pinned = 1 OR kind IN "
            "('profile', 'instruction')) ORDER BY pinned DESC, created_at, rowid LIMIT ?", (limit,)).fetchall()
        return [_record(r) for r in rows]

    def derived_from(self, conversation_id: str) -> list[Memory]:
        """Memories learned from a conversation, whatever became of them since (corrected, no longer
        true): what deleting it with what was learned forgets. Oldest first, so that forgetting them
        in this order never meets one already forgotten as a version of another."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM memories WHERE source_conversation_id = ? ORDER BY created_at, rowid",
            (conversation_id,)).fetchall()
        return [_record(r) for r in rows]

    def ids_starting_with(self, prefix: str) -> list[str]:
        """Ids of the memories whose id starts with `prefix`, taken literally (`%` and `_` too)."""
        rows = self.conn.execute("SELECT id FROM memories WHERE substr(id, 1, length(?)) = ? ORDER BY id",
                                 (prefix, prefix)).fetchall()
        return [row[0] for row in rows]

    def inbox(self) -> list[Memory]:
        return self.memories(status="proposed")

    def history(self, memory_id: str) -> list[LogEntry]:
        """Every change to this memory and to the memories it replaced, oldest first."""
        ids = [memory_id]
        while len(ids) < 100:  # follow supersessions back to the first version
            row = self.conn.execute("SELECT id FROM memories WHERE superseded_by = ?", (ids[-1],)).fetchone()
            if row is None:
                break
            ids.append(row[0])
        rows = self.conn.execute(
            f"SELECT memory_id, action, content, reason, source_message_id, at FROM memory_log "
            f"WHERE memory_id IN ({','.join('?' * len(ids))}) ORDER BY at, id", ids).fetchall()
        return [LogEntry(*r) for r in rows]

    # --- writing ----------------------------------------------------------------------------------

    def add(self, content: str, kind: str = "fact", *, importance: float = 0.5, pinned: bool = False,
            propose: bool = False, reason: str = "added by you", source_message_id: str | None = None,
            source_conversation_id: str | None = None, replaces: str | None = None) -> tuple[str, Memory]:
        """Save a memory, or bump the active one that says the same; returns the action and the memory."""
        content = _clean(content)
        _check_kind(kind)
        vector = self._embed(content)
        duplicate = self._duplicate_of(content, vector)
        now = time.time()
        if duplicate is not None:
            with self.database.write() as conn:
                conn.execute("UPDATE memories SET use_count = use_count + 1, updated_at = ?, "
                             "importance = max(importance, ?) WHERE id = ?", (now, importance, duplicate.id))
                _log(conn, duplicate.id, "bumped", content, f"said again ({reason})", source_message_id)
            return "bumped", self.get(duplicate.id)
        memory_id = uuid.uuid4().hex
        status = "proposed" if propose else "active"
        with self.database.write() as conn:
            conn.execute(
                "INSERT INTO memories (id, kind, content, importance, status, pinned, source_message_id, "
                "source_conversation_id, created_at, updated_at, replaces) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (memory_id, kind, content, importance, status, int(pinned), source_message_id,
                 source_conversation_id, now, now, replaces))
            self._store_vector(conn, memory_id, vector)
            _log(conn, memory_id, "proposed" if propose else "added", content, reason, source_message_id)
        return ("proposed" if propose else "added"), self.get(memory_id)

    def edit(self, memory_id: str, content: str, *, reason: str = "edited by you") -> Memory:
        self.get(memory_id)
        content = _clean(content)
        vector = self._embed(content)
        with self.database.write() as conn:
            conn.execute("UPDATE memories SET content = ?, updated_at = ? WHERE id = ?",
                         (content, time.time(), memory_id))
            self._store_vector(conn, memory_id, vector)
            _log(conn, memory_id, "edited", content, reason, None)
        return self.get(memory_id)

    def pin(self, memory_id: str, pinned: bool = True) -> Memory:
        memory = self.get(memory_id)
        with self.database.write() as conn:
            conn.execute("UPDATE memories SET pinned = ?, updated_at = ? WHERE id = ?",
                         (int(pinned), time.time(), memory_id))
            _log(conn, memory_id, "pinned" if pinned else "unpinned", memory.content, "by you", None)
        return self.get(memory_id)

    def approve(self, memory_id: str) -> Memory:
        """Accept a proposal; one that corrects an existing memory supersedes it."""
        memory = self.get(memory_id)
        now = time.time()
        with self.database.write() as conn:
            conn.execute("UPDATE memories SET status = 'active', updated_at = ? WHERE id = ?", (now, memory_id))
            _log(conn, memory_id, "approved", memory.content, "approved by you", None)
            replaced = conn.execute("SELECT replaces FROM memories WHERE id = ?", (memory_id,)).fetchone()[0]
            old = conn.execute("SELECT content FROM memories WHERE id = ? AND status = 'active'",
                               (replaced,)).fetchone() if replaced else None
            if old is not None:
                conn.execute("UPDATE memories SET status = 'superseded', superseded_by = ?, updated_at = ? "
                             "WHERE id = ?", (memory_id, now, replaced))
                _log(conn, replaced, "superseded", old[0], "you approved a correction", None)
        return self.get(memory_id)

    def reject(self, memory_id: str) -> None:
        """Turn down a proposal: its text is not kept."""
        self.get(memory_id)
        self._delete(memory_id, "rejected", "rejected by you")

    def forget(self, memory_id: str, *, reason: str = "forgotten at your request") -> None:
        """Delete a memory with the versions it replaced and the summary it was made from, and the
        text of their history; the log keeps only that it was forgotten."""
        self.get(memory_id)
        self._delete(memory_id, "forgotten", reason)

    def supersede(self, memory_id: str, content: str, *, reason: str, source_message_id: str | None = None,
                  source_conversation_id: str | None = None) -> Memory:
        """Replace what a memory says; the old one is kept, marked superseded, in the new one's history."""
        old = self.get(memory_id)
        _, new = self.add(content, old.kind, importance=old.importance, pinned=old.pinned, reason=reason,
                          source_message_id=source_message_id, source_conversation_id=source_conversation_id)
        if new.id == old.id:
            return new  # it said the same thing after all
        with self.database.write() as conn:
            conn.execute("UPDATE memories SET status = 'superseded', superseded_by = ?, updated_at = ? WHERE id = ?",
                         (new.id, time.time(), old.id))
            _log(conn, old.id, "superseded", old.content, reason, source_message_id)
        return new

    def invalidate(self, memory_id: str, *, reason: str) -> Memory:
        """Mark a memory as no longer true, with nothing to replace it; it stays in the history."""
        memory = self.get(memory_id)
        with self.database.write() as conn:
            conn.execute("UPDATE memories SET status = 'invalidated', updated_at = ? WHERE id = ?",
                         (time.time(), memory_id))
            _log(conn, memory_id, "invalidated", memory.content, reason, None)
        return self.get(memory_id)

    def mark_used(self, memory_ids: Sequence[str]) -> None:
        if memory_ids:
            with self.database.write() as conn:
                conn.executemany("UPDATE memories SET use_count = use_count + 1, last_used_at = ? WHERE id = ?",
                                 [(time.time(), m) for m in memory_ids])

    def forget_everything(self) -> None:
        """Every memory, its log and every episodic summary, gone from the file's bytes too."""
        self.database.caches.pop("memory_vectors", None)  # rebuilt, empty, on next use
        with self.database.write() as conn:
            conn.execute("DELETE FROM memories")
            conn.execute("DELETE FROM memory_log")
            conn.execute("DELETE FROM summaries")
            conn.execute("DELETE FROM reply_recalls WHERE kind = 'memory'")
        erase_deleted(self.database)

    def _delete(self, memory_id: str, action: str, reason: str) -> None:
        versions = self.conn.execute(
            """WITH RECURSIVE versions(id) AS (
                 SELECT ? UNION SELECT m.id FROM memories m JOIN versions v ON m.superseded_by = v.id)
               SELECT m.rowid, m.id FROM versions v JOIN memories m ON m.id = v.id""", (memory_id,)).fetchall()
        forget_vectors(self.database, "memory_vectors", [r[0] for r in versions])
        ids = [(r[1],) for r in versions]
        with self.database.write() as conn:
            conn.executemany("UPDATE memory_log SET content = '' WHERE memory_id = ?", ids)
            conn.executemany("DELETE FROM summaries WHERE memory_id = ?", ids)
            conn.executemany("DELETE FROM reply_recalls WHERE kind = 'memory' AND item_id = ?", ids)
            conn.executemany("UPDATE memories SET replaces = NULL WHERE replaces = ?", ids)
            conn.executemany("DELETE FROM memories WHERE id = ?", ids)
            _log(conn, memory_id, action, "", reason, None)
        erase_deleted(self.database)

    # --- vectors ----------------------------------------------------------------------------------

    def _embed(self, text: str) -> np.ndarray | None:
        return None if self.embedder is None else self.embedder.embed([text])[0]

    def _store_vector(self, conn: Any, memory_id: str, vector: np.ndarray | None) -> None:
        if vector is not None:
            rowid = conn.execute("SELECT rowid FROM memories WHERE id = ?", (memory_id,)).fetchone()[0]
            conn.execute("DELETE FROM memory_vectors WHERE rowid = ?", (rowid,))
            conn.execute("INSERT INTO memory_vectors(rowid, embedding) VALUES (?, ?)", (rowid, vector_bytes(vector)))
            vector_index(self.database, "memory_vectors").add([rowid], vector[None, :])

    def _duplicate_of(self, content: str, vector: np.ndarray | None) -> Memory | None:
        row = self.conn.execute("SELECT id FROM memories WHERE status = 'active' AND lower(content) = lower(?)",
                                (content,)).fetchone()
        if row is not None:
            return self.get(row[0])
        return None if vector is None else self._similar_active(vector)

    def _similar_active(self, vector: np.ndarray) -> Memory | None:
        """The active memory nearest `vector`, if it is within `_DUPLICATE_SIMILARITY`. The nearest
        vectors include superseded and proposed memories: the search widens until an active one is
        close enough, or one found is already too far."""
        index = vector_index(self.database, "memory_vectors")
        k = 8
        while True:
            nearest = index.nearest(vector, k)
            close = [rowid for rowid, similarity in nearest if similarity >= _DUPLICATE_SIMILARITY]
            active = dict(self.conn.execute(
                f"SELECT rowid, id FROM memories WHERE status = 'active' AND rowid IN ({','.join('?' * len(close))})",
                close).fetchall()) if close else {}
            found = next((active[rowid] for rowid in close if rowid in active), None)
            if found is not None:
                return self.get(found)
            if len(close) < len(nearest) or len(nearest) < k:
                return None
            k *= 4

    def embed_missing(self) -> int:
        """Compute vectors for messages and memories that lack one (after a crash, an import, a
        model change); returns how many were added. Scans every row: run it at startup."""
        if self.embedder is None:
            return 0
        added = 0
        for table, vectors, skip in (
            ("memories", "memory_vectors", ""),
            ("messages", "message_vectors",
             " AND conversation_id NOT IN (SELECT id FROM conversations WHERE temporary = 1)"),
        ):
            rows = self.conn.execute(f"SELECT rowid, content FROM {table} "
                                     f"WHERE rowid NOT IN (SELECT rowid FROM {vectors}){skip}").fetchall()
            self._embed_rows(vectors, rows)
            added += len(rows)
        return added

    def embed_messages(self, messages: Sequence[Message]) -> None:
        """Vectors for these messages (a finished turn), without scanning the table."""
        if self.embedder is None or not messages:
            return
        rows = self.conn.execute(f"SELECT rowid, content FROM messages WHERE id IN ({','.join('?' * len(messages))})",
                                 [m.id for m in messages]).fetchall()
        self._embed_rows("message_vectors", rows)

    def _embed_rows(self, vectors: str, rows: Sequence[Sequence[Any]]) -> None:
        assert self.embedder is not None
        index = vector_index(self.database, vectors)
        for start in range(0, len(rows), _EMBED_BATCH):
            chunk = rows[start:start + _EMBED_BATCH]
            # One text per call: llama.cpp pads a batch to its longest text, so singles are faster.
            embedded = np.stack([self.embedder.embed([r[1] or " "])[0] for r in chunk])
            with self.database.write() as conn:
                conn.executemany(f"DELETE FROM {vectors} WHERE rowid = ?", [(r[0],) for r in chunk])
                conn.executemany(f"INSERT INTO {vectors}(rowid, embedding) VALUES (?, ?)",
                                 [(r[0], vector_bytes(v)) for r, v in zip(chunk, embedded, strict=True)])
            index.add([r[0] for r in chunk], embedded)


def _clean(content: str) -> str:
    content = " ".join(content.split()).strip().rstrip(".") + "."
    if len(content) < 3:
        raise KnownError("A memory needs some words.", hint="Write what Cleo should remember.")
    return content


def _check_kind(kind: str) -> None:
    if kind not in MEMORY_KINDS:
        raise KnownError(f"'{kind}' is not a kind of memory.", hint=f"Use one of: {', '.join(MEMORY_KINDS)}.")


def _log(conn: Any, memory_id: str, action: str, content: str, reason: str, source_message_id: str | None) -> None:
    conn.execute("INSERT INTO memory_log (memory_id, action, content, reason, source_message_id, at) "
                 "VALUES (?, ?, ?, ?, ?, ?)", (memory_id, action, content, reason, source_message_id, time.time()))


def _record(row: Sequence[Any]) -> Memory:
    return Memory(row[0], row[1], row[2], float(row[3]), row[4], bool(row[5]), row[6], row[7], row[8],
                  row[9], row[10], row[11], int(row[12]))
