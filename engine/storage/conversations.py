"""Conversations and messages in the SQLite database: the durable `ConversationStore`.

Every call commits before it returns: the user's message is on disk before generation starts,
and the assistant saves a streaming reply at least once a second. A reply found without a finish
reason at startup was cut off by a crash; `recover_after_crash` marks it "interrupted" so the
window can say so, keeping the text saved so far.

Temporary chats live here too, so one code path serves both, and are deleted when closed (and
at the next start, if Cleo died first). Exports read whole conversations from here and imports
save them here (`record`, `save_records`): nothing else in the engine writes the conversation tables.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.chat.conversation import Conversation, ConversationMissing, Message
from engine.memory.vectors import forget_vectors
from engine.storage.database import Database
from engine.storage.forgetting import erase_deleted
from engine.storage.records import ConversationRecord, MessageIdTaken, MessageRecord, SaveOutcome

_CONVERSATION_COLUMNS = "id, title, system_prompt, created_at, current_leaf_id"
_MESSAGE_COLUMNS = "id, conversation_id, role, content, parent_id, created_at, finish_reason, model"


@dataclass(frozen=True)
class ConversationSummary:
    """A row of the sidebar."""

    id: str
    title: str
    created_at: float
    updated_at: float
    pinned: bool
    archived: bool
    temporary: bool
    memory_enabled: bool
    message_count: int


@dataclass(frozen=True)
class SearchHit:
    conversation_id: str
    conversation_title: str
    message_id: str
    role: str
    snippet: str  # with the matched words between `[` and `]`
    created_at: float


class SqliteConversationStore:
    """`ConversationStore` on Cleo's database, plus what the sidebar and search need."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.conn = database.conn

    def recover_after_crash(self) -> None:
        """At startup only (never while a reply streams): mark replies a crash cut off as
        interrupted, and delete temporary chats that were open when Cleo stopped."""
        self._finish_interrupted_replies()
        self._drop_temporary_conversations()

    # --- ConversationStore --------------------------------------------------------------------

    def create_conversation(self, title: str = "", system_prompt: str | None = None, *,
                            temporary: bool = False, memory_enabled: bool = True, model: str = "",
                            conversation_id: str | None = None, created_at: float | None = None) -> Conversation:
        now = created_at if created_at is not None else time.time()
        conversation_id = conversation_id or _new_id()
        with self.database.write() as conn:
            conn.execute(
                "INSERT INTO conversations (id, title, created_at, updated_at, temporary, model, system_prompt, "
                "memory_enabled) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, title, now, now, int(temporary), model, system_prompt,
                 int(memory_enabled and not temporary)),
            )
        return self.conversation(conversation_id)

    def conversation(self, conversation_id: str) -> Conversation:
        row = self.conn.execute(f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = ?",
                                (conversation_id,)).fetchone()
        if row is None:
            raise ConversationMissing(f"There is no conversation {conversation_id!r}.",
                                      hint="It may have been deleted; pick another chat.")
        return Conversation(*row)

    def message(self, message_id: str) -> Message:
        row = self.conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise ConversationMissing(f"There is no message {message_id!r}.",
                                      hint="It may have been deleted with its chat.")
        return _message(row)

    def add_message(self, conversation_id: str, role: str, content: str, parent_id: str | None,
                    *, model: str = "", finish_reason: str = "", source_id: str | None = None,
                    created_at: float | None = None) -> Message:
        now = created_at if created_at is not None else time.time()
        message_id = _new_id()
        if parent_id is not None and self.message(parent_id).conversation_id != conversation_id:
            raise ValueError(f"message {parent_id} belongs to another conversation")
        with self.database.write() as conn:
            conn.execute(
                "INSERT INTO messages (id, conversation_id, parent_id, role, content, created_at, updated_at, model, "
                "finish_reason, source_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, conversation_id, parent_id, role, content, now, now, model, finish_reason, source_id),
            )
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))
            if not self._title(conn, conversation_id) and role == "user":
                conn.execute("UPDATE conversations SET title = ? WHERE id = ?", (_title_from(content), conversation_id))
        return self.message(message_id)

    def save_reply(self, message_id: str, content: str, finish_reason: str = "") -> None:
        now = time.time()
        with self.database.write() as conn:
            conn.execute("UPDATE messages SET content = ?, finish_reason = ?, updated_at = ? WHERE id = ?",
                         (content, finish_reason, now, message_id))
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = "
                         "(SELECT conversation_id FROM messages WHERE id = ?)", (now, message_id))

    def set_current_leaf(self, conversation_id: str, message_id: str) -> None:
        with self.database.write() as conn:
            conn.execute("UPDATE conversations SET current_leaf_id = ? WHERE id = ?", (message_id, conversation_id))

    def branch(self, leaf_id: str | None) -> list[Message]:
        if leaf_id is None:
            return []
        rows = self.conn.execute(
            f"""WITH RECURSIVE path(id, depth) AS (
                  SELECT ?, 0 UNION ALL
                  SELECT m.parent_id, path.depth + 1 FROM messages m JOIN path ON m.id = path.id
                  WHERE m.parent_id IS NOT NULL AND path.depth < 1000000)  -- a damaged loop ends
                SELECT {', '.join('m.' + c for c in _MESSAGE_COLUMNS.split(', '))}
                FROM path JOIN messages m ON m.id = path.id ORDER BY path.depth DESC""",
            (leaf_id,),
        ).fetchall()
        return [_message(r) for r in rows]

    def alternatives(self, message_id: str) -> list[Message]:
        message = self.message(message_id)
        rows = self.conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND parent_id IS ? "
            "ORDER BY created_at, rowid", (message.conversation_id, message.parent_id)).fetchall()
        return [_message(r) for r in rows]

    def alternative_positions(self, conversation_id: str) -> dict[str, tuple[int, int]]:
        """For each message of the conversation that has alternatives: its place among them (from 1)
        and their number, in `alternatives`' order. One query, for a whole conversation at once."""
        siblings: dict[str | None, list[str]] = {}
        for message_id, parent_id in self.conn.execute(
                "SELECT id, parent_id FROM messages WHERE conversation_id = ? ORDER BY created_at, rowid",
                (conversation_id,)):
            siblings.setdefault(parent_id, []).append(message_id)
        return {message_id: (i, len(group)) for group in siblings.values() if len(group) > 1
                for i, message_id in enumerate(group, 1)}

    def latest_leaf(self, message_id: str) -> str:
        """The end of the branch through `message_id`, following the newest reply at each step:
        where the window goes when the user picks another alternative of a message."""
        leaf = message_id
        for _ in range(1_000_000):  # a damaged loop ends
            row = self.conn.execute("SELECT id FROM messages WHERE parent_id = ? ORDER BY created_at DESC, rowid DESC "
                                    "LIMIT 1", (leaf,)).fetchone()
            if row is None:
                break
            leaf = row[0]
        return leaf

    # --- the sidebar ---------------------------------------------------------------------------

    def conversations(self, *, include_archived: bool = False) -> list[ConversationSummary]:
        rows = self.conn.execute(
            "SELECT c.id, c.title, c.created_at, c.updated_at, c.pinned, c.archived, c.temporary, c.memory_enabled, "
            "(SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) FROM conversations c "
            "WHERE c.archived = 0 OR ? ORDER BY c.pinned DESC, c.updated_at DESC", (int(include_archived),)).fetchall()
        return [ConversationSummary(r[0], r[1], r[2], r[3], bool(r[4]), bool(r[5]), bool(r[6]), bool(r[7]), r[8])
                for r in rows]

    def update_conversation(self, conversation_id: str, **changes: Any) -> None:
        """Rename, pin, archive, switch memory on or off: `title=`, `pinned=`, `archived=`, `memory_enabled=`."""
        allowed = {"title", "pinned", "archived", "memory_enabled", "system_prompt", "model"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot change {sorted(unknown)} of a conversation")
        self.conversation(conversation_id)
        with self.database.write() as conn:
            for column, value in changes.items():
                conn.execute(f"UPDATE conversations SET {column} = ? WHERE id = ?",
                             (int(value) if isinstance(value, bool) else value, conversation_id))

    def is_temporary(self, conversation_id: str) -> bool:
        row = self.conn.execute("SELECT temporary FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        return bool(row and row[0])

    def chat_model(self, conversation_id: str) -> str:
        """The model file this conversation was set to use; "" for the one in the settings."""
        row = self.conn.execute("SELECT model FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        return str(row[0] or "") if row else ""

    def memory_enabled(self, conversation_id: str) -> bool:
        row = self.conn.execute("SELECT memory_enabled, temporary FROM conversations WHERE id = ?",
                                (conversation_id,)).fetchone()
        return bool(row and row[0] and not row[1])

    def delete_conversation(self, conversation_id: str) -> None:
        """Delete the conversation and everything derived from it: its messages, their search index
        and vectors, its summaries, its queued learning, what its replies recalled and where its
        messages were recalled; then its text leaves the file, the log and the backups
        (`erase_deleted`). Memories learned from it stay: the caller forgets them if asked."""
        rowids = [r[0] for r in self.conn.execute("SELECT rowid FROM messages WHERE conversation_id = ?",
                                                  (conversation_id,))]
        forget_vectors(self.database, "message_vectors", rowids)
        with self.database.write() as conn:
            # Its summaries, queued learning and its replies' recalls go with it (ON DELETE CASCADE).
            conn.execute("DELETE FROM reply_recalls WHERE kind = 'message' AND item_id IN "
                         "(SELECT id FROM messages WHERE conversation_id = ?)", (conversation_id,))
            conn.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
            conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        erase_deleted(self.database)

    def close_temporary(self, conversation_id: str) -> None:
        """A temporary chat leaves nothing behind once closed."""
        if self.is_temporary(conversation_id):
            self.delete_conversation(conversation_id)

    # --- search ----------------------------------------------------------------------------------

    def search(self, query: str, *, limit: int = 20) -> list[SearchHit]:
        """Messages of every non-temporary conversation matching `query`, best first, with snippets."""
        match = fts_query(query)
        if not match:
            return []
        rows = self.conn.execute(
            """SELECT m.conversation_id, c.title, m.id, m.role,
                      snippet(messages_fts, 0, '[', ']', '…', 12), m.created_at
               FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid
               JOIN conversations c ON c.id = m.conversation_id
               WHERE messages_fts MATCH ? AND c.temporary = 0
               ORDER BY bm25(messages_fts) LIMIT ?""", (match, limit)).fetchall()
        return [SearchHit(*r) for r in rows]

    # --- whole conversations, for exports and imports -----------------------------------------

    def saved_conversation_ids(self) -> list[str]:
        """Every conversation except temporary chats, oldest first."""
        rows = self.conn.execute("SELECT id FROM conversations WHERE temporary = 0 ORDER BY created_at, id")
        return [row[0] for row in rows.fetchall()]

    def latest_message_id(self, conversation_id: str) -> str | None:
        row = self.conn.execute("SELECT id FROM messages WHERE conversation_id = ? "
                                "ORDER BY created_at DESC, rowid DESC LIMIT 1", (conversation_id,)).fetchone()
        return str(row[0]) if row else None

    def record(self, conversation_id: str) -> ConversationRecord:
        """The conversation with every branch and every field, its messages in the order they were saved."""
        row = self.conn.execute("SELECT id, title, created_at, updated_at, pinned, archived, model, system_prompt, "
                                "memory_enabled, current_leaf_id FROM conversations WHERE id = ?",
                                (conversation_id,)).fetchone()
        if row is None:
            self.conversation(conversation_id)  # raises, in the store's words
        messages = [MessageRecord(key=m[0], id=m[0], parent_key=m[1], role=m[2], content=m[3], created_at=m[4],
                                  updated_at=m[5], finish_reason=m[6], model=m[7], source_id=m[8],
                                  prompt_tokens=m[9], completion_tokens=m[10])
                    for m in self.conn.execute(
                        "SELECT id, parent_id, role, content, created_at, updated_at, finish_reason, model, source_id, "
                        "prompt_tokens, completion_tokens FROM messages WHERE conversation_id = ? ORDER BY rowid",
                        (conversation_id,))]
        return ConversationRecord(id=row[0], title=row[1], created_at=row[2], updated_at=row[3], pinned=bool(row[4]),
                                  archived=bool(row[5]), model=row[6], system_prompt=row[7],
                                  memory_enabled=bool(row[8]), current_key=row[9], messages=messages)

    def save_records(self, records: Iterable[ConversationRecord]) -> list[tuple[SaveOutcome, int]]:
        """Save conversations with their messages in one transaction: all of them, or (on an error,
        such as `MessageIdTaken`) none. A conversation or message saved before is not saved again,
        so only what is new is added. Returns, per record, what was done and how many messages were added.
        `records` is read once, inside the transaction, so an import may pass a stream whose errors roll back."""
        with self.database.write() as conn:
            return [_save_record(conn, record) for record in records]

    # --- housekeeping -----------------------------------------------------------------------------

    @staticmethod
    def _title(conn: Any, conversation_id: str) -> str:
        row = conn.execute("SELECT title FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        return str(row[0]) if row else ""

    def _finish_interrupted_replies(self) -> None:
        with self.database.write() as conn:
            conn.execute("UPDATE messages SET finish_reason = 'interrupted' "
                         "WHERE role = 'assistant' AND finish_reason = ''")

    def _drop_temporary_conversations(self) -> None:
        ids = [r[0] for r in self.conn.execute("SELECT id FROM conversations WHERE temporary = 1")]
        for conversation_id in ids:
            self.delete_conversation(conversation_id)


def query_words(text: str) -> list[str]:
    """The words of `text` as search terms: letters and digits only, so no FTS5 syntax leaks in."""
    words = ["".join(ch for ch in w if ch.isalnum()) for w in text.split()]
    return [w for w in words if w]


def any_of(words: list[str]) -> str:
    """An FTS5 query matching any of `words`, each quoted."""
    return " OR ".join(f'"{w}"' for w in words)


def fts_query(text: str) -> str:
    """`text` as an FTS5 query of its words, any of which may match."""
    return any_of(query_words(text))


def _save_record(conn: Any, record: ConversationRecord) -> tuple[SaveOutcome, int]:
    if not record.messages:
        return "empty", 0
    exists = conn.execute("SELECT 1 FROM conversations WHERE id = ?", (record.id,)).fetchone() is not None
    ids = _saved_message_ids(conn, record.id) if exists else {}
    missing = [m for m in record.messages if not _already_saved(m, ids)]
    if not exists:
        conn.execute("INSERT INTO conversations (id, title, created_at, updated_at, pinned, archived, model, "
                     "system_prompt, memory_enabled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (record.id, record.title, record.created_at, record.updated_at, int(record.pinned),
                      int(record.archived), record.model, record.system_prompt, int(record.memory_enabled)))
    for message in missing:
        ids[message.key] = message.id or _new_id()
    for message in missing:
        _insert_record_message(conn, record.id, message, ids)
    if missing and record.current_key is not None:
        conn.execute("UPDATE conversations SET current_leaf_id = ?, updated_at = max(updated_at, ?) WHERE id = ?",
                     (ids[record.current_key], record.updated_at, record.id))
    return ("added" if not exists else "updated" if missing else "skipped"), len(missing)


def _saved_message_ids(conn: Any, conversation_id: str) -> dict[str, str]:
    """Cleo id and source id → Cleo id, for the messages of the conversation already saved."""
    rows = conn.execute("SELECT id, source_id FROM messages WHERE conversation_id = ?", (conversation_id,)).fetchall()
    return {key: row[0] for row in rows for key in (row[0], row[1]) if key is not None}


def _already_saved(message: MessageRecord, ids: dict[str, str]) -> bool:
    """Whether `message` is saved, by its key or by its source id; if so `ids` learns its Cleo id.

    Matching the source id too means a chat imported from ChatGPT on two computers is one chat
    when one computer's Cleo export is imported on the other, although Cleo's ids differ.
    """
    saved = ids.get(message.key) or (ids.get(message.source_id) if message.source_id is not None else None)
    if saved is not None:
        ids[message.key] = saved
    return saved is not None


def _insert_record_message(conn: Any, conversation_id: str, message: MessageRecord, ids: dict[str, str]) -> None:
    message_id = ids[message.key]
    owner = conn.execute("SELECT conversation_id FROM messages WHERE id = ?", (message_id,)).fetchone() \
        if message.id is not None else None  # a new id is unique; a kept one may be taken
    if owner is not None:
        raise MessageIdTaken(message.key, owner[0])
    parent_id = ids[message.parent_key] if message.parent_key is not None else None
    conn.execute(
        "INSERT INTO messages (id, conversation_id, parent_id, role, content, created_at, updated_at, model, "
        "finish_reason, source_id, prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (message_id, conversation_id, parent_id, message.role, message.content, message.created_at,
         message.updated_at, message.model, message.finish_reason, message.source_id, message.prompt_tokens,
         message.completion_tokens))


def _message(row: Sequence[Any]) -> Message:
    return Message(id=row[0], conversation_id=row[1], role=row[2], content=row[3], parent_id=row[4],
                   created_at=row[5], finish_reason=row[6], model=row[7])


def _title_from(text: str) -> str:
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return first_line[:60] + ("…" if len(first_line) > 60 else "")


def _new_id() -> str:
    return uuid.uuid4().hex
