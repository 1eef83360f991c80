"""Learning about the user while they are not waiting: the learning queue and what the model is asked.

Finished turns, turns that left the context and conversations the user left are queued in the
database (table `learning_queue`), so closing Cleo, or a crash, before the idle moment when
learning runs loses nothing. `Learning.learn` takes the queue one item per model call: a turn
becomes ADD / SUPERSEDE / NONE of a memory (`EXTRACTION_SCHEMA`), a stretch of conversation
becomes an episodic summary (`SUMMARY_SCHEMA`, table `summaries`) saved as an "event" memory.
An item leaves the queue in the transaction that saves what it taught: a crash or an error before
leaves it there, to be tried again, `_ATTEMPTS` times at most (an interrupted try, Ctrl-C or
closing, is not counted).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from engine.chat.conversation import ConversationMissing, Message
from engine.errors import KnownError
from engine.events import MemoryUpdated
from engine.memory.book import MEMORY_KINDS, Memory, MemoryBook
from engine.memory.recall import Recall
from engine.storage.conversations import SqliteConversationStore

log = logging.getLogger(__name__)

# Asks the loaded model for JSON following a schema (`Assistant.ask_json`).
AskJson = Callable[[list[dict[str, str]], dict[str, Any]], Any]
# Saves what the model taught (in the transaction that also removes its queue item).
Save = Callable[[], "MemoryUpdated | None"]

EXTRACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "action": {"enum": ["ADD", "SUPERSEDE", "NONE"]},
        "memory_id": {"type": "string", "maxLength": 8},
        "kind": {"enum": list(MEMORY_KINDS)},
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

SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object", "properties": {"summary": {"type": "string", "maxLength": 400}}, "required": ["summary"],
}
_SUMMARY_INSTRUCTIONS = (
    "Summarise this part of a conversation between the user and Cleo in one to three sentences: what the "
    "user wanted, what was decided or learned, and anything to follow up. Write about 'the user'."
)
_SUMMARY_MESSAGES = 40  # the newest messages of a long stretch are enough for a summary
_ATTEMPTS = 3  # an item whose learning failed this often (a bug, or a crash each time) is given up

# "Remember that …" and "forget that …": done when the user says them, so never learned again later.
REMEMBER_REQUEST = re.compile(r"^\s*(?:please\s+)?remember\s+(?:that\s+)?(?P<what>.+)", re.IGNORECASE | re.DOTALL)
FORGET_REQUEST = re.compile(r"^\s*(?:please\s+)?forget\s+(?:that\s+|about\s+)?(?P<what>.+)",
                            re.IGNORECASE | re.DOTALL)


class Learning:
    """The learning queue, and the model calls that empty it into `MemoryBook`."""

    def __init__(self, book: MemoryBook, recall: Recall, store: SqliteConversationStore) -> None:
        self.book = book
        self.recall = recall
        self.store = store

    @property
    def pending(self) -> bool:
        return self.book.conn.execute("SELECT 1 FROM learning_queue LIMIT 1").fetchone() is not None

    def queue_turn(self, conversation_id: str, messages: Sequence[Message]) -> None:
        """A finished turn, for the model to decide what it teaches about the user."""
        self._queue("turn", conversation_id, messages)

    def queue_summary(self, conversation_id: str, messages: Sequence[Message]) -> None:
        """A stretch of conversation to summarise, so it stays recallable."""
        self._queue("summary", conversation_id, messages)

    def queue_unsummarised(self, conversation_id: str, branch: Sequence[Message]) -> None:
        """The part of `branch` after its latest summary, if it holds at least one exchange."""
        done = {r[0] for r in self.book.conn.execute(
            "SELECT last_message_id FROM summaries WHERE conversation_id = ?", (conversation_id,))}
        last_done = max((i for i, m in enumerate(branch) if m.id in done), default=-1)
        if len(branch) - last_done - 1 >= 2:
            self.queue_summary(conversation_id, branch[last_done + 1:])

    def learn(self, ask: AskJson, *, propose: bool, at_most: int | None = None) -> list[MemoryUpdated]:
        """Handle queued work, summaries first, one model call each: at most `at_most` items, so the
        caller can serve the user in between; the rest waits for the next call (`pending`). With
        `propose`, what the model decides goes to the inbox instead of memory."""
        updates: list[MemoryUpdated] = []
        done = 0
        while (at_most is None or done < at_most) and (queued := self._next_queued()) is not None:
            done += 1
            item, kind, conversation_id, messages = queued
            try:  # the model's answer first: no transaction is held while it thinks
                save = (self._summarise(ask, conversation_id, messages) if kind == "summary"
                        else self._learn_from(ask, conversation_id, messages, propose))
            except BaseException as exc:
                if not isinstance(exc, Exception):  # Ctrl-C or closing: the item is not to blame
                    self._not_an_attempt(item)
                raise
            # What it taught and the item's removal in one transaction: a failure in between can
            # neither lose the lesson nor learn it twice.
            with self.book.database.write() as conn:
                update = save() if save is not None else None
                conn.execute("DELETE FROM learning_queue WHERE id = ?", (item,))
            if update is not None:
                updates.append(update)
        return updates

    def _not_an_attempt(self, item: int) -> None:
        with self.book.database.write() as conn:
            conn.execute("UPDATE learning_queue SET attempts = max(attempts - 1, 0) WHERE id = ?", (item,))

    def _queue(self, kind: str, conversation_id: str, messages: Sequence[Message]) -> None:
        ids = json.dumps([m.id for m in messages])
        with self.book.database.write() as conn:
            if conn.execute("SELECT 1 FROM learning_queue WHERE conversation_id = ? AND kind = ? AND message_ids = ?",
                            (conversation_id, kind, ids)).fetchone():
                return  # e.g. a chat left twice, with nothing said in between
            conn.execute("INSERT INTO learning_queue (conversation_id, kind, message_ids, queued_at) "
                         "VALUES (?, ?, ?, ?)", (conversation_id, kind, ids, time.time()))

    def _next_queued(self) -> tuple[int, str, str, list[Message]] | None:
        """The oldest queued work, summaries first (they cover turns that left the context), counted
        as one more attempt; work that failed `_ATTEMPTS` times is given up, not retried for ever."""
        while True:
            row = self.book.conn.execute("SELECT id, kind, conversation_id, message_ids, attempts FROM learning_queue "
                                         "ORDER BY kind = 'summary' DESC, id LIMIT 1").fetchone()
            if row is None:
                return None
            with self.book.database.write() as conn:
                if row[4] < _ATTEMPTS:
                    conn.execute("UPDATE learning_queue SET attempts = attempts + 1 WHERE id = ?", (row[0],))
                    break
                conn.execute("DELETE FROM learning_queue WHERE id = ?", (row[0],))
            log.warning("gave up learning from a %s of conversation %s after %d failed attempts",
                        row[1], row[2], row[4])
        messages = []
        for message_id in json.loads(row[3]):
            try:
                messages.append(self.store.message(message_id))
            except ConversationMissing:
                continue  # deleted since (its chat's queue entries go with the chat)
        return row[0], row[1], row[2], messages

    def _learn_from(self, ask: AskJson, conversation_id: str, messages: list[Message],
                    propose: bool) -> Save | None:
        """Ask the model what the turn teaches; what saves it (in the caller's transaction), or None."""
        user = next((m for m in messages if m.role == "user"), None)
        if user is None or REMEMBER_REQUEST.match(user.content) or FORGET_REQUEST.match(user.content):
            return None
        known = self._related_memories(user.content)
        try:
            decision = ask(_extraction_prompt(known, messages), EXTRACTION_SCHEMA)
        except KnownError as exc:
            log.warning("could not learn from a turn in %s: %s", conversation_id, exc.message)
            return None
        return lambda: self._apply(decision, known, conversation_id, user, propose)

    def _related_memories(self, text: str) -> list[Memory]:
        found = self.recall.search(text, k=8, messages=False)
        return [self.book.get(i.memory_id) for i in found if i.memory_id]

    def _apply(self, decision: Any, known: list[Memory], conversation_id: str, user: Message,
               propose: bool) -> MemoryUpdated | None:
        if not isinstance(decision, dict) or decision.get("action") not in ("ADD", "SUPERSEDE"):
            return None
        content = str(decision.get("content") or "").strip()
        kind = decision.get("kind") if decision.get("kind") in MEMORY_KINDS else "fact"
        if len(content) < 3:
            return None
        by_short_id = {m.id[:8]: m for m in known}
        replaced = by_short_id.get(str(decision.get("memory_id") or "")) if decision["action"] == "SUPERSEDE" else None
        reason = "learned from the conversation"
        if replaced is not None and not propose:
            new = self.book.supersede(replaced.id, content, reason=reason, source_message_id=user.id,
                                      source_conversation_id=conversation_id)
            return MemoryUpdated("superseded", new.id, new.content)
        action, memory = self.book.add(content, str(kind), propose=propose, reason=reason,
                                       replaces=replaced.id if replaced else None, source_message_id=user.id,
                                       source_conversation_id=conversation_id)
        return MemoryUpdated(action, memory.id, memory.content)

    def _summarise(self, ask: AskJson, conversation_id: str, messages: list[Message]) -> Save | None:
        """Ask the model for a summary; what saves it (in the caller's transaction), or None."""
        if not messages:
            return None
        exchange = "\n".join(f"{'User' if m.role == 'user' else 'Assistant'}: {shorten(m.content, 600)}"
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
        return lambda: self._save_summary(f"On {day}: {summary}", conversation_id, messages)

    def _save_summary(self, summary: str, conversation_id: str, messages: list[Message]) -> MemoryUpdated:
        action, memory = self.book.add(summary, "event", importance=0.3,
                                       reason="summary of a conversation", source_message_id=messages[-1].id,
                                       source_conversation_id=conversation_id)
        with self.book.database.write() as conn:
            conn.execute("INSERT INTO summaries (id, conversation_id, content, first_message_id, last_message_id, "
                         "memory_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (uuid.uuid4().hex, conversation_id, memory.content, messages[0].id, messages[-1].id,
                          memory.id, time.time()))
        return MemoryUpdated(action, memory.id, memory.content)


def shorten(text: str, limit: int = 400) -> str:
    """`text` on one line, cut to `limit` characters: enough for the model to know what was said."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _extraction_prompt(known: Sequence[Memory], messages: Sequence[Message]) -> list[dict[str, str]]:
    memories = "\n".join(f"{m.id[:8]}: {m.content}" for m in known) or "(none)"
    exchange = "\n".join(f"{'User' if m.role == 'user' else 'Assistant'}: {shorten(m.content, 1500)}"
                         for m in messages)
    return [{"role": "system", "content": _EXTRACTION_INSTRUCTIONS},
            {"role": "user", "content": f"Known memories:\n{memories}\n\nLatest exchange:\n{exchange}"}]
