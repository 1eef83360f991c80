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
from app.worker import EngineWorker
from engine import ConversationView, Done, Failed, MemoryUpdated, Notice, Recalled, Started, Token, Usage

if TYPE_CHECKING:
    from engine import Settings

REPAINT_MS = 50  # at most 20 repaints a second while a reply streams


class ChatController(QObject):
    # to the worker (queued: the worker lives on its own thread)
    send_requested = Signal(str, str, bool, str)
    regenerate_requested = Signal(str, str)
    edit_requested = Signal(str, str, str)
    open_requested = Signal(str)
    alternative_requested = Signal(str, int)
    change_requested = Signal(str, object)
    delete_requested = Signal(str, bool)
    search_requested = Signal(str)
    memory_action_requested = Signal(str, str)
    memory_edit_requested = Signal(str, str)
    memory_add_requested = Signal(str, str)
    models_list_requested = Signal()
    model_chosen = Signal(str)
    chat_model_chosen = Signal(str, str)
    settings_applied = Signal(object)
    import_requested = Signal(str)
    api_token_requested = Signal(bool)
    shutdown_requested = Signal()

    # to the window
    current_changed = Signal(object)  # the ConversationView shown, or None for a new chat
    busy_changed = Signal(bool)
    usage_reported = Signal(object)  # Usage
    memory_updated = Signal(object)  # MemoryUpdated: the chip in the chat
    reply_failed = Signal(object)  # KnownError or InternalError: a reply that could not be written

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
        for signal, slot in ((self.send_requested, worker.on_controller_send_requested),
                             (self.regenerate_requested, worker.on_controller_regenerate_requested),
                             (self.edit_requested, worker.on_controller_edit_requested),
                             (self.open_requested, worker.on_controller_open_requested),
                             (self.alternative_requested, worker.on_controller_alternative_requested),
                             (self.change_requested, worker.on_controller_change_requested),
                             (self.delete_requested, worker.on_controller_delete_requested),
                             (self.search_requested, worker.on_controller_search_requested),
                             (self.memory_action_requested, worker.on_controller_memory_action_requested),
                             (self.memory_edit_requested, worker.on_controller_memory_edit_requested),
                             (self.memory_add_requested, worker.on_controller_memory_add_requested),
                             (self.models_list_requested, worker.on_controller_models_list_requested),
                             (self.model_chosen, worker.on_controller_model_chosen),
                             (self.chat_model_chosen, worker.on_controller_chat_model_chosen),
                             (self.settings_applied, worker.on_controller_settings_applied),
                             (self.import_requested, worker.on_controller_import_requested),
                             (self.api_token_requested, worker.on_controller_api_token_requested),
                             (self.shutdown_requested, worker.on_controller_shutdown_requested)):
            signal.connect(slot)
        self._thread.started.connect(worker.on_thread_started)
        worker.turn_advanced.connect(self.on_worker_turn_advanced)
        worker.conversation_loaded.connect(self.on_worker_conversation_loaded)
        worker.conversation_started.connect(self.on_worker_conversation_started)
        worker.busy_changed.connect(self.on_worker_busy_changed)
        worker.model_loaded.connect(self.on_worker_model_loaded)
        view.regenerate_requested.connect(self.on_view_regenerate_requested)
        view.alternative_requested.connect(self.alternative_requested)
        self._repaint = QTimer(self)
        self._repaint.setInterval(REPAINT_MS)
        self._repaint.timeout.connect(self.on_repaint_timeout)

    def start(self) -> None:
        self._thread.start()

    def stop_thread(self, timeout_ms: int = 30_000) -> None:
        """Close the engine on its thread (a temporary chat is deleted); the thread ends once it has.
        The wait covers a learning step under way (one model call)."""
        if self._thread.isRunning():
            self.worker.stop_reply()
            self.shutdown_requested.emit()
            self._thread.wait(timeout_ms)

    # --- intents ----------------------------------------------------------------------------------------

    def send(self, text: str) -> bool:
        """Send `text` in the open chat; False (nothing sent) when it is blank, a reply is running or no
        model is loaded."""
        if not text.strip() or self.busy or not self.ready:
            return False
        self.view.append_user_message(text)
        self.send_requested.emit(self.current, text, self.new_chat_temporary, self.new_chat_instructions)
        return True

    def stop(self) -> None:
        self.worker.stop_reply()

    @Slot(str)
    def on_view_regenerate_requested(self, reply_id: str) -> None:
        self.regenerate(reply_id)

    def regenerate(self, reply_id: str) -> None:
        if self.current and not self.busy:
            self.regenerate_requested.emit(self.current, reply_id)

    def edit(self, message_id: str, text: str) -> None:
        if self.current and text.strip() and not self.busy:
            self.edit_requested.emit(self.current, message_id, text)

    def open(self, conversation_id: str) -> None:
        self.current = conversation_id
        self.new_chat_temporary = False
        self.new_chat_instructions = ""
        if not conversation_id:
            self.view.show_conversation(None)
            self.current_changed.emit(None)
        self.open_requested.emit(conversation_id)

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
        self.change_requested.emit(conversation_id, changes)

    def delete_conversation(self, conversation_id: str, *, forget_its_memories: bool) -> None:
        if conversation_id == self.current:
            self.open("")
        self.delete_requested.emit(conversation_id, forget_its_memories)

    def search(self, query: str) -> None:
        self.search_requested.emit(query)

    def memory_action(self, action: str, memory_id: str) -> None:
        self.memory_action_requested.emit(action, memory_id)

    def edit_memory(self, memory_id: str, text: str) -> None:
        self.memory_edit_requested.emit(memory_id, text)

    def add_memory(self, text: str, kind: str = "fact") -> None:
        self.memory_add_requested.emit(text, kind)

    def list_models(self) -> None:
        self.models_list_requested.emit()

    def use_model(self, path: str) -> None:
        self.model_chosen.emit(path)

    def use_model_in_chat(self, path: str) -> None:
        if self.current:
            self.chat_model_chosen.emit(self.current, path)

    def apply_settings(self, settings: Settings) -> None:
        self.settings_applied.emit(settings)

    def import_chats(self, path: str) -> None:
        """Add the chats of a ChatGPT or Cleo export; the sidebar shows them once they are saved."""
        self.import_requested.emit(path)

    def request_api_token(self, *, renew: bool = False) -> None:
        """The local API's token comes back from the worker (`api_token_ready`); `renew` makes a new one."""
        self.api_token_requested.emit(renew)

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
    def on_worker_conversation_started(self, conversation_id: str) -> None:
        if self.current == "":
            self.current = conversation_id

    @Slot(object)
    def on_worker_model_loaded(self, _: object) -> None:
        self.ready = True

    @Slot(bool)
    def on_worker_busy_changed(self, busy: bool) -> None:
        self.busy = busy
        self.busy_changed.emit(busy)

    @Slot(object)
    def on_worker_conversation_loaded(self, view: ConversationView) -> None:
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
        self.current_changed.emit(view)

    @Slot(str, object)
    def on_worker_turn_advanced(self, conversation_id: str, event: object) -> None:
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
            self.memory_updated.emit(event)
        elif isinstance(event, Usage):
            self.usage_reported.emit(event)
        elif isinstance(event, Done | Failed):
            self._paint()
            self._repaint.stop()
            if shown:
                self.view.end_reply()
            # a turn that failed before it started (its chat's model is gone) wrote nothing
            self._just_written = (conversation_id, self._text) if self._streaming is not None else None
            self._streaming = None
            if isinstance(event, Failed):
                self.reply_failed.emit(event.error)

    @Slot()
    def on_repaint_timeout(self) -> None:
        self._paint()

    def _paint(self) -> None:
        if self._dirty and self._streaming is not None and self._streaming[0] == self.current:
            self.view.update_reply(self._text)
        self._dirty = False
