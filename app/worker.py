"""The engine's own thread: it owns every engine object, the window only sends it requests.

`EngineWorker` lives in a `QThread`. The controller calls its slots through queued signals and
hears back through its signals (DESIGN.md: data flows one way). A reply is pulled from the
engine one event at a time from the thread's event loop, so requests that arrive meanwhile
(open another chat, search, edit a memory) are served between two tokens instead of waiting for
the reply to end. `stop_reply()` is the one method called directly from the GUI thread: a
queued stop would wait behind the reply it is meant to stop.

All slots are defined here and nowhere else (FACTS.md: a slot overridden in a subclass runs in
the emitting thread).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from engine.errors import KnownError, ModelMissing

if TYPE_CHECKING:  # the engine's runtime is imported on the worker's thread, after the window shows
    from engine.assistant import Turn
    from engine.catalog import ModelInfo, Unusable
    from engine.conversations import Message
    from engine.events import RecalledItem
    from engine.memory import MemoryRecord
    from engine.session import Cleo
    from engine.settings import Settings
    from engine.store import ConversationSummary

log = logging.getLogger(__name__)

_LEARN_WHEN_IDLE_MS = 15_000  # learning runs the model for seconds: only once the user has paused
_PUMP_SECONDS = 0.02  # events passed on per turn of the event loop, at most this long


@dataclass(frozen=True)
class ModelState:
    """What the status line shows about the loaded model."""

    name: str
    path: str
    device: str  # "CPU", or where on the GPU
    context_size: int


@dataclass(frozen=True)
class ConversationView:
    """One conversation as the chat view shows it: the current branch, oldest first."""

    id: str
    title: str
    messages: tuple[Message, ...]
    alternatives: dict[str, tuple[int, int]] = field(default_factory=dict)  # message id -> (1-based index, count)
    instructions: str | None = None  # its own system prompt; None follows the settings
    model: str = ""  # its own model file; "" follows the settings
    temporary: bool = False
    memory_enabled: bool = True
    why: dict[str, tuple[RecalledItem, ...]] = field(default_factory=dict)  # reply id -> what memory added


@dataclass(frozen=True)
class MemoryState:
    remembered: tuple[MemoryRecord, ...]
    inbox: tuple[MemoryRecord, ...]


@dataclass(frozen=True)
class ModelList:
    models: tuple[ModelInfo, ...]
    unusable: tuple[Unusable, ...]


class EngineWorker(QObject):
    ready = Signal(object)  # ModelState
    startFailed = Signal(object)  # KnownError: Cleo cannot chat until the user fixes it
    conversationsChanged = Signal(object)  # list[ConversationSummary]
    conversationLoaded = Signal(object)  # ConversationView
    conversationStarted = Signal(str)  # a new chat got its id: the one being written in the window
    turnEvent = Signal(str, object)  # conversation id, an engine event
    busyChanged = Signal(bool)  # a reply is being generated
    searchFinished = Signal(str, object)  # query, list[SearchHit]
    memoriesChanged = Signal(object)  # MemoryState
    modelsListed = Signal(object)  # ModelList
    settingsChanged = Signal(object)  # Settings
    knownError = Signal(object)  # KnownError: shown to the user
    bug = Signal(str)  # a traceback: logged, reported, and Cleo keeps running

    def __init__(self, settings: Settings, *, opener: Callable[[Settings], Cleo] | None = None) -> None:
        super().__init__()
        self.settings = settings
        self._opener = opener
        self.cleo: Cleo | None = None
        self._turn: tuple[str, Turn] | None = None
        self._open_conversation: str | None = None
        self._learn_timer: QTimer | None = None

    # --- called from the GUI thread ----------------------------------------------------------------

    def stop_reply(self) -> None:
        """Stop the reply being generated, within one token; safe from any thread."""
        if self.cleo is not None:
            self.cleo.assistant.stop()

    # --- slots: run on the worker's thread -----------------------------------------------------------

    @Slot()
    def start(self) -> None:
        self._learn_timer = QTimer(self)
        self._learn_timer.setSingleShot(True)
        self._learn_timer.timeout.connect(self._learn)
        self._open()

    def _open(self) -> None:
        # Importing the engine (llama.cpp, numpy, SQLite) takes ~0.3 s: here, not before the first paint.
        from engine.session import open_cleo

        try:
            self.cleo = (self._opener or open_cleo)(self.settings)
        except KnownError as exc:
            self.startFailed.emit(exc)
            return
        except Exception:
            self._report_bug()
            return
        self.ready.emit(self._model_state())
        self._list_conversations()
        self._list_memories()
        if self.cleo.assistant.learning_pending:  # what the last session did not get to
            self._learn_when_idle()

    @Slot(str, str, bool, str)
    def send(self, conversation_id: str, text: str, temporary: bool, instructions: str) -> None:
        """Send `text`; with no `conversation_id`, in a new chat that follows `instructions` ("" for the default)."""
        def start(cleo: Cleo) -> None:
            cid = conversation_id
            if not cid:
                cid = cleo.memories.store.create_conversation(system_prompt=instructions or None,
                                                              temporary=temporary).id
                self.conversationStarted.emit(cid)
            self._open_conversation = cid
            self._switch_model_for(cleo, cid)
            self._run(cid, cleo.assistant.turn(cid, text))
        self._guarded(start, needs_idle=True)

    @Slot(str, str)
    def regenerate(self, conversation_id: str, reply_id: str) -> None:
        def start(cleo: Cleo) -> None:
            self._switch_model_for(cleo, conversation_id)
            self._run(conversation_id, cleo.assistant.regenerate(conversation_id, reply_id))
        self._guarded(start, needs_idle=True)

    @Slot(str, str, str)
    def edit(self, conversation_id: str, message_id: str, text: str) -> None:
        def start(cleo: Cleo) -> None:
            self._switch_model_for(cleo, conversation_id)
            self._run(conversation_id, cleo.assistant.edit(conversation_id, message_id, text))
        self._guarded(start, needs_idle=True)

    @Slot(str)
    def openConversation(self, conversation_id: str) -> None:
        def open_it(cleo: Cleo) -> None:
            previous = self._open_conversation
            if previous and previous != conversation_id and not self._streaming(previous):
                self._leave(cleo, previous)
            self._open_conversation = conversation_id or None
            if conversation_id:
                self.conversationLoaded.emit(self._view(cleo, conversation_id))
        self._guarded(open_it)

    @Slot(str, int)
    def showAlternative(self, message_id: str, index: int) -> None:
        """Show the `index`-th alternative (from 0) of the message `message_id` and the branch under it."""
        def show(cleo: Cleo) -> None:
            store = cleo.memories.store
            message = store.alternatives(message_id)[index]
            store.set_current_leaf(message.conversation_id, store.latest_leaf(message.id))
            self.conversationLoaded.emit(self._view(cleo, message.conversation_id))
        self._guarded(show, needs_idle=True)

    @Slot(str, object)
    def changeConversation(self, conversation_id: str, changes: dict[str, Any]) -> None:
        """Rename, pin, archive, memory on/off: `changes` as `update_conversation` takes them."""
        def change(cleo: Cleo) -> None:
            cleo.memories.store.update_conversation(conversation_id, **changes)
            self._list_conversations()
        self._guarded(change)

    @Slot(str, bool)
    def deleteConversation(self, conversation_id: str, forget_its_memories: bool) -> None:
        def delete(cleo: Cleo) -> None:
            if self._streaming(conversation_id):
                raise ConversationBusy("Cleo is still replying in this chat.", hint="Stop the reply, then delete it.")
            if forget_its_memories:
                for memory in cleo.memories.book.derived_from(conversation_id):
                    cleo.memories.book.forget(memory.id, reason="its conversation was deleted")
            cleo.memories.store.delete_conversation(conversation_id)
            if self._open_conversation == conversation_id:
                self._open_conversation = None
            else:  # the open chat's "Why this answer" may have quoted the deleted chat
                self._show_open_again(cleo)
            self._list_conversations()
            self._list_memories()
        self._guarded(delete)

    @Slot(str)
    def search(self, query: str) -> None:
        self._guarded(lambda cleo: self.searchFinished.emit(query, cleo.memories.store.search(query, limit=30)))

    # memories

    @Slot(str, str)
    def changeMemory(self, action: str, memory_id: str) -> None:
        """`action`: "approve", "reject", "forget", "pin", "unpin"."""
        def change(cleo: Cleo) -> None:
            book = cleo.memories.book
            if action == "approve":
                book.approve(memory_id)
            elif action == "reject":
                book.reject(memory_id)
            elif action == "forget":
                book.forget(memory_id)
                self._show_open_again(cleo)
            elif action in ("pin", "unpin"):
                book.pin(memory_id, action == "pin")
            else:
                raise ValueError(f"unknown memory action {action!r}")
            self._list_memories()
        self._guarded(change)

    @Slot(str, str)
    def editMemory(self, memory_id: str, text: str) -> None:
        def edit(cleo: Cleo) -> None:
            cleo.memories.book.edit(memory_id, text)
            self._list_memories()
        self._guarded(edit)

    @Slot(str, str)
    def addMemory(self, text: str, kind: str) -> None:
        def add(cleo: Cleo) -> None:
            cleo.memories.book.add(text, kind)
            self._list_memories()
        self._guarded(add)

    # models and settings

    @Slot()
    def listModels(self) -> None:
        def scan(cleo: Cleo | None) -> None:
            from engine.catalog import ModelCatalog

            models, unusable = ModelCatalog([Path(p) for p in self.settings.model_folders]).scan()
            self.modelsListed.emit(ModelList(tuple(models), tuple(unusable)))
        self._guarded(scan, needs_cleo=False)

    @Slot(str)
    def useModel(self, path: str) -> None:
        """Chat with the model at `path` by default; also how Cleo starts after its model failed to load."""
        def use(cleo: Cleo | None) -> None:
            from engine.catalog import read_model_info

            read_model_info(Path(path))  # a clear error before anything is unloaded
            if cleo is None:
                self._store_settings(self.settings.updated(chat_model=path))
                self._open()
                return
            cleo.assistant.load_model(Path(path), settings=self.settings.updated(chat_model=path))
            self._store_settings(cleo.assistant.settings)
            self.ready.emit(self._model_state())
        self._guarded(use, needs_cleo=False, needs_idle=True)

    @Slot(str, str)
    def useModelInChat(self, conversation_id: str, path: str) -> None:
        """This chat uses the model at `path` from now on; the others keep the settings' model."""
        def use(cleo: Cleo) -> None:
            from engine.catalog import read_model_info

            read_model_info(Path(path))  # a clear error before anything changes
            cleo.memories.store.update_conversation(conversation_id, model=path)
            self._switch_model_for(cleo, conversation_id)
            self.conversationLoaded.emit(self._view(cleo, conversation_id))
        self._guarded(use, needs_idle=True)

    @Slot(object)
    def applySettings(self, settings: Settings) -> None:
        def apply(cleo: Cleo | None) -> None:
            from engine.assistant import NoMemory

            old = self.settings
            self._store_settings(settings)
            if cleo is None:
                return
            runtime = ("chat_model", "context_size", "threads", "gpu_layers", "kv_cache_budget_mb")
            if any(getattr(old, name) != getattr(settings, name) for name in runtime):
                path = Path(settings.chat_model) if settings.chat_model else cleo.assistant.model.path
                cleo.assistant.load_model(path, settings=settings)
                self.ready.emit(self._model_state())
            else:
                cleo.assistant.settings = settings
            cleo.hooks.ask_before_remembering = settings.ask_before_remembering
            cleo.assistant.memory = cleo.hooks if settings.memory_enabled else NoMemory()
        self._guarded(apply, needs_cleo=False, needs_idle=True)

    @Slot()
    def shutdown(self) -> None:
        """The window is closing: leave the open chat (a temporary one is deleted) and close everything."""
        if self._learn_timer is not None:  # a timer must die on its own thread
            self._learn_timer.stop()
            self._learn_timer.setParent(None)
            self._learn_timer = None
        if self._turn is not None:
            self._turn[1].close()  # keeps the partial reply, as stopped
            self._turn = None
        if self.cleo is not None:
            try:
                if self._open_conversation:
                    self._leave(self.cleo, self._open_conversation)
            except Exception:
                log.exception("leaving the open chat failed")
            self.cleo.close()
            self.cleo = None

    # --- the reply pump ----------------------------------------------------------------------------------

    def _run(self, conversation_id: str, turn: Turn) -> None:
        if self._learn_timer is not None:
            self._learn_timer.stop()
        self._turn = (conversation_id, turn)
        self.busyChanged.emit(True)
        QTimer.singleShot(0, self._pump)

    def _pump(self) -> None:
        if self._turn is None:
            return
        conversation_id, turn = self._turn
        deadline = time.monotonic() + _PUMP_SECONDS
        try:
            while time.monotonic() < deadline:
                self.turnEvent.emit(conversation_id, next(turn))
        except StopIteration:
            self._end_turn(conversation_id)
            return
        except Exception:
            self._turn = None
            self.busyChanged.emit(False)
            self._report_bug()
            return
        QTimer.singleShot(0, self._pump)

    def _end_turn(self, conversation_id: str) -> None:
        self._turn = None
        self.busyChanged.emit(False)
        if self.cleo is not None:
            self._list_conversations()
            if self._open_conversation == conversation_id:
                self.conversationLoaded.emit(self._view(self.cleo, conversation_id))
        self._learn_when_idle()

    def _learn_when_idle(self) -> None:
        if self._learn_timer is not None:
            self._learn_timer.start(_LEARN_WHEN_IDLE_MS)

    def _learn(self) -> None:
        """One model call's worth of learning per visit to the event loop, so a message the user
        sends meanwhile is answered after at most one; what is left resumes once they are idle."""
        if self.cleo is None or self._turn is not None:
            return
        try:
            updates = self.cleo.assistant.learn(at_most=1)
        except KnownError as exc:
            log.warning("learning from the last turns failed: %s", exc.message)
            return
        except Exception:
            self._report_bug()
            return
        if updates:
            for update in updates:
                self.turnEvent.emit(self._open_conversation or "", update)
            self._list_memories()
        if self.cleo.assistant.learning_pending:
            QTimer.singleShot(0, self._learn)

    # --- helpers ----------------------------------------------------------------------------------------

    def _guarded(self, action: Callable[[Any], None], *, needs_cleo: bool = True, needs_idle: bool = False) -> None:
        """Run `action(cleo)`: a known error goes to the user, a bug to the log and the report."""
        try:
            if needs_cleo and self.cleo is None:
                raise NotReady("Cleo has not finished starting.", hint="Wait a moment, or see the message shown "
                                                                      "when it started.")
            if needs_idle and self._turn is not None:
                raise ConversationBusy("Cleo is still writing a reply.", hint="Wait for it, or press Stop.")
            action(self.cleo)
        except KnownError as exc:
            self.knownError.emit(exc)
        except Exception:
            self._report_bug()

    def _report_bug(self) -> None:
        log.exception("bug in the engine worker")
        self.bug.emit(traceback.format_exc())

    def _show_open_again(self, cleo: Cleo) -> None:
        """After memories were forgotten or a chat deleted: their text must not stay on screen under
        "Why this answer"."""
        if self._open_conversation and not self._streaming(self._open_conversation):
            self.conversationLoaded.emit(self._view(cleo, self._open_conversation))

    def _streaming(self, conversation_id: str) -> bool:
        return self._turn is not None and self._turn[0] == conversation_id

    def _leave(self, cleo: Cleo, conversation_id: str) -> None:
        store = cleo.memories.store
        if store.is_temporary(conversation_id):
            store.close_temporary(conversation_id)
            self._list_conversations()
        else:
            cleo.assistant.finish(conversation_id)  # may leave a summary to write
            if self._turn is None:
                self._learn_when_idle()

    def _switch_model_for(self, cleo: Cleo, conversation_id: str) -> None:
        """Load the model this chat uses (its own, else the settings') if another one is loaded."""
        from engine.session import chat_model_path

        wanted = cleo.memories.store.chat_model(conversation_id) or str(chat_model_path(self.settings))
        if Path(wanted) == cleo.assistant.model.path:
            return
        if not Path(wanted).is_file():
            raise ModelMissing(f"This chat uses the model {wanted}, which is no longer there.",
                               hint="Choose another model for it in Models (Ctrl+L).")
        cleo.assistant.load_model(Path(wanted), settings=self.settings)
        self.ready.emit(self._model_state())

    def _model_state(self) -> ModelState:
        assert self.cleo is not None
        model = self.cleo.assistant.model
        return ModelState(model.name, str(model.path), model.device, model.context_size)

    def _view(self, cleo: Cleo, conversation_id: str) -> ConversationView:
        store = cleo.memories.store
        conversation = store.conversation(conversation_id)
        messages = store.branch(conversation.current_leaf_id)
        positions = store.alternative_positions(conversation_id)
        alternatives = {m.id: positions[m.id] for m in messages if m.id in positions}
        return ConversationView(conversation.id, conversation.title, tuple(messages), alternatives,
                                instructions=conversation.system_prompt, model=store.chat_model(conversation_id),
                                temporary=store.is_temporary(conversation_id),
                                memory_enabled=store.memory_enabled(conversation_id),
                                why=cleo.hooks.recalled_in(conversation_id))

    def _list_conversations(self) -> None:
        if self.cleo is not None:
            summaries: list[ConversationSummary] = self.cleo.memories.store.conversations(include_archived=True)
            self.conversationsChanged.emit(summaries)

    def _list_memories(self) -> None:
        if self.cleo is not None:
            book = self.cleo.memories.book
            self.memoriesChanged.emit(MemoryState(tuple(book.memories()), tuple(book.inbox())))

    def _store_settings(self, settings: Settings) -> None:
        from engine.settings import save_settings

        save_settings(settings)
        self.settings = settings
        self.settingsChanged.emit(settings)


class NotReady(KnownError):
    """A request arrived before the engine was open."""


class ConversationBusy(KnownError):
    """A request that must wait for the reply being generated."""
