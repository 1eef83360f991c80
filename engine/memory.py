"""What Cleo remembers about the user, and how memory takes part in a turn.

`MemoryBook` keeps memories (profile, preference, fact, event, instruction) in the database with a
log of every change and its reason. Nothing is overwritten: a contradiction supersedes the old
memory (kept, marked, visible in its history); a near-duplicate bumps the one already there;
with "ask before remembering" on, proposals wait in an inbox for approval.

`MemoryHooks` is the assistant's `Memory` collaborator: the stable "what Cleo knows about you"
block, recalled items for each message, explicit "remember that …" / "forget that …", vectors
for new messages, and, when the user is not waiting (`learn`), facts the model extracts and
episodic summaries of finished conversations and of turns that left the context.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.conversations import ConversationMissing, Message
from engine.database import Database
from engine.errors import KnownError
from engine.events import MemoryUpdated, RecalledItem, Recollection
from engine.recall import Embeds, Recall, vector_bytes
from engine.store import SqliteConversationStore
from engine.vectors import vector_index

log = logging.getLogger(__name__)

KINDS = ("profile", "preference", "fact", "event", "instruction")
_DUPLICATE_SIMILARITY = 0.92  # cosine above which two memories say the same thing (MiniLM)
_FORGET_SIMILARITY = 0.5  # "forget that X" must resemble the memory at least this much
_PINNED_LIMIT = 30  # memories in the "what Cleo knows about you" block
_EMBED_BATCH = 32

_COLUMNS = ("id, kind, content, importance, status, pinned, superseded_by, source_message_id, "
            "source_conversation_id, created_at, updated_at, last_used_at, use_count")


class MemoryMissing(KnownError):
    """A memory id that does not exist (any more)."""


@dataclass(frozen=True)
class MemoryRecord:
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
    memory_id: str
    action: str
    content: str
    reason: str
    source_message_id: str | None
    at: float


class MemoryBook:
    def __init__(self, database: Database, embedder: Embeds | None) -> None:
        self.database = database
        self.conn = database.conn
        self.embedder = embedder

    # --- reading ----------------------------------------------------------------------------------

    def get(self, memory_id: str) -> MemoryRecord:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM memories WHERE id = ?", (memory_id,)).fetchone()
        if row is None:
            raise MemoryMissing(f"There is no memory {memory_id!r}.", hint="It may have been forgotten already.")
        return _record(row)

    def memories(self, *, status: str = "active", kind: str | None = None) -> list[MemoryRecord]:
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM memories WHERE status = ? AND (? IS NULL OR kind = ?) "
            "ORDER BY pinned DESC, created_at, rowid", (status, kind, kind)).fetchall()
        return [_record(r) for r in rows]

    def about_user(self, limit: int) -> list[MemoryRecord]:
        """Pinned, profile and instruction memories, pinned first, then oldest first (a stable order)."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM memories WHERE status = 'active' AND (pinned = 1 OR kind IN "
            "('profile', 'instruction')) ORDER BY pinned DESC, created_at, rowid LIMIT ?", (limit,)).fetchall()
        return [_record(r) for r in rows]

    def derived_from(self, conversation_id: str) -> list[MemoryRecord]:
        """Memories learned from a conversation: what to ask about before deleting it."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM memories WHERE source_conversation_id = ? "
            "AND status IN ('active', 'proposed') ORDER BY created_at, rowid", (conversation_id,)).fetchall()
        return [_record(r) for r in rows]

    def inbox(self) -> list[MemoryRecord]:
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
            source_conversation_id: str | None = None, replaces: str | None = None) -> tuple[str, MemoryRecord]:
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

    def edit(self, memory_id: str, content: str, *, reason: str = "edited by you") -> MemoryRecord:
        self.get(memory_id)
        content = _clean(content)
        vector = self._embed(content)
        with self.database.write() as conn:
            conn.execute("UPDATE memories SET content = ?, updated_at = ? WHERE id = ?",
                         (content, time.time(), memory_id))
            self._store_vector(conn, memory_id, vector)
            _log(conn, memory_id, "edited", content, reason, None)
        return self.get(memory_id)

    def pin(self, memory_id: str, pinned: bool = True) -> MemoryRecord:
        memory = self.get(memory_id)
        with self.database.write() as conn:
            conn.execute("UPDATE memories SET pinned = ?, updated_at = ? WHERE id = ?",
                         (int(pinned), time.time(), memory_id))
            _log(conn, memory_id, "pinned" if pinned else "unpinned", memory.content, "by you", None)
        return self.get(memory_id)

    def approve(self, memory_id: str) -> MemoryRecord:
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
        """Delete a memory and the text of its history; the log keeps only that it was forgotten."""
        self.get(memory_id)
        self._delete(memory_id, "forgotten", reason)

    def supersede(self, memory_id: str, content: str, *, reason: str, source_message_id: str | None = None,
                  source_conversation_id: str | None = None) -> MemoryRecord:
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

    def invalidate(self, memory_id: str, *, reason: str) -> MemoryRecord:
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
            conn.execute("INSERT INTO memories_fts(memories_fts) VALUES ('optimize')")
        scrub_free_space(self.database)

    def _delete(self, memory_id: str, action: str, reason: str) -> None:
        rowid = self.conn.execute("SELECT rowid FROM memories WHERE id = ?", (memory_id,)).fetchone()[0]
        vector_index(self.database, "memory_vectors").remove([rowid])
        with self.database.write() as conn:
            conn.execute("UPDATE memory_log SET content = '' WHERE memory_id = ?", (memory_id,))
            conn.execute("DELETE FROM memories WHERE id = ?", (memory_id,))
            _log(conn, memory_id, action, "", reason, None)
            conn.execute("INSERT INTO memories_fts(memories_fts) VALUES ('optimize')")

    # --- vectors ----------------------------------------------------------------------------------

    def _embed(self, text: str) -> np.ndarray | None:
        return None if self.embedder is None else self.embedder.embed([text])[0]

    def _store_vector(self, conn: Any, memory_id: str, vector: np.ndarray | None) -> None:
        if vector is not None:
            rowid = conn.execute("SELECT rowid FROM memories WHERE id = ?", (memory_id,)).fetchone()[0]
            conn.execute("DELETE FROM memory_vectors WHERE rowid = ?", (rowid,))
            conn.execute("INSERT INTO memory_vectors(rowid, embedding) VALUES (?, ?)", (rowid, vector_bytes(vector)))
            vector_index(self.database, "memory_vectors").add([rowid], vector[None, :])

    def _duplicate_of(self, content: str, vector: np.ndarray | None) -> MemoryRecord | None:
        row = self.conn.execute("SELECT id FROM memories WHERE status = 'active' AND lower(content) = lower(?)",
                                (content,)).fetchone()
        if row is not None:
            return self.get(row[0])
        return None if vector is None else self._similar_active(vector)

    def _similar_active(self, vector: np.ndarray) -> MemoryRecord | None:
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


def scrub_free_space(database: Database) -> None:
    """Rewrite the file without free pages and empty the write-ahead log, so deleted text is gone."""
    database.conn.execute("VACUUM")
    database.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# Asks the loaded model for JSON following a schema (`Assistant.ask_json`).
AskJson = Callable[[list[dict[str, str]], dict[str, Any]], Any]

EXTRACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "action": {"enum": ["ADD", "SUPERSEDE", "NONE"]},
        "memory_id": {"type": "string", "maxLength": 8},
        "kind": {"enum": list(KINDS)},
        "content": {"type": "string", "maxLength": 200},
    },
    "required": ["action", "memory_id", "kind", "content"],
}

_EXTRACTION_INSTRUCTIONS = (
    "You keep Cleo's memory of lasting facts about the user: who they are, what they like, people and "
    "things in their life, plans, and how they want to be answered. Read the latest exchange. If it tells "
    "something new and lasting about the user, answer ADD with that fact as one short sentence about the user. "
    "If it corrects a known memory, answer SUPERSEDE with that memory's id and the corrected fact. Otherwise "
    "answer NONE with empty memory_id and content. Never store passing small talk or facts about the world."
)


def _extraction_prompt(known: Sequence[MemoryRecord], messages: Sequence[Message]) -> list[dict[str, str]]:
    memories = "\n".join(f"{m.id[:8]}: {m.content}" for m in known) or "(none)"
    exchange = "\n".join(f"{'User' if m.role == 'user' else 'Assistant'}: {_shorten(m.content, 1500)}"
                         for m in messages)
    return [{"role": "system", "content": _EXTRACTION_INSTRUCTIONS},
            {"role": "user", "content": f"Known memories:\n{memories}\n\nLatest exchange:\n{exchange}"}]


SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object", "properties": {"summary": {"type": "string", "maxLength": 400}}, "required": ["summary"],
}
_SUMMARY_INSTRUCTIONS = (
    "Summarise this part of a conversation between the user and Cleo in one to three sentences: what the "
    "user wanted, what was decided or learned, and anything to follow up. Write about 'the user'."
)
_SUMMARY_MESSAGES = 40  # the newest messages of a long stretch are enough for a summary


_REMEMBER = re.compile(r"^\s*(?:please\s+)?remember\s+(?:that\s+)?(?P<what>.+)", re.IGNORECASE | re.DOTALL)
_FORGET = re.compile(r"^\s*(?:please\s+)?forget\s+(?:that\s+|about\s+)?(?P<what>.+)", re.IGNORECASE | re.DOTALL)


class MemoryHooks:
    """The assistant's `Memory`: reads and writes `MemoryBook`, searches with `Recall`."""

    def __init__(self, book: MemoryBook, recall: Recall, store: SqliteConversationStore, *,
                 ask_before_remembering: bool = True, recall_k: int = 5) -> None:
        self.book = book
        self.recall = recall
        self.store = store
        self.ask_before_remembering = ask_before_remembering
        self.recall_k = recall_k

    def _enabled(self, conversation_id: str) -> bool:
        return self.store.memory_enabled(conversation_id)

    def pinned_block(self, conversation_id: str) -> str:
        if not self._enabled(conversation_id):
            return ""
        known = self.book.about_user(_PINNED_LIMIT)  # a stable order keeps the prompt's prefix
        if not known:
            return ""
        lines = "\n".join(f"- {m.content}" for m in known)
        return f"What you know about the user (from earlier conversations):\n{lines}"

    def context_for(self, conversation_id: str, user_text: str) -> Recollection:
        if not self._enabled(conversation_id):
            return Recollection()
        shown = {m.id for m in self.book.about_user(_PINNED_LIMIT)}  # already in the block above
        items = [i for i in self.recall.search(user_text, k=self.recall_k + len(shown),
                                               exclude_conversation=conversation_id)
                 if i.memory_id not in shown][: self.recall_k]
        if not items:
            return Recollection()
        self.book.mark_used([i.memory_id for i in items if i.memory_id])
        lines = "\n".join(f"- ({_describe(i)}) {_shorten(i.text)}" for i in items)
        text = ("Possibly relevant things you remember (use them only if they help; they may be out of date):\n"
                f"{lines}")
        return Recollection(text, tuple(items))

    def on_user_message(self, conversation_id: str, message: Message) -> list[MemoryUpdated]:
        """Explicit requests: "remember that …" saves, "forget that …" forgets."""
        if not self._enabled(conversation_id):
            return []
        remember = _REMEMBER.match(message.content)
        if remember:
            action, memory = self.book.add(remember["what"], "fact", importance=0.8, reason="you asked to remember it",
                                           source_message_id=message.id, source_conversation_id=conversation_id)
            return [MemoryUpdated(action, memory.id, memory.content)]
        forget = _FORGET.match(message.content)
        if forget:
            found = self.recall.search(forget["what"], k=1, messages=False)
            if found and found[0].memory_id and self._resembles(forget["what"], found[0].text):
                self.book.forget(found[0].memory_id, reason="you asked to forget it")
                return [MemoryUpdated("forgotten", found[0].memory_id, found[0].text)]
        return []

    def _resembles(self, request: str, memory: str) -> bool:
        embedder = self.book.embedder
        if embedder is None:
            return True
        a, b = embedder.embed([request, memory])
        return float(a @ b) >= _FORGET_SIMILARITY

    def after_turn(self, conversation_id: str, messages: Sequence[Message]) -> None:
        """Vectors for the turn's messages, so other chats can recall them; the turn waits for `learn`."""
        if not self.store.is_temporary(conversation_id):
            self.book.embed_messages(messages)
        if self._enabled(conversation_id):
            self._queue("turn", conversation_id, messages)

    def learn(self, ask: AskJson, *, at_most: int | None = None) -> list[MemoryUpdated]:
        """Let the model decide what the finished turns teach about the user (ADD / SUPERSEDE / NONE),
        after summarising the turns that left the context.

        Run when the user is not waiting (after a reply, when idle). With "ask before remembering"
        on, what it decides goes to the inbox instead of memory. `at_most` bounds the turns and
        summaries handled (one model call each), so the caller can serve the user in between;
        the rest waits for the next call (`learning_pending`).
        """
        updates: list[MemoryUpdated] = []
        done = 0
        while (at_most is None or done < at_most) and (queued := self._next_queued()) is not None:
            done += 1
            kind, conversation_id, messages = queued
            update = (self._summarise(ask, conversation_id, messages) if kind == "summary"
                      else self._learn_from(ask, conversation_id, messages))
            if update is not None:
                updates.append(update)
        return updates

    @property
    def learning_pending(self) -> bool:
        return self.book.conn.execute("SELECT 1 FROM learning_queue LIMIT 1").fetchone() is not None

    def _queue(self, kind: str, conversation_id: str, messages: Sequence[Message]) -> None:
        ids = json.dumps([m.id for m in messages])
        with self.book.database.write() as conn:
            if conn.execute("SELECT 1 FROM learning_queue WHERE conversation_id = ? AND kind = ? AND message_ids = ?",
                            (conversation_id, kind, ids)).fetchone():
                return  # e.g. a chat left twice, with nothing said in between
            conn.execute("INSERT INTO learning_queue (conversation_id, kind, message_ids, queued_at) "
                         "VALUES (?, ?, ?, ?)", (conversation_id, kind, ids, time.time()))

    def _next_queued(self) -> tuple[str, str, list[Message]] | None:
        """Take the oldest queued work, summaries first (they cover turns that left the context).
        It leaves the queue before the model is asked: work that failed is not retried forever."""
        row = self.book.conn.execute("SELECT id, kind, conversation_id, message_ids FROM learning_queue "
                                     "ORDER BY kind = 'summary' DESC, id LIMIT 1").fetchone()
        if row is None:
            return None
        with self.book.database.write() as conn:
            conn.execute("DELETE FROM learning_queue WHERE id = ?", (row[0],))
        messages = []
        for message_id in json.loads(row[3]):
            try:
                messages.append(self.store.message(message_id))
            except ConversationMissing:
                continue  # deleted since (its chat's queue entries go with the chat)
        return row[1], row[2], messages

    def _learn_from(self, ask: AskJson, conversation_id: str, messages: list[Message]) -> MemoryUpdated | None:
        user = next((m for m in messages if m.role == "user"), None)
        if user is None or _REMEMBER.match(user.content) or _FORGET.match(user.content):
            return None  # explicit requests were handled when they were said
        known = self._related_memories(user.content)
        try:
            decision = ask(_extraction_prompt(known, messages), EXTRACTION_SCHEMA)
        except KnownError as exc:
            log.warning("could not learn from a turn in %s: %s", conversation_id, exc.message)
            return None
        return self._apply(decision, known, conversation_id, user)

    def _related_memories(self, text: str) -> list[MemoryRecord]:
        found = self.recall.search(text, k=8, messages=False)
        return [self.book.get(i.memory_id) for i in found if i.memory_id]

    def _apply(self, decision: Any, known: list[MemoryRecord], conversation_id: str,
               user: Message) -> MemoryUpdated | None:
        if not isinstance(decision, dict) or decision.get("action") not in ("ADD", "SUPERSEDE"):
            return None
        content = str(decision.get("content") or "").strip()
        kind = decision.get("kind") if decision.get("kind") in KINDS else "fact"
        if len(content) < 3:
            return None
        by_short_id = {m.id[:8]: m for m in known}
        replaced = by_short_id.get(str(decision.get("memory_id") or "")) if decision["action"] == "SUPERSEDE" else None
        reason = "learned from the conversation"
        if replaced is not None and not self.ask_before_remembering:
            new = self.book.supersede(replaced.id, content, reason=reason, source_message_id=user.id,
                                      source_conversation_id=conversation_id)
            return MemoryUpdated("superseded", new.id, new.content)
        action, memory = self.book.add(content, str(kind), propose=self.ask_before_remembering, reason=reason,
                                       replaces=replaced.id if replaced else None, source_message_id=user.id,
                                       source_conversation_id=conversation_id)
        return MemoryUpdated(action, memory.id, memory.content)

    def on_recalled(self, reply_id: str, items: Sequence[RecalledItem]) -> None:
        """Keep, by reference, what was added to a reply's prompt, for "Why this answer" later."""
        named = [(i, item, item.memory_id if item.kind == "memory" else item.message_id)
                 for i, item in enumerate(items)]
        with self.book.database.write() as conn:
            conn.executemany("INSERT OR REPLACE INTO reply_recalls (reply_id, position, kind, item_id, score) "
                             "VALUES (?, ?, ?, ?, ?)",
                             [(reply_id, i, item.kind, item_id, item.score) for i, item, item_id in named if item_id])

    def recalled_in(self, conversation_id: str) -> dict[str, tuple[RecalledItem, ...]]:
        """Reply id -> what memory added to its prompt, for the conversation's replies (as they are
        now: a memory forgotten since, or a message deleted since, is left out)."""
        rows = self.book.conn.execute(
            "SELECT r.reply_id, r.kind, r.item_id, r.score FROM reply_recalls r JOIN messages m ON m.id = r.reply_id "
            "WHERE m.conversation_id = ? ORDER BY r.reply_id, r.position", (conversation_id,)).fetchall()
        if not rows:
            return {}
        found = self.recall.items_by_id([r[2] for r in rows if r[1] == "memory"],
                                        [r[2] for r in rows if r[1] == "message"])
        recalled: dict[str, list[RecalledItem]] = {}
        for reply_id, _, item_id, score in rows:
            if item_id in found:
                recalled.setdefault(reply_id, []).append(dataclasses.replace(found[item_id], score=score))
        return {reply_id: tuple(items) for reply_id, items in recalled.items()}

    def on_evict(self, conversation_id: str, messages: Sequence[Message]) -> None:
        """Turns that left the context are summarised by `learn`, so they stay recallable."""
        if messages and self._enabled(conversation_id):
            self._queue("summary", conversation_id, messages)

    def conversation_finished(self, conversation_id: str) -> None:
        """The user left the conversation: `learn` summarises what was not summarised yet."""
        if not self._enabled(conversation_id):
            return
        leaf = self.store.conversation(conversation_id).current_leaf_id
        messages = self.store.branch(leaf)
        done = {r[0] for r in self.book.conn.execute(
            "SELECT last_message_id FROM summaries WHERE conversation_id = ?", (conversation_id,))}
        last_done = max((i for i, m in enumerate(messages) if m.id in done), default=-1)
        if len(messages) - last_done - 1 >= 2:  # at least one exchange since the last summary
            self._queue("summary", conversation_id, messages[last_done + 1:])

    def _summarise(self, ask: AskJson, conversation_id: str, messages: list[Message]) -> MemoryUpdated | None:
        if not messages:
            return None
        exchange = "\n".join(f"{'User' if m.role == 'user' else 'Assistant'}: {_shorten(m.content, 600)}"
                              for m in messages[-_SUMMARY_MESSAGES:])
        try:
            answer = ask([{"role": "system", "content": _SUMMARY_INSTRUCTIONS},
                          {"role": "user", "content": exchange}], SUMMARY_SCHEMA)
        except KnownError as exc:
            log.warning("could not summarise conversation %s: %s", conversation_id, exc.message)
            return None
        summary = str(answer.get("summary", "")).strip() if isinstance(answer, dict) else ""
        if len(summary) < 10:
            return None
        day = time.strftime("%Y-%m-%d", time.localtime(messages[0].created_at))
        action, memory = self.book.add(f"On {day}: {summary}", "event", importance=0.3,
                                       reason="summary of a conversation", source_message_id=messages[-1].id,
                                       source_conversation_id=conversation_id)
        with self.book.database.write() as conn:
            conn.execute("INSERT INTO summaries (id, conversation_id, content, first_message_id, last_message_id, "
                         "memory_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (uuid.uuid4().hex, conversation_id, memory.content, messages[0].id, messages[-1].id,
                          memory.id, time.time()))
        return MemoryUpdated(action, memory.id, memory.content)


def _describe(item: RecalledItem) -> str:
    date = time.strftime("%Y-%m-%d", time.localtime(item.created_at))
    if item.kind == "memory":
        return f"remembered {date}"
    return f"{'you' if item.role == 'user' else 'Cleo'} said on {date} in another chat"


def _shorten(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _clean(content: str) -> str:
    content = " ".join(content.split()).strip().rstrip(".") + "."
    if len(content) < 3:
        raise KnownError("A memory needs some words.", hint="Write what Cleo should remember.")
    return content


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise KnownError(f"'{kind}' is not a kind of memory.", hint=f"Use one of: {', '.join(KINDS)}.")


def _log(conn: Any, memory_id: str, action: str, content: str, reason: str, source_message_id: str | None) -> None:
    conn.execute("INSERT INTO memory_log (memory_id, action, content, reason, source_message_id, at) "
                 "VALUES (?, ?, ?, ?, ?, ?)", (memory_id, action, content, reason, source_message_id, time.time()))


def _record(row: Sequence[Any]) -> MemoryRecord:
    return MemoryRecord(row[0], row[1], row[2], float(row[3]), row[4], bool(row[5]), row[6], row[7], row[8],
                        row[9], row[10], row[11], int(row[12]))
