"""Between the window and the engine's thread: intents go out as queued signals, events come back.

The controller knows which chat the window shows and which chat a reply streams into; they can
differ (the user switched chats mid-reply), so every event is routed by its conversation id.
Tokens are merged and painted at most every 50 ms, however fast the model writes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from app.chat_view import ChatView
from app.worker import ConversationView, EngineWorker
from engine.events import Done, Failed, MemoryUpdated, Notice, Recalled, Started, Token, Usage

if TYPE_CHECKING:
    from engine.settings import Settings

REPAINT_MS = 50  # at most 20 repaints a second while a reply streams


class ChatController(QObject):
    # to the worker (queued: the worker lives on its own thread)
    _send = Signal(str, str, bool, str)
    _regenerate = Signal(str, str)
    _edit = Signal(str, str, str)
    _open = Signal(str)
    _alternative = Signal(str, int)
    _change = Signal(str, object)
    _delete = Signal(str, bool)
    _search = Signal(str)
    _memory_action = Signal(str, str)
    _memory_edit = Signal(str, str)
    _memory_add = Signal(str, str)
    _list_models = Signal()
    _use_model = Signal(str)
    _use_model_in_chat = Signal(str, str)
    _apply_settings = Signal(object)
    _shutdown = Signal()

    # to the window
    currentChanged = Signal(object)  # the ConversationView shown, or None for a new chat
    busyChanged = Signal(bool)
    usage = Signal(object)  # Usage
    memoryUpdated = Signal(object)  # MemoryUpdated: the chip in the chat
    failed = Signal(object)  # KnownError: a reply that could not be written

    def __init__(self, worker: EngineWorker, view: ChatView) -> None:
        super().__init__()
        self.worker = worker
        self.view = view
        self.current: str = ""  # the conversation shown; "" is a new chat not yet sent
        self.new_chat_temporary = False
        self.new_chat_instructions = ""  # a persona's instructions for the new chat; "" for the settings'
        self.busy = False
        self.ready = False  # a model is loaded
        self._streaming: tuple[str, str] | None = None  # conversation id, reply id
        self._text = ""
        # conversation id, reply: the reply just finished, until the chat reloaded from the engine
        # (which arrives a moment later) holds it; Ctrl+Shift+C at that moment copies it all the same
        self._just_written: tuple[str, str] | None = None
        self._dirty = False
        self._thread = QThread()
        self._thread.setObjectName("cleo-engine")
        worker.moveToThread(self._thread)
        for signal, slot in ((self._send, worker.send), (self._regenerate, worker.regenerate),
                             (self._edit, worker.edit),
                             (self._open, worker.openConversation), (self._alternative, worker.showAlternative),
                             (self._change, worker.changeConversation), (self._delete, worker.deleteConversation),
                             (self._search, worker.search), (self._memory_action, worker.changeMemory),
                             (self._memory_edit, worker.editMemory), (self._memory_add, worker.addMemory),
                             (self._list_models, worker.listModels), (self._use_model, worker.useModel),
                             (self._use_model_in_chat, worker.useModelInChat),
                             (self._apply_settings, worker.applySettings), (self._shutdown, worker.shutdown)):
            signal.connect(slot)
        self._thread.started.connect(worker.start)
        worker.turnEvent.connect(self._on_event)
        worker.conversationLoaded.connect(self._on_loaded)
        worker.conversationStarted.connect(self._on_started)
        worker.busyChanged.connect(self._on_busy)
        worker.ready.connect(self._on_ready)
        view.regenerateRequested.connect(self.regenerate)
        view.alternativeRequested.connect(self._alternative)
        self._repaint = QTimer(self)
        self._repaint.setInterval(REPAINT_MS)
        self._repaint.timeout.connect(self._paint)

    def start(self) -> None:
        self._thread.start()

    def stop_thread(self, timeout_ms: int = 10_000) -> None:
        """Close the engine on its thread (a temporary chat is deleted) and end the thread."""
        if self._thread.isRunning():
            self.worker.stop_reply()
            self._shutdown.emit()
            self._thread.quit()
            self._thread.wait(timeout_ms)

    # --- intents ----------------------------------------------------------------------------------------

    def send(self, text: str) -> bool:
        """Send `text` in the open chat; False (nothing sent) when it is blank, a reply is running or no
        model is loaded."""
        if not text.strip() or self.busy or not self.ready:
            return False
        self.view.append_user_message(text)
        self._send.emit(self.current, text, self.new_chat_temporary, self.new_chat_instructions)
        return True

    def stop(self) -> None:
        self.worker.stop_reply()

    @Slot(str)
    def regenerate(self, reply_id: str) -> None:
        if self.current and not self.busy:
            self._regenerate.emit(self.current, reply_id)

    def edit(self, message_id: str, text: str) -> None:
        if self.current and text.strip() and not self.busy:
            self._edit.emit(self.current, message_id, text)

    def open(self, conversation_id: str) -> None:
        self.current = conversation_id
        self.new_chat_temporary = False
        self.new_chat_instructions = ""
        if not conversation_id:
            self.view.show_conversation(None)
            self.currentChanged.emit(None)
        self._open.emit(conversation_id)

    def new_chat(self, *, temporary: bool = False) -> None:
        self.open("")
        self.new_chat_temporary = temporary

    def use_instructions(self, instructions: str) -> None:
        """The open chat follows `instructions` from now on ("" for the settings' system prompt)."""
        if self.current:
            self.change_conversation(self.current, system_prompt=instructions or None)
        else:
            self.new_chat_instructions = instructions

    def change_conversation(self, conversation_id: str, **changes: Any) -> None:
        self._change.emit(conversation_id, changes)

    def delete_conversation(self, conversation_id: str, *, forget_its_memories: bool) -> None:
        if conversation_id == self.current:
            self.open("")
        self._delete.emit(conversation_id, forget_its_memories)

    def search(self, query: str) -> None:
        self._search.emit(query)

    def memory_action(self, action: str, memory_id: str) -> None:
        self._memory_action.emit(action, memory_id)

    def edit_memory(self, memory_id: str, text: str) -> None:
        self._memory_edit.emit(memory_id, text)

    def add_memory(self, text: str, kind: str = "fact") -> None:
        self._memory_add.emit(text, kind)

    def list_models(self) -> None:
        self._list_models.emit()

    def use_model(self, path: str) -> None:
        self._use_model.emit(path)

    def use_model_in_chat(self, path: str) -> None:
        if self.current:
            self._use_model_in_chat.emit(self.current, path)

    def apply_settings(self, settings: Settings) -> None:
        self._apply_settings.emit(settings)

    @property
    def settled(self) -> bool:
        """No reply is being written, and the chat on screen is the engine's copy with the last one."""
        return not self.busy and (self._just_written is None or self._just_written[0] != self.current)

    def last_reply(self) -> str:
        if self._streaming is not None and self._streaming[0] == self.current:
            return self._text
        if self._just_written is not None and self._just_written[0] == self.current:
            return self._just_written[1]
        messages = self.view.view.messages if self.view.view is not None else ()
        replies = [m.content for m in messages if m.role == "assistant"]
        return replies[-1] if replies else ""

    # --- from the worker ----------------------------------------------------------------------------------

    @Slot(str)
    def _on_started(self, conversation_id: str) -> None:
        if self.current == "":
            self.current = conversation_id

    @Slot(object)
    def _on_ready(self, _: object) -> None:
        self.ready = True

    @Slot(bool)
    def _on_busy(self, busy: bool) -> None:
        self.busy = busy
        self.busyChanged.emit(busy)

    @Slot(object)
    def _on_loaded(self, view: ConversationView) -> None:
        if self._just_written is not None and self._just_written[0] == view.id:
            self._just_written = None
        if view.id != self.current:
            return  # the user has moved on
        streaming = self._streaming is not None and self._streaming[0] == view.id
        if streaming:
            assert self._streaming is not None
            reply_id = self._streaming[1]
            view = replace(view, messages=tuple(m for m in view.messages if m.id != reply_id))
        self.view.show_conversation(view)
        if streaming:
            assert self._streaming is not None
            self.view.begin_reply(self._streaming[1])
            self.view.update_reply(self._text)
        self.currentChanged.emit(view)

    @Slot(str, object)
    def _on_event(self, conversation_id: str, event: object) -> None:
        shown = conversation_id == self.current
        if isinstance(event, Started):
            self._streaming = (conversation_id, event.reply_message_id)
            self._text, self._dirty = "", False
            if shown:
                self.view.begin_reply(event.reply_message_id)
            self._repaint.start()
        elif isinstance(event, Token):
            self._text += event.text
            self._dirty = True
        elif isinstance(event, Notice):
            if self._streaming is not None:
                self.view.notices.setdefault(self._streaming[1], []).append(event.text)
            if shown:
                self.view.append_notice(event.text)
        elif isinstance(event, Recalled):
            if self._streaming is not None:
                self.view.why[self._streaming[1]] = event.items
        elif isinstance(event, MemoryUpdated):
            self.memoryUpdated.emit(event)
        elif isinstance(event, Usage):
            self.usage.emit(event)
        elif isinstance(event, Done | Failed):
            self._paint()
            self._repaint.stop()
            if shown:
                self.view.end_reply()
            self._just_written = (conversation_id, self._text)
            self._streaming = None
            if isinstance(event, Failed):
                self.failed.emit(event.error)

    def _paint(self) -> None:
        if self._dirty and self._streaming is not None and self._streaming[0] == self.current:
            self.view.update_reply(self._text)
        self._dirty = False
