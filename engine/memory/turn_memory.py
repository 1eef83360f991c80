"""How memory takes part in a turn: `LongTermMemory`, the assistant's `TurnMemory` collaborator.

For each message it gives the stable "what Cleo knows about you" block and the recalled items
that may help; it acts on explicit "remember that …" / "forget that …"; after a turn it adds
vectors for the new messages so other chats can recall them, and queues the turn, the turns that
left the context and the conversations the user left for `learn`, which runs when the user is not
waiting. It also keeps, by reference, what was recalled into each reply ("Why this answer").
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from engine.chat.conversation import Message
from engine.events import MemoryUpdated, RecalledItem, Recollection
from engine.memory.book import MemoryBook
from engine.memory.learning import FORGET_REQUEST, REMEMBER_REQUEST, AskJson, Learning, shorten
from engine.memory.recall import Recall
from engine.storage.conversations import SqliteConversationStore

_FORGET_SIMILARITY = 0.5  # "forget that X" must resemble the memory at least this much
_PINNED_LIMIT = 30  # memories in the "what Cleo knows about you" block


class LongTermMemory:
    """The assistant's `TurnMemory`: reads and writes `MemoryBook`, searches with `Recall`."""

    def __init__(self, book: MemoryBook, recall: Recall, store: SqliteConversationStore, *,
                 ask_before_remembering: bool = True, recall_k: int = 5) -> None:
        self.book = book
        self.recall = recall
        self.store = store
        self.learning = Learning(book, recall, store)
        self.ask_before_remembering = ask_before_remembering
        self.recall_k = recall_k

    def _enabled(self, conversation_id: str | None) -> bool:
        return conversation_id is None or self.store.memory_enabled(conversation_id)

    def pinned_block(self, conversation_id: str | None) -> str:
        """What Cleo knows about the user, for the prompt of `conversation_id`; for None (a request
        that is no chat's, e.g. through the local API, which the user allowed memory for) always."""
        if not self._enabled(conversation_id):
            return ""
        known = self.book.about_user(_PINNED_LIMIT)  # a stable order keeps the prompt's prefix
        if not known:
            return ""
        lines = "\n".join(f"- {m.content}" for m in known)
        return f"What you know about the user (from earlier conversations):\n{lines}"

    def context_for(self, conversation_id: str | None, user_text: str) -> Recollection:
        """What is recalled for `user_text`, leaving out `conversation_id`'s own messages (they are in
        its prompt already); for None, recalled from every chat, as `pinned_block` says."""
        if not self._enabled(conversation_id):
            return Recollection()
        shown = {m.id for m in self.book.about_user(_PINNED_LIMIT)}  # already in the block above
        items = [i for i in self.recall.search(user_text, k=self.recall_k + len(shown),
                                               exclude_conversation=conversation_id)
                 if i.memory_id not in shown][: self.recall_k]
        if not items:
            return Recollection()
        self.book.mark_used([i.memory_id for i in items if i.memory_id])
        lines = "\n".join(f"- ({_describe(i)}) {shorten(i.text)}" for i in items)
        text = ("Possibly relevant things you remember (use them only if they help; they may be out of date):\n"
                f"{lines}")
        return Recollection(text, tuple(items))

    def on_user_message(self, conversation_id: str, message: Message) -> list[MemoryUpdated]:
        """Explicit requests: "remember that …" saves, "forget that …" forgets."""
        if not self._enabled(conversation_id):
            return []
        remember = REMEMBER_REQUEST.match(message.content)
        if remember:
            action, memory = self.book.add(remember["what"], "fact", importance=0.8, reason="you asked to remember it",
                                           source_message_id=message.id, source_conversation_id=conversation_id)
            return [MemoryUpdated(action, memory.id, memory.content)]
        forget = FORGET_REQUEST.match(message.content)
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
            self.learning.queue_turn(conversation_id, messages)

    def learn(self, ask: AskJson, *, at_most: int | None = None) -> list[MemoryUpdated]:
        """Let the model decide what the finished turns teach about the user (ADD / SUPERSEDE / NONE),
        after summarising the turns that left the context.

        Run when the user is not waiting (after a reply, when idle). With "ask before remembering"
        on, what it decides goes to the inbox instead of memory. `at_most` bounds the turns and
        summaries handled (one model call each), so the caller can serve the user in between;
        the rest waits for the next call (`learning_pending`).
        """
        return self.learning.learn(ask, propose=self.ask_before_remembering, at_most=at_most)

    @property
    def learning_pending(self) -> bool:
        return self.learning.pending

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
            self.learning.queue_summary(conversation_id, messages)

    def conversation_finished(self, conversation_id: str) -> None:
        """The user left the conversation: `learn` summarises what was not summarised yet."""
        if not self._enabled(conversation_id):
            return
        leaf = self.store.conversation(conversation_id).current_leaf_id
        self.learning.queue_unsummarised(conversation_id, self.store.branch(leaf))


def _describe(item: RecalledItem) -> str:
    date = time.strftime("%Y-%m-%d", time.localtime(item.created_at))
    if item.kind == "memory":
        return f"remembered {date}"
    return f"{'you' if item.role == 'user' else 'Cleo'} said on {date} in another chat"
