"""The assistant facade: one call per turn, a stream of events back.

`Assistant.turn(conversation_id, user_text)` stores the user's message, builds the prompt
(instructions, pinned memories, the conversation, recalled context next to the new message),
streams the reply through llama.cpp and stores it. `regenerate` and `edit` are turns on a new
branch; the old reply or message stays. It runs on one worker thread (it owns the model,
docs/ARCHITECTURE.md decision 2); `stop()` may be called from any thread.

Memory is a collaborator (`TurnMemory`): `engine.memory.turn_memory.LongTermMemory` on
the database, or `NoMemory`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.chat.conversation import ConversationStore, InMemoryConversationStore, Message
from engine.chat.kv_cache import SnapshotCache, common_prefix
from engine.chat.model import ChatModel
from engine.chat.prompt import build_prompt
from engine.errors import InternalError, KnownError
from engine.events import (
    Done,
    Event,
    Failed,
    MemoryUpdated,
    Notice,
    Recalled,
    RecalledItem,
    Recollection,
    Started,
    Token,
    Usage,
)
from engine.paths import folders
from engine.runtime.chat_model import ReplyStats
from engine.runtime.sampling import Sampling
from engine.settings import Settings

log = logging.getLogger(__name__)

# A turn's events; closing it early (the window went away) keeps the reply so far, as stopped.
Turn = Generator[Event, None, None]

_FLUSH_SECONDS = 1.0  # a streaming reply is saved at least this often (docs/ARCHITECTURE.md decision 4)


class TurnMemory(Protocol):
    """What the assistant asks of memory on each turn."""

    def pinned_block(self, conversation_id: str) -> str:
        """What Cleo knows about the user, placed after the system prompt; should change rarely."""
        ...

    def context_for(self, conversation_id: str, user_text: str) -> Recollection:
        """Recalled items for this message, placed just before it."""
        ...

    def on_user_message(self, conversation_id: str, message: Message) -> list[MemoryUpdated]:
        """A new message from the user; explicit "remember that …" requests are handled here."""
        ...

    def after_turn(self, conversation_id: str, messages: Sequence[Message]) -> None:
        """The turn's messages are stored; memory may index them or learn from them."""
        ...

    def on_evict(self, conversation_id: str, messages: Sequence[Message]) -> None:
        """Turns that no longer fit in the context; memory may summarise them."""
        ...

    def on_recalled(self, reply_id: str, items: Sequence[RecalledItem]) -> None:
        """What `context_for` added to this reply's prompt; memory may keep it ("Why this answer")."""
        ...

    def learn(self, ask: Callable[[list[dict[str, str]], dict[str, Any]], Any], *,
              at_most: int | None = None) -> list[MemoryUpdated]:
        """Learn from finished turns with the model (`ask` gets a chat and a JSON schema), at most
        `at_most` model calls' worth; the rest stays pending."""
        ...

    @property
    def learning_pending(self) -> bool:
        """Whether `learn` has work left."""
        ...

    def conversation_finished(self, conversation_id: str) -> None:
        """The user left this conversation (switched away, closed it)."""
        ...


class NoMemory:
    """Remembers nothing; the stand-in when there is no database."""

    def pinned_block(self, conversation_id: str) -> str:
        return ""

    def context_for(self, conversation_id: str, user_text: str) -> Recollection:
        return Recollection()

    def on_user_message(self, conversation_id: str, message: Message) -> list[MemoryUpdated]:
        return []

    def after_turn(self, conversation_id: str, messages: Sequence[Message]) -> None:
        pass

    def on_evict(self, conversation_id: str, messages: Sequence[Message]) -> None:
        pass

    def on_recalled(self, reply_id: str, items: Sequence[RecalledItem]) -> None:
        pass

    def learn(self, ask: Callable[[list[dict[str, str]], dict[str, Any]], Any], *,
              at_most: int | None = None) -> list[MemoryUpdated]:
        return []

    @property
    def learning_pending(self) -> bool:
        return False

    def conversation_finished(self, conversation_id: str) -> None:
        pass


class EmptyMessage(KnownError):
    """The user sent nothing."""


@dataclass(frozen=True)
class TurnOptions:
    sampling: Sampling | None = None  # None: from the settings
    system_prompt: str | None = None  # None: the conversation's own, else the settings'


def sampling_from(settings: Settings) -> Sampling:
    return Sampling(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                    min_p=settings.min_p, repeat_penalty=settings.repeat_penalty,
                    max_tokens=settings.max_tokens, seed=settings.seed)


class Assistant:
    def __init__(
        self,
        model: ChatModel,
        settings: Settings,
        *,
        store: ConversationStore | None = None,
        memory: TurnMemory | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.store: ConversationStore = store or InMemoryConversationStore()
        self.memory: TurnMemory = memory or NoMemory()
        self._stop = threading.Event()
        self._snapshots = SnapshotCache(settings.kv_cache_budget_mb * 1024 * 1024)
        self._cache_owner: str | None = None  # whose conversation the model's cache holds
        self._evicted: dict[str, set[str]] = {}  # message ids out of the context, per conversation
        self._load_notices = list(model.notices)  # shown with the next reply

    def new_conversation(self, title: str = "", system_prompt: str | None = None) -> str:
        return self.store.create_conversation(title, system_prompt).id

    def stop(self) -> None:
        """End the reply being generated (within one token); safe from any thread."""
        self._stop.set()

    def finish(self, conversation_id: str) -> None:
        """The user left the conversation; the next `learn` summarises it for episodic memory."""
        self.memory.conversation_finished(conversation_id)

    def learn(self, *, at_most: int | None = None) -> list[MemoryUpdated]:
        """Let memory learn from the turns since the last call; run it when the user is not waiting.
        `at_most` bounds the model calls; `learning_pending` tells whether work is left."""
        return self.memory.learn(self.ask_json, at_most=at_most)

    @property
    def learning_pending(self) -> bool:
        return self.memory.learning_pending

    def ask_json(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
        """A side question to the model, answered as JSON following `schema`. The conversation's
        cache is set aside first (`set_cache_aside`)."""
        self.set_cache_aside()
        return self.model.complete_json(messages, schema)

    def set_cache_aside(self) -> None:
        """Keep the model's cache of the conversation it holds, like switching chats, before the model
        is used for anything else (a side question, a local API request): that conversation's next
        turn restores it instead of reading its whole prompt again. On the model's thread."""
        if self._cache_owner is not None and self.model.cached_tokens:
            self._snapshots.put(self._cache_owner, self.model.snapshot())
        self._cache_owner = None

    def use_model(self, model: ChatModel, settings: Settings) -> None:
        """Switch to `model`, already loaded (a failed load leaves the current one serving)."""
        self.model.close()
        self.model, self.settings = model, settings
        self._snapshots = SnapshotCache(settings.kv_cache_budget_mb * 1024 * 1024)  # caches are per model
        self._cache_owner = None
        self._load_notices = list(model.notices)

    def turn(self, conversation_id: str, user_text: str, options: TurnOptions | None = None,
             stop: threading.Event | None = None) -> Turn:
        """Reply to `user_text` as the next message on the conversation's current branch."""
        def user_message() -> Message:
            if not user_text.strip():
                raise EmptyMessage("The message is empty.", hint="Type something to send.")
            leaf = self.store.conversation(conversation_id).current_leaf_id
            return self.store.add_message(conversation_id, "user", user_text, leaf)
        return self._run(conversation_id, user_message, options, stop)

    def regenerate(self, conversation_id: str, reply_id: str | None = None,
                   options: TurnOptions | None = None, stop: threading.Event | None = None) -> Turn:
        """A new alternative to a reply (default: the current one); the old reply is kept."""
        def user_message() -> Message:
            reply = self.store.message(reply_id or self.store.conversation(conversation_id).current_leaf_id or "")
            if reply.role != "assistant" or reply.parent_id is None:
                raise KnownError("Only a reply can be regenerated.", hint="Pick one of Cleo's replies.")
            return self.store.message(reply.parent_id)
        return self._run(conversation_id, user_message, options, stop)

    def edit(self, conversation_id: str, message_id: str, new_text: str,
             options: TurnOptions | None = None, stop: threading.Event | None = None) -> Turn:
        """Replace a user message on a new branch and reply to it; the old branch is kept."""
        def user_message() -> Message:
            old = self.store.message(message_id)
            if old.role != "user":
                raise KnownError("Only your own messages can be edited.", hint="Pick a message you wrote.")
            if not new_text.strip():
                raise EmptyMessage("The edited message is empty.", hint="Type something to send.")
            return self.store.add_message(conversation_id, "user", new_text, old.parent_id)
        return self._run(conversation_id, user_message, options, stop)

    def _run(self, conversation_id: str, user_message: Callable[[], Message],
             options: TurnOptions | None, stop: threading.Event | None) -> Turn:
        """`stop`, when given, is this turn's own (a queued turn's ticket); else `stop()` ends it."""
        if stop is None:
            stop = self._stop = threading.Event()
        else:
            self._stop = stop
        reply: Message | None = None
        parts: list[str] = []
        failure: KnownError | InternalError | None = None
        try:
            user = user_message()
            reply = self.store.add_message(conversation_id, "assistant", "", user.id, model=self.model.name)
            self.store.set_current_leaf(conversation_id, reply.id)
            yield Started(conversation_id, user.id, reply.id)
            yield from self._generate(conversation_id, user, reply, parts, options or TurnOptions(), stop)
            return
        except KnownError as exc:
            failure = exc
        except Exception:
            log.exception("a turn in conversation %s failed", conversation_id)
            failure = InternalError("Something went wrong inside Cleo while replying.",
                                    hint=f"The details are in the log in {folders().logs}.")
        finally:
            if reply is not None and (failure is not None or not self.store.message(reply.id).finish_reason):
                # Keep what was written: the turn failed, or the caller stopped listening mid-reply.
                self.store.save_reply(reply.id, "".join(parts), "error" if failure is not None else "stopped")
        yield Failed(failure)

    def _generate(self, conversation_id: str, user: Message, reply: Message, parts: list[str],
                  options: TurnOptions, stop: threading.Event) -> Iterator[Event]:
        model, store = self.model, self.store
        conversation = store.conversation(conversation_id)
        for text in self._load_notices:
            yield Notice("device", text)
        self._load_notices = []
        sampling = options.sampling or sampling_from(self.settings)
        system = next(s for s in (options.system_prompt, conversation.system_prompt, self.settings.system_prompt)
                      if s is not None)
        yield from self.memory.on_user_message(conversation_id, user)
        pinned = self.memory.pinned_block(conversation_id)
        recollection = self.memory.context_for(conversation_id, user.content)
        if recollection.items:
            self.memory.on_recalled(reply.id, recollection.items)
            yield Recalled(recollection.items)
        reserve = min(sampling.max_tokens, model.context_size // 2)  # room for the reply
        evicted = self._evicted.setdefault(conversation_id, set())
        plan = build_prompt(
            model,
            instructions="\n\n".join(part for part in (system, pinned) if part),
            history=store.branch(user.parent_id),
            newest=user.content,
            context=recollection.text,
            budget=model.context_size - reserve,
            evicted_before=evicted,
        )
        yield from plan.notices
        if plan.evicted:
            evicted.update(m.id for m in plan.evicted)
            self.memory.on_evict(conversation_id, plan.evicted)
        self._use_cache_of(conversation_id, plan.tokens)

        stats = ReplyStats()
        first_token_at = last_flush = 0.0
        for text in model.stream(plan.tokens, sampling, stop, stats):
            now = time.perf_counter()
            if not parts:
                first_token_at = last_flush = now
            parts.append(text)
            yield Token(text)
            if now - last_flush >= _FLUSH_SECONDS:
                store.save_reply(reply.id, "".join(parts))
                last_flush = now
        elapsed = time.perf_counter() - first_token_at
        speed = (stats.completion_tokens - 1) / elapsed if stats.completion_tokens > 1 and elapsed > 0 else 0.0
        store.save_reply(reply.id, "".join(parts), stats.finish_reason)
        self.memory.after_turn(conversation_id, [user, store.message(reply.id)])
        yield Usage(
            prompt_tokens=stats.prompt_tokens,
            cached_tokens=stats.cached_tokens,
            completion_tokens=stats.completion_tokens,
            tokens_per_s=speed,
            context_used=stats.prompt_tokens + stats.completion_tokens,
            context_size=model.context_size,
        )
        yield Done(reply.id, stats.finish_reason)

    def _use_cache_of(self, conversation_id: str, prompt: Sequence[int]) -> None:
        """Make the model's cache the best start for `prompt`: keep it, or restore the chat's snapshot."""
        model = self.model
        if self._cache_owner == conversation_id:
            return
        if self._cache_owner is not None and model.cached_tokens:
            self._snapshots.put(self._cache_owner, model.snapshot())
        self._cache_owner = conversation_id
        snapshot = self._snapshots.get(conversation_id)
        if snapshot is None or common_prefix(snapshot.tokens, prompt) <= common_prefix(model.cached_tokens, prompt):
            return
        if not model.restore(snapshot):
            log.warning("llama.cpp refused the saved context of conversation %s; reading it again",
                            conversation_id)
