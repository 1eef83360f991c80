"""The product without Qt: one profile and one loaded model, and everything a frontend may ask of them.

The window (through its worker thread), `cleo chat` and the local API all open a `Session` and
adapt it; the rules live here: what deleting a chat forgets, which settings reload the model,
which model a chat uses, what leaving a chat does, when learning may run. Requests that change
what a frontend shows return a `Refresh` with exactly the views that changed.

A Session is used from the thread that opened it: it owns the model and the database connection.
Replies go through `turns` (engine.chat.requests), a queue the owning thread writes with `step` or
`run`, in a fair order between frontends and side by side where the model has sequences for it
(which turns may share the model is decided here); a frontend on another thread (the local API)
puts its turns there and reads their events from its ticket.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.chat.assistant import Assistant, NoMemory, Turn
from engine.chat.model import ChatModel, ModelLoader, load_llama_model, reloads
from engine.chat.requests import Step, TurnQueue, TurnTicket
from engine.errors import Busy, KnownError, ModelMissing
from engine.events import Event, Failed, MemoryUpdated
from engine.memory.turn_memory import LongTermMemory
from engine.model_choice import chat_model_path
from engine.models.catalog import read_model_info
from engine.profile import Profile, open_profile
from engine.settings import Settings, save_settings
from engine.storage.conversations import ConversationSummary, SearchHit
from engine.transfer import ImportReport
from engine.views import ConversationView, MemoryState, ModelState, Refresh

# Learning runs the model for seconds: it waits until the user has paused this long.
IDLE_BEFORE_LEARNING_S = 15.0
MEMORY_ACTIONS = ("approve", "reject", "forget", "pin", "unpin")


def open_session(settings: Settings, *, model_path: Path | None = None, database_path: Path | None = None,
                 load_model: ModelLoader = load_llama_model) -> Session:
    """Open the profile and load its chat model (`model_path`, else the settings')."""
    path = chat_model_path(settings, model_path)
    profile = open_profile(database_path)
    try:
        model = load_model(path, settings)
    except BaseException:
        profile.close()
        raise
    return Session(profile, model, settings, load_model=load_model, default_model=path)


class Session:
    def __init__(self, profile: Profile, model: ChatModel, settings: Settings, *,
                 load_model: ModelLoader = load_llama_model, clock: Callable[[], float] = time.monotonic,
                 default_model: Path | None = None) -> None:
        self.profile = profile
        self.settings = settings
        # The model of every chat without its own: the settings' (or `cleo chat --model`'s), as loaded.
        self.default_model = default_model or model.path
        self._load_model = load_model
        self._clock = clock
        self.memory = LongTermMemory(profile.book, profile.recall, profile.store,
                                     ask_before_remembering=settings.ask_before_remembering)
        self.assistant = Assistant(model, settings, store=profile.store, memory=self._memory_for(settings))
        self.turns = TurnQueue()
        self.open_conversation: str | None = None  # the chat an interactive frontend shows
        self._last_activity = clock()

    def close(self) -> None:
        """Stop every turn, leave the open chat (a temporary one is deleted) and close everything."""
        self.turns.close()
        try:
            if self.open_conversation:
                self.leave_chat(self.open_conversation)
        finally:
            self.assistant.model.close()
            self.profile.close()

    # --- chats ----------------------------------------------------------------------------------------

    def conversations(self) -> tuple[ConversationSummary, ...]:
        return tuple(self.profile.store.conversations(include_archived=True))

    def new_chat(self, *, temporary: bool = False, instructions: str = "") -> str:
        """A new chat (its id); a temporary one reads no memory and is deleted when left."""
        return self.profile.store.create_conversation(system_prompt=instructions or None, temporary=temporary).id

    def view(self, conversation_id: str) -> ConversationView:
        store = self.profile.store
        conversation = store.conversation(conversation_id)
        messages = store.branch(conversation.current_leaf_id)
        positions = store.alternative_positions(conversation_id)
        return ConversationView(conversation.id, conversation.title, tuple(messages),
                                {m.id: positions[m.id] for m in messages if m.id in positions},
                                instructions=conversation.system_prompt, model=store.chat_model(conversation_id),
                                temporary=store.is_temporary(conversation_id),
                                memory_enabled=store.memory_enabled(conversation_id),
                                why=self.memory.recalled_in(conversation_id))

    def open_chat(self, conversation_id: str) -> Refresh:
        """Show `conversation_id` ("" for a new chat); the chat shown before is left, unless a reply
        is still being written in it."""
        previous, refresh = self.open_conversation, Refresh()
        self._last_activity = self._clock()  # the user is here: learning waits
        if previous and previous != conversation_id and not self.turns.writing_in(previous):
            refresh = self.leave_chat(previous)
        self.open_conversation = conversation_id or None
        return refresh | Refresh(conversation=self.view(conversation_id)) if conversation_id else refresh

    def leave_chat(self, conversation_id: str) -> Refresh:
        """The user left the chat: a temporary one is deleted; another is summarised when Cleo learns next."""
        store = self.profile.store
        if store.is_temporary(conversation_id):
            store.close_temporary(conversation_id)
            return Refresh(conversations=self.conversations())
        self.assistant.finish(conversation_id)
        return Refresh()

    def change_chat(self, conversation_id: str, **changes: Any) -> Refresh:
        """Rename (title), pin, archive, memory on/off, instructions (system_prompt), as the store takes them."""
        self.profile.store.update_conversation(conversation_id, **changes)
        return Refresh(conversations=self.conversations())

    def rename_chat(self, conversation_id: str, title: str) -> Refresh:
        return self.change_chat(conversation_id, title=title)

    def pin_chat(self, conversation_id: str, pinned: bool = True) -> Refresh:
        return self.change_chat(conversation_id, pinned=pinned)

    def archive_chat(self, conversation_id: str, archived: bool = True) -> Refresh:
        return self.change_chat(conversation_id, archived=archived)

    def delete_chat(self, conversation_id: str, *, forget_what_was_learned: bool) -> Refresh:
        """Delete a chat, and with `forget_what_was_learned` every memory learned from it."""
        if self.turns.writing_in(conversation_id):
            raise Busy("Cleo is still replying in this chat.", hint="Stop the reply, then delete it.")
        if forget_what_was_learned:
            for memory in self.profile.book.derived_from(conversation_id):
                self.profile.book.forget(memory.id, reason="its conversation was deleted")
        self.profile.store.delete_conversation(conversation_id)
        refresh = Refresh(conversations=self.conversations(), memories=self.memory_state())
        if self.open_conversation == conversation_id:
            self.open_conversation = None
            return refresh
        return refresh | self._open_chat_again()  # its "Why this answer" may have quoted the deleted chat

    def search(self, query: str, *, limit: int = 30) -> list[SearchHit]:
        return self.profile.store.search(query, limit=limit)

    def import_chats(self, source: str, path: Path) -> tuple[ImportReport, Refresh]:
        """Add the chats of a ChatGPT ("chatgpt") or Cleo ("cleo") export, all or none; recall finds
        their messages at once. Exports go through `profile` (`export_chat`, `export_everything`)."""
        report = self.profile.import_chats(source, path)
        self.profile.book.embed_missing()
        return report, Refresh(conversations=self.conversations())

    # --- turns ------------------------------------------------------------------------------------------

    def send(self, conversation_id: str, text: str, *, frontend: str = "window", temporary: bool = False,
             instructions: str = "", show: bool = False) -> TurnTicket:
        """Reply to `text` in the chat (a new one when `conversation_id` is ""; see `new_chat`).
        `show`: the frontend shows this chat, which becomes the open one (see `open_chat`)."""
        new = not conversation_id
        conversation_id = conversation_id or self.new_chat(temporary=temporary, instructions=instructions)
        try:
            ticket = self._submit(frontend, conversation_id,
                                  lambda stop: self.assistant.turn(conversation_id, text, stop=stop))
        except Busy:
            if new:  # a chat with nothing in it, that no frontend was told about
                self.profile.store.delete_conversation(conversation_id)
            raise
        if show:
            self.open_conversation = conversation_id
        return ticket

    def regenerate(self, conversation_id: str, reply_id: str, *, frontend: str = "window") -> TurnTicket:
        """Another reply in place of `reply_id`; the old one stays as an alternative."""
        return self._submit(frontend, conversation_id,
                            lambda stop: self.assistant.regenerate(conversation_id, reply_id, stop=stop))

    def edit(self, conversation_id: str, message_id: str, text: str, *, frontend: str = "window") -> TurnTicket:
        """Replace one of the user's messages on a new branch and reply to it; the old branch stays."""
        return self._submit(frontend, conversation_id,
                            lambda stop: self.assistant.edit(conversation_id, message_id, text, stop=stop))

    def show_alternative(self, message_id: str, index: int) -> Refresh:
        """Show the `index`-th alternative (from 0) of a message and the branch under it."""
        store = self.profile.store
        message = store.alternatives(message_id)[index]
        store.set_current_leaf(message.conversation_id, store.latest_leaf(message.id))
        return Refresh(conversation=self.view(message.conversation_id))

    def step(self, seconds: float) -> Step:
        """On this Session's thread: write the queued turns for about `seconds`."""
        step = self.turns.step(seconds, self._clock)
        if step.events or step.ended:
            self._last_activity = self._clock()
        return step

    def run(self, ticket: TurnTicket) -> Iterator[Event]:
        """On this Session's thread: write turns until `ticket`'s has ended, yielding its events
        (turns queued before it, by any frontend, are written first)."""
        yield from self.turns.run(ticket, self._clock)
        self._last_activity = self._clock()

    def submit_request(self, frontend: str, request_id: str, work: Callable[[ChatModel, threading.Event], Turn],
                       *, model_path: Path | None = None, generates: bool = True) -> TurnTicket:
        """Queue work that is no chat's turn (a local API request): in its turn, on this Session's thread,
        the model at `model_path` is loaded if another is (the next chat turn loads its own back), then
        `work(model, stop)` writes the events. Any thread; `Busy` when the queue is full.

        It runs beside other turns when the loaded model is the one it wants and, if it `generates`,
        has a free sequence for it (`ChatModel.parallel`); the work then writes with `alongside`."""
        self._last_activity = self._clock()

        def turn(stop: threading.Event) -> Turn:
            if model_path is not None and model_path != self.assistant.model.path:
                try:
                    self._load(model_path, self.settings)
                except KnownError as exc:
                    yield Failed(exc)
                    return
            yield from work(self.assistant.model, stop)

        def joins(running: Sequence[TurnTicket]) -> bool:
            model = self.assistant.model
            if model_path is not None and model_path != model.path:
                return False
            return not generates or sum(t.alongside for t in running) < model.parallel
        return self.turns.submit(frontend, request_id, turn, joins, alongside=generates)

    def serve(self, until: threading.Event, *, poll_s: float = 0.2) -> None:
        """On this Session's thread: write every queued turn as it comes, until `until` is set (`cleo serve`)."""
        while not until.is_set():
            if self.turns.wait_for_work(poll_s):
                self.step(0.05)

    def _submit(self, frontend: str, conversation_id: str, start: Callable[[Any], Turn]) -> TurnTicket:
        self._last_activity = self._clock()

        def turn(stop: Any) -> Turn:
            try:
                self._use_model_of(conversation_id)  # at its start: the turn before may use another model
            except KnownError as exc:
                yield Failed(exc)
                return
            yield from start(stop)

        def joins(running: Sequence[TurnTicket]) -> bool:
            # Beside the API's requests only (the chat's cache is one sequence), with its model loaded.
            return (self.assistant.model.parallel > 0 and all(t.alongside for t in running)
                    and self._model_path_of(conversation_id) == self.assistant.model.path)
        return self.turns.submit(frontend, conversation_id, turn, joins)

    # --- memory -----------------------------------------------------------------------------------------

    def memory_state(self) -> MemoryState:
        book = self.profile.book
        return MemoryState(tuple(book.memories()), tuple(book.inbox()))

    def change_memory(self, action: str, memory_id: str) -> Refresh:
        """One of `MEMORY_ACTIONS` on a memory."""
        book = self.profile.book
        if action not in MEMORY_ACTIONS:
            raise ValueError(f"unknown memory action {action!r}")
        if action in ("pin", "unpin"):
            book.pin(memory_id, action == "pin")
        else:
            getattr(book, action)(memory_id)
        forgotten = self._open_chat_again() if action == "forget" else Refresh()  # it may be under "Why this answer"
        return forgotten | Refresh(memories=self.memory_state())

    def edit_memory(self, memory_id: str, text: str) -> Refresh:
        self.profile.book.edit(memory_id, text)
        return Refresh(memories=self.memory_state())

    def add_memory(self, text: str, kind: str = "fact") -> Refresh:
        self.profile.book.add(text, kind)
        return Refresh(memories=self.memory_state())

    # --- learning ---------------------------------------------------------------------------------------

    @property
    def learning_pending(self) -> bool:
        return self.assistant.learning_pending

    def learning_wait(self) -> float | None:
        """Seconds until learning may run (0: now), or None when there is nothing to learn."""
        if not self.learning_pending:
            return None
        return max(0.0, IDLE_BEFORE_LEARNING_S - (self._clock() - self._last_activity))

    def learn_step(self) -> list[MemoryUpdated]:
        """One model call's worth of learning, so a reply asked for meanwhile waits for one call only;
        nothing while a turn is waiting or running."""
        if self.turns.busy():
            return []
        return self.assistant.learn(at_most=1)

    # --- models and settings ----------------------------------------------------------------------------

    def model_state(self) -> ModelState:
        model = self.assistant.model
        return ModelState(model.name, str(model.path), model.device, model.context_size)

    def use_model(self, path: str) -> Refresh:
        """Chat with the model at `path` in every chat that has no model of its own."""
        self.check_idle()
        read_model_info(Path(path))  # a clear error before anything is unloaded
        settings = self.settings.updated(chat_model=path)
        self._load(Path(path), settings)  # saved only once it loaded, so a bad file cannot stop the next start
        save_settings(settings)
        self.settings, self.default_model = settings, Path(path)
        return Refresh(model=self.model_state(), settings=settings)

    def use_model_in_chat(self, conversation_id: str, path: str) -> Refresh:
        """This chat uses the model at `path` from now on; the others keep the settings' model."""
        self.check_idle()
        read_model_info(Path(path))  # a clear error before anything changes
        self.profile.store.update_conversation(conversation_id, model=path)
        loaded = self._use_model_of(conversation_id)
        return Refresh(conversation=self.view(conversation_id), model=self.model_state() if loaded else None)

    def apply_settings(self, settings: Settings) -> Refresh:
        """Save `settings` and apply them; a change in `RELOADING_SETTINGS` loads the model again,
        which waits until no reply (of any frontend) is being written; other changes apply at once."""
        reload = reloads(self.settings, settings)
        if reload:
            self.check_idle()
        self.settings = settings
        save_settings(settings)
        self.memory.ask_before_remembering = settings.ask_before_remembering
        self.assistant.memory = self._memory_for(settings)
        if not reload:
            self.assistant.settings = settings
            return Refresh(settings=settings)
        if settings.chat_model:
            self.default_model = Path(settings.chat_model)
        self._load(self.default_model, settings)
        return Refresh(model=self.model_state(), settings=settings)

    def _use_model_of(self, conversation_id: str) -> bool:
        """Load the model this chat uses (its own, else the settings') if another is loaded; whether it did."""
        wanted = self._model_path_of(conversation_id)
        if wanted == self.assistant.model.path:
            return False
        if not wanted.is_file():
            raise ModelMissing(f"This chat uses the model {wanted}, which is no longer there.",
                               hint="Choose another model for it in Models (Ctrl+L).")
        self._load(wanted, self.settings)
        return True

    def _model_path_of(self, conversation_id: str) -> Path:
        return Path(self.profile.store.chat_model(conversation_id) or str(self.default_model))

    def _load(self, path: Path, settings: Settings) -> None:
        """Load `path` and switch to it; if loading fails, the current model keeps serving."""
        self.assistant.use_model(self._load_model(path, settings), settings)

    # --- helpers ----------------------------------------------------------------------------------------

    def _memory_for(self, settings: Settings) -> LongTermMemory | NoMemory:
        # With memory off in the settings chats are still saved and searchable; nothing is recalled or learned.
        return self.memory if settings.memory_enabled else NoMemory()

    def check_idle(self, frontend: str | None = None) -> None:
        """Refuse a request that must wait while a reply (of `frontend`, or of anyone) is being written."""
        if self.turns.busy(frontend):
            raise Busy("Cleo is still writing a reply.", hint="Wait for it, or press Stop.")

    def _open_chat_again(self) -> Refresh:
        """The open chat as it is now, unless a reply is being written in it (that shows it when it ends)."""
        shown = self.open_conversation
        if shown and not self.turns.writing_in(shown):
            return Refresh(conversation=self.view(shown))
        return Refresh()
