"""The engine's own thread: a thin Qt adapter over the engine's `Session`.

`EngineWorker` lives in a `QThread` and owns the Session (which owns the model: one thread). The
controller calls its slots through queued signals; each slot asks the Session and emits what it
returns, the rules stay in the Session. Replies are written a slice at a time from the thread's
event loop, so requests that arrive meanwhile (open another chat, search, edit a memory) are
served between two tokens. `stop_reply()` is the one method called directly from the GUI
thread: a queued stop would wait behind the reply it is meant to stop.

The worker also starts, changes and stops the local API (`app.local_api.ApiSwitch`) here, on the
Session's thread, as the settings say: its requests are turns in the Session's queue, which this
thread writes with the window's (`_work_arrived` wakes it when another frontend queues one).

All slots are defined here and nowhere else (a slot overridden in a subclass runs in the emitting
thread, even through a queued connection).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from app.local_api import ApiSwitch
from engine import KnownError, NotReady, Refresh

if TYPE_CHECKING:  # the engine's runtime is imported on the worker's thread, after the window shows
    from engine import ModelState, Session, Settings, TurnTicket

log = logging.getLogger(__name__)

_PUMP_SECONDS = 0.02  # events passed on per turn of the event loop, at most this long
FRONTEND = "window"


class EngineWorker(QObject):
    model_loaded = Signal(object)  # ModelState
    start_failed = Signal(object)  # KnownError: Cleo cannot chat until the user fixes it
    conversations_changed = Signal(object)  # tuple[ConversationSummary, ...]
    conversation_loaded = Signal(object)  # ConversationView
    conversation_started = Signal(str)  # a new chat got its id: the one being written in the window
    turn_advanced = Signal(str, object)  # conversation id, an engine event
    busy_changed = Signal(bool)  # a reply is being written (or waiting for the model)
    search_finished = Signal(str, object)  # query, list[SearchHit]
    memories_changed = Signal(object)  # MemoryState
    models_listed = Signal(object)  # ModelList
    settings_changed = Signal(object)  # Settings
    request_failed = Signal(object)  # KnownError: shown to the user
    bug_reported = Signal(str)  # a traceback: logged, reported, and Cleo keeps running
    chats_imported = Signal(str)  # what an import added, in words
    api_changed = Signal(str)  # where the local API listens ("127.0.0.1:8638"), or "" when it is off
    api_token_ready = Signal(str, bool)  # the local API's token, and whether it was just made
    _work_arrived = Signal()  # another frontend queued a turn, from its own thread

    def __init__(self, settings: Settings, *, opener: Callable[[Settings], Session] | None = None) -> None:
        super().__init__()
        self.settings = settings
        self._opener = opener
        self.session: Session | None = None
        self._model: ModelState | None = None  # as last shown
        self._learn_timer: QTimer | None = None
        self._pumping = False
        self._api = ApiSwitch()
        self._work_arrived.connect(self._wake)  # queued when emitted from another thread

    # --- called from the GUI thread ----------------------------------------------------------------

    def stop_reply(self) -> None:
        """Stop the window's reply being written (or waiting), within one token; safe from any thread."""
        session = self.session
        if session is not None:
            session.turns.stop(FRONTEND)

    # --- slots: run on the worker's thread -----------------------------------------------------------

    @Slot()
    def on_thread_started(self) -> None:
        self._learn_timer = QTimer(self)
        self._learn_timer.setSingleShot(True)
        self._learn_timer.timeout.connect(self._learn)
        self._open()

    @Slot(str, str, bool, str)
    def on_controller_send_requested(self, conversation_id: str, text: str, temporary: bool, instructions: str) -> None:
        """Send `text`; with no `conversation_id`, in a new chat that follows `instructions` ("" for the default)."""
        self._turn(lambda s: s.send(conversation_id, text, frontend=FRONTEND, temporary=temporary,
                                    instructions=instructions, show=True), new_chat=not conversation_id)

    @Slot(str, str)
    def on_controller_regenerate_requested(self, conversation_id: str, reply_id: str) -> None:
        self._turn(lambda s: s.regenerate(conversation_id, reply_id, frontend=FRONTEND))

    @Slot(str, str, str)
    def on_controller_edit_requested(self, conversation_id: str, message_id: str, text: str) -> None:
        self._turn(lambda s: s.edit(conversation_id, message_id, text, frontend=FRONTEND))

    @Slot(str)
    def on_controller_open_requested(self, conversation_id: str) -> None:
        self._do(lambda s: s.open_chat(conversation_id))
        self._learn_later()  # the chat left may have a summary to write

    @Slot(str, int)
    def on_controller_alternative_requested(self, message_id: str, index: int) -> None:
        self._do(lambda s: s.show_alternative(message_id, index), idle=True)

    @Slot(str, object)
    def on_controller_change_requested(self, conversation_id: str, changes: dict[str, Any]) -> None:
        """Rename, pin, archive, memory on/off, instructions: `changes` as `Session.change_chat` takes them."""
        self._do(lambda s: s.change_chat(conversation_id, **changes))

    @Slot(str, bool)
    def on_controller_delete_requested(self, conversation_id: str, forget_what_was_learned: bool) -> None:
        self._do(lambda s: s.delete_chat(conversation_id, forget_what_was_learned=forget_what_was_learned))

    @Slot(str)
    def on_controller_search_requested(self, query: str) -> None:
        self._do(lambda s: self.search_finished.emit(query, s.search(query)))

    @Slot(str, str)
    def on_controller_memory_action_requested(self, action: str, memory_id: str) -> None:
        """`action`: one of the Session's MEMORY_ACTIONS."""
        self._do(lambda s: s.change_memory(action, memory_id))

    @Slot(str, str)
    def on_controller_memory_edit_requested(self, memory_id: str, text: str) -> None:
        self._do(lambda s: s.edit_memory(memory_id, text))

    @Slot(str, str)
    def on_controller_memory_add_requested(self, text: str, kind: str) -> None:
        self._do(lambda s: s.add_memory(text, kind))

    @Slot()
    def on_controller_models_list_requested(self) -> None:
        from engine import list_models

        self._do(lambda _: self.models_listed.emit(list_models(self.settings)), needs_session=False)

    @Slot(str)
    def on_controller_model_chosen(self, path: str) -> None:
        """Chat with the model at `path` by default; also how Cleo starts after its model failed to load."""
        self._do(lambda s: s.use_model(path) if s else self._open_with(path), needs_session=False, idle=True)

    @Slot(str, str)
    def on_controller_chat_model_chosen(self, conversation_id: str, path: str) -> None:
        """This chat uses the model at `path` from now on; the others keep the settings' model."""
        self._do(lambda s: s.use_model_in_chat(conversation_id, path), idle=True)

    @Slot(object)
    def on_controller_settings_applied(self, settings: Settings) -> None:
        # Where models are looked for may change while a reply is written (a download folder chosen
        # meanwhile); any other change waits for the reply.
        others = settings.model_dump(exclude={"model_folders"}) != self.settings.model_dump(exclude={"model_folders"})
        self._do(lambda s: self._apply_settings(s, settings), needs_session=False, idle=others)

    @Slot(str)
    def on_controller_import_requested(self, path: str) -> None:
        """Add the chats of the export at `path` (ChatGPT's or Cleo's), all or none."""
        self._do(lambda s: self._import(s, Path(path)))

    @Slot(bool)
    def on_controller_api_token_requested(self, renew: bool) -> None:
        """The local API's token for the clipboard; with `renew`, a new one (the old one stops working)."""
        self._do(lambda _: self.api_token_ready.emit(self._api.token(renew=renew), renew), needs_session=False)

    @Slot()
    def on_controller_shutdown_requested(self) -> None:
        """The window is closing: the Session leaves the open chat (a temporary one is deleted) and closes;
        then the thread ends. Ending it here, not from the GUI thread, means nothing queued before this
        request can make the thread end without closing the Session."""
        try:
            self._close_session()
        finally:
            self.thread().quit()

    # --- opening --------------------------------------------------------------------------------------

    def _open(self) -> None:
        # Importing the engine (llama.cpp, numpy, SQLite) takes ~0.3 s: here, not before the first paint.
        from engine import open_session

        try:
            self.session = (self._opener or open_session)(self.settings)
        except KnownError as exc:
            self.start_failed.emit(exc)
        except Exception:
            self._report_bug()
        self._follow_api(self.settings)  # with no model yet, apps are told so until one loads
        session = self.session
        if session is None:
            return
        session.turns.on_submitted = self._work_arrived.emit
        self._show(Refresh(conversations=session.conversations(), memories=session.memory_state()))
        self._learn_later()  # what the last session did not get to

    def _open_with(self, path: str) -> Refresh:
        from engine import choose_model

        self.settings = choose_model(self.settings, path)
        self.settings_changed.emit(self.settings)
        self._open()
        return Refresh()

    # --- replies --------------------------------------------------------------------------------------

    def _turn(self, submit: Callable[[Session], TurnTicket], *, new_chat: bool = False) -> None:
        def start(session: Session) -> None:
            ticket = submit(session)
            if new_chat:
                self.conversation_started.emit(ticket.conversation_id)
            self.busy_changed.emit(True)  # the window has one reply at a time: `idle` refuses a second
            self._wake()
        self._do(start, idle=True)

    def _wake(self) -> None:
        if self._learn_timer is not None:
            self._learn_timer.stop()
        if not self._pumping:
            self._pumping = True
            QTimer.singleShot(0, self._pump)

    def _pump(self) -> None:
        session = self.session
        if session is None:
            self._pumping = False
            return
        try:
            step = session.step(_PUMP_SECONDS)  # a bug inside a turn comes back as its Failed event
            for ticket, event in step.events:
                if ticket.frontend == FRONTEND:
                    self.turn_advanced.emit(ticket.conversation_id, event)
            self._show_model(session)
            for ticket in step.ended:
                if ticket.frontend == FRONTEND:
                    self._end_turn(session, ticket)
        except Exception:  # the replies still waiting must go on, and the window must not stay busy
            self._report_bug()
            self.busy_changed.emit(session.turns.busy(FRONTEND))
        finally:
            if session.turns.busy():
                QTimer.singleShot(0, self._pump)
            else:
                self._pumping = False
                self._learn_later()

    def _end_turn(self, session: Session, ticket: TurnTicket) -> None:
        if not session.turns.busy(FRONTEND):
            self.busy_changed.emit(False)
        self.conversations_changed.emit(session.conversations())
        if session.open_conversation == ticket.conversation_id:
            self.conversation_loaded.emit(session.view(ticket.conversation_id))

    # --- learning -------------------------------------------------------------------------------------

    def _learn_later(self) -> None:
        wait = self.session.learning_wait() if self.session is not None else None
        if wait is not None and self._learn_timer is not None:
            self._learn_timer.start(int(wait * 1000))

    def _learn(self) -> None:
        """One model call's worth per visit to the event loop, so a message sent meanwhile waits for one."""
        session = self.session
        if session is None or session.turns.busy():
            return
        try:
            updates = session.learn_step()
        except KnownError as exc:
            log.warning("learning from the last turns failed: %s", exc.message)
            return
        except Exception:
            self._report_bug()
            return
        for update in updates:
            self.turn_advanced.emit(session.open_conversation or "", update)
        if updates:
            self.memories_changed.emit(session.memory_state())
        if session.learning_pending and self._learn_timer is not None:
            self._learn_timer.start(0)  # the same timer, so there is never a second chain of steps

    # --- helpers ----------------------------------------------------------------------------------------

    def _do(self, request: Callable[[Any], Refresh | None], *, needs_session: bool = True, idle: bool = False) -> None:
        """Run `request(session)` and show what it changed: a known error goes to the user, a bug to the
        log and the report. `idle`: refused while the window's reply is being written."""
        try:
            if needs_session and self.session is None:
                raise NotReady("Cleo has not finished starting.", hint="Wait a moment, or see the message shown "
                                                                      "when it started.")
            if idle and self.session is not None:
                self.session.check_idle(FRONTEND)
            refresh = request(self.session)
        except KnownError as exc:
            self.request_failed.emit(exc)
            return
        except Exception:
            self._report_bug()
            return
        if isinstance(refresh, Refresh):
            self._show(refresh)

    def _show(self, refresh: Refresh) -> None:
        if refresh.settings is not None:
            self.settings = refresh.settings
            self.settings_changed.emit(refresh.settings)
        if refresh.model is not None:
            self._model = refresh.model
            self.model_loaded.emit(refresh.model)  # even when it looks the same: it was loaded again
        elif self.session is not None:
            self._show_model(self.session)
        for value, signal in ((refresh.conversations, self.conversations_changed),
                              (refresh.conversation, self.conversation_loaded),
                              (refresh.memories, self.memories_changed)):
            if value is not None:
                signal.emit(value)

    def _show_model(self, session: Session) -> None:
        state = session.model_state()
        if state != self._model:
            self._model = state
            self.model_loaded.emit(state)

    def _apply_settings(self, session: Session | None, settings: Settings) -> None:
        from engine import keep_settings

        self._show(session.apply_settings(settings) if session else keep_settings(settings))
        self._follow_api(settings)  # once saved and shown: a port in use is told, the settings stay as chosen

    def _import(self, session: Session, path: Path) -> None:
        from app.import_chats import export_source

        report, refresh = session.import_chats(export_source(path), path)
        self._show(refresh)
        self.chats_imported.emit(f"{path.name}: {report.summary()}.")

    def _follow_api(self, settings: Settings) -> None:
        """Start, change or stop the local API as `settings` say; a port in use is the user's to fix."""
        try:
            self._api.follow(self.session, settings)
        except KnownError as exc:
            self.request_failed.emit(exc)
        except Exception:
            self._report_bug()
        self.api_changed.emit(self._api.address)

    def _close_session(self) -> None:
        if self._learn_timer is not None:  # a timer must die on its own thread
            self._learn_timer.stop()
            self._learn_timer.setParent(None)
            self._learn_timer = None
        session, self.session = self.session, None
        # Requests arriving from now on are told no model is loaded; closing the Session ends those
        # under way, so the server then stops without waiting for them.
        self._api.attach(None)
        try:
            if session is not None:
                session.close()
        finally:
            self._api.stop()

    def _report_bug(self) -> None:
        log.exception("bug in the engine worker")
        self.bug_reported.emit(traceback.format_exc())
