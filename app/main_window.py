"""Cleo's window: chats on the left, the conversation and composer in the middle, memory on the right.

The window states intents through the `ChatController` and shows what comes back; it never
touches the engine itself (it imports only the engine's public surface). Its parts live in their
own modules (sidebar, header, composer, status line, theme); this one puts them together, wires
them to the controller and the engine's worker, and owns the menus, and the window's size and last
chat, which come back at the next start.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QHBoxLayout,
    QInputDialog,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.chat_view import ChatView
from app.composer import Composer
from app.controller import ChatController
from app.header import Header
from app.memory_panel import MemoryPanel
from app.sidebar import Sidebar
from app.status_line import StatusLine
from app.theme import Theme
from app.widgets import message_box, warn
from app.worker import EngineWorker
from engine import folders

if TYPE_CHECKING:  # dialogs and the store load when first used, after the window has painted
    from app.models_dialog import ModelsDialog
    from app.settings_dialog import SettingsDialog
    from engine import (
        ConversationSummary,
        ConversationView,
        InternalError,
        KnownError,
        MemoryState,
        MemoryUpdated,
        ModelList,
        ModelState,
        SearchHit,
        Settings,
        Usage,
    )

log = logging.getLogger(__name__)

WINDOW_STATE_FILE = "window.json"


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings, worker: EngineWorker) -> None:
        super().__init__()
        self.settings = settings
        self.worker = worker
        self.setWindowTitle("Cleo")
        self.setAccessibleName("Cleo")
        self.chat = ChatView()
        self.controller = ChatController(worker, self.chat)
        self.model_state: ModelState | None = None
        self.models_dialog: ModelsDialog | None = None
        self.settings_dialog: SettingsDialog | None = None  # while it is open
        self._bug_reported = False
        self._pending_scroll = ""  # a message to show once its chat has opened
        self._last_conversation = ""  # reopened once the model is ready
        self.sidebar = Sidebar(self.controller)
        self.header = Header(self.controller, settings.personas)
        self.composer = Composer(self)
        self.send_button = QPushButton(self.tr("Send"))
        self.send_button.setAccessibleName(self.tr("Send"))
        self.send_button.setAccessibleDescription(self.tr("Send the message, or stop the reply while Cleo writes"))
        self.send_button.clicked.connect(self.on_send_button_clicked)
        self.setCentralWidget(self._columns())
        self.memory_panel = MemoryPanel()
        self.memory_dock = self._memory_dock()
        self.status_line = StatusLine()
        self.setStatusBar(self.status_line)
        self.theme = Theme(self.chat, self)
        self._menus()
        self._connect(worker)
        self.theme.apply(settings)
        self._restore_state()
        self.on_controller_busy_changed(False)

    # --- building and wiring ----------------------------------------------------------------------------------

    def _columns(self) -> QSplitter:
        """The sidebar, and beside it the conversation between its header and the composer."""
        bottom = QHBoxLayout()
        bottom.addWidget(self.composer, 1)
        bottom.addWidget(self.send_button)
        middle = QWidget()
        column = QVBoxLayout(middle)
        column.addWidget(self.header)
        column.addWidget(self.chat, 1)
        column.addLayout(bottom)
        splitter = QSplitter()
        splitter.addWidget(self.sidebar)
        splitter.addWidget(middle)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([260, 740])
        return splitter

    def _memory_dock(self) -> QDockWidget:
        dock = QDockWidget(self.tr("Memory"), self)
        dock.setObjectName("memory")
        dock.setWidget(self.memory_panel)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        dock.hide()
        return dock

    def _menus(self) -> None:
        chats = self.menuBar().addMenu(self.tr("&Chat"))
        self._action(chats, self.tr("New chat"), QKeySequence.StandardKey.New, lambda: self.controller.new_chat())
        self._action(chats, self.tr("New temporary chat"), "Ctrl+Shift+N", self.new_temporary_chat)
        self._action(chats, self.tr("Search chats"), QKeySequence.StandardKey.Find, self.sidebar.focus_search)
        self._action(chats, self.tr("Copy last reply"), "Ctrl+Shift+C", self.copy_last_reply)
        self._action(chats, self.tr("Stop reply"), "Esc", self.controller.stop)
        chats.addSeparator()
        self._action(chats, self.tr("Import chats…"), "Ctrl+Shift+I", self.import_chats)
        chats.addSeparator()
        self._action(chats, self.tr("Quit"), QKeySequence.StandardKey.Quit, self.close)
        tools = self.menuBar().addMenu(self.tr("&Tools"))
        self._action(tools, self.tr("Memory"), "Ctrl+M", self.toggle_memory_panel)
        self._action(tools, self.tr("Models…"), "Ctrl+L", self.open_models)
        self._action(tools, self.tr("Settings…"), "Ctrl+,", self.open_settings)

    def _action(self, menu: QMenu, text: str, shortcut: str | QKeySequence.StandardKey, slot: object) -> QAction:
        action = QAction(text, self)
        action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _connect(self, worker: EngineWorker) -> None:
        worker.model_loaded.connect(self.on_worker_model_loaded)
        worker.start_failed.connect(self.on_worker_start_failed)
        worker.conversations_changed.connect(self.on_worker_conversations_changed)
        worker.search_finished.connect(self.on_worker_search_finished)
        worker.memories_changed.connect(self.on_worker_memories_changed)
        worker.models_listed.connect(self.on_worker_models_listed)
        worker.settings_changed.connect(self.on_worker_settings_changed)
        worker.request_failed.connect(self.show_error)
        worker.bug_reported.connect(self.report_bug)
        worker.chats_imported.connect(self.on_worker_chats_imported)
        worker.api_changed.connect(self.status_line.show_api)
        worker.api_token_ready.connect(self.on_worker_api_token_ready)
        self.controller.current_changed.connect(self.on_controller_current_changed)
        self.controller.busy_changed.connect(self.on_controller_busy_changed)
        self.controller.usage_reported.connect(self.on_controller_usage_reported)
        self.controller.memory_updated.connect(self.on_controller_memory_updated)
        self.controller.reply_failed.connect(self.show_error)
        self.chat.edit_requested.connect(self.on_chat_edit_requested)
        self.chat.source_requested.connect(self.open_message)
        self.sidebar.message_requested.connect(self.open_message)
        self.memory_panel.action_requested.connect(self.controller.memory_action)
        self.memory_panel.edit_requested.connect(self.controller.edit_memory)
        self.memory_panel.add_requested.connect(self.controller.add_memory)
        self.memory_panel.source_requested.connect(self.open_message)

    def start(self) -> None:
        self.controller.start()

    # --- intents ----------------------------------------------------------------------------------------------

    def send(self) -> None:
        text = self.composer.toPlainText()
        if self.controller.send(text):
            self.composer.clear()

    def bring_forward(self) -> None:
        """Cleo was launched again while open: show this window, unminimised, on top."""
        self.setWindowState(self.windowState() & ~Qt.WindowState.WindowMinimized)
        self.show()
        self.raise_()
        self.activateWindow()

    def on_send_button_clicked(self) -> None:
        if self.controller.busy:
            self.controller.stop()
        else:
            self.send()

    def new_temporary_chat(self) -> None:
        self.controller.new_chat(temporary=True)
        self.header.show_temporary_chat()

    def copy_last_reply(self) -> None:
        QGuiApplication.clipboard().setText(self.controller.last_reply())

    def toggle_memory_panel(self) -> None:
        self.memory_dock.setVisible(not self.memory_dock.isVisible())

    def open_message(self, conversation_id: str, message_id: str) -> None:
        """Open a chat and scroll to a message in it (search hits, memory sources)."""
        self._pending_scroll = message_id
        self.controller.open(conversation_id)

    def on_chat_edit_requested(self, message_id: str) -> None:
        old = self.chat.message_text(message_id)
        text, ok = QInputDialog.getMultiLineText(self, self.tr("Edit message"), self.tr("Your message:"), old)
        if ok and text.strip() and text != old:
            self.controller.edit(message_id, text)

    def open_settings(self) -> None:
        from app.settings_dialog import SettingsDialog

        dialog = self.settings_dialog = SettingsDialog(self.settings, self)
        dialog.copy_token_requested.connect(lambda: self.controller.request_api_token())
        dialog.new_token_requested.connect(lambda: self.controller.request_api_token(renew=True))
        try:
            if dialog.exec() == SettingsDialog.DialogCode.Accepted and dialog.settings != self.settings:
                self.controller.apply_settings(dialog.settings)
        finally:
            self.settings_dialog = None

    def import_chats(self) -> None:
        from app.import_chats import choose_export

        path = choose_export(self)
        if path:
            self.controller.import_chats(path)

    def open_models(self) -> None:
        from app.models_dialog import ModelsDialog
        from engine import hub_address

        if self.models_dialog is None:
            self.models_dialog = ModelsDialog(self.settings.context_size, self.settings.model_folders, self,
                                              hub=hub_address(self.settings))
            self.models_dialog.models_changed.connect(self.controller.list_models)
            self.models_dialog.use_requested.connect(self.controller.use_model)
            self.models_dialog.use_in_chat_requested.connect(self.controller.use_model_in_chat)
            self.models_dialog.folders_changed.connect(self.on_models_dialog_folders_changed)
        self.models_dialog.show()
        self.models_dialog.raise_()
        self.controller.list_models()

    def on_models_dialog_folders_changed(self, places: tuple[str, ...]) -> None:
        self.controller.apply_settings(self.settings.updated(model_folders=tuple(places)))

    # --- what comes back --------------------------------------------------------------------------------------

    @Slot(object)
    def on_worker_model_loaded(self, state: ModelState) -> None:
        self.model_state = state
        self.status_line.show_model(state)
        self.on_controller_busy_changed(self.controller.busy)
        if self.controller.current == "" and self._last_conversation:
            self.controller.open(self._last_conversation)
            self._last_conversation = ""

    @Slot(object)
    def on_worker_start_failed(self, error: KnownError) -> None:
        self.status_line.show_no_model()
        self.show_error(error)
        self.open_models()

    @Slot(object)
    def on_worker_conversations_changed(self, conversations: Sequence[ConversationSummary]) -> None:
        self.sidebar.show_conversations(conversations)

    @Slot(str, object)
    def on_worker_search_finished(self, query: str, hits: Sequence[SearchHit]) -> None:
        self.sidebar.show_hits(query, hits)

    @Slot(object)
    def on_worker_memories_changed(self, state: MemoryState) -> None:
        self.memory_panel.show_state(state)

    @Slot(object)
    def on_worker_models_listed(self, listed: ModelList) -> None:
        if self.models_dialog is not None:
            self.models_dialog.show_models(listed)

    @Slot(object)
    def on_worker_settings_changed(self, settings: Settings) -> None:
        self.settings = settings
        self.theme.apply(settings)
        self.header.change_personas(settings.personas)
        if self.models_dialog is not None:
            from engine import hub_address

            self.models_dialog.follow(hub_address(settings), settings.context_size)

    @Slot(str)
    def on_worker_chats_imported(self, what: str) -> None:
        message_box(QMessageBox.Icon.Information, self.tr("Chats imported"),  # names the file: shown literally
                    self.tr("Imported %1").replace("%1", what), self).exec()

    @Slot(str, bool)
    def on_worker_api_token_ready(self, token: str, renewed: bool) -> None:
        QGuiApplication.clipboard().setText(token)
        note = (self.tr("A new token was made and copied to the clipboard; apps must use it from now on.") if renewed
                else self.tr("The token was copied to the clipboard."))
        if self.settings_dialog is not None:
            self.settings_dialog.show_token_note(note)
        else:
            self.status_line.showMessage(note, 5000)

    @Slot(object)
    def on_controller_current_changed(self, view: ConversationView | None) -> None:
        self.header.show_conversation(view)
        if view is None:
            return
        scroll = self._pending_scroll
        if scroll:
            self._pending_scroll = ""
            self.chat.scroll_to_message(scroll)
        self.sidebar.show_current(view.id)

    @Slot(bool)
    def on_controller_busy_changed(self, busy: bool) -> None:
        self.send_button.setText(self.tr("Stop") if busy else self.tr("Send"))
        self.send_button.setAccessibleName(self.send_button.text())
        self.send_button.setEnabled(self.model_state is not None)  # nothing to send to before a model loads

    @Slot(object)
    def on_controller_usage_reported(self, usage: Usage) -> None:
        self.status_line.show_usage(usage)

    @Slot(object)
    def on_controller_memory_updated(self, update: MemoryUpdated) -> None:
        words = {"added": self.tr("Memory updated"), "proposed": self.tr("Cleo would like to remember (see Inbox)"),
                 "bumped": self.tr("Memory confirmed"), "superseded": self.tr("Memory corrected"),
                 "forgotten": self.tr("Memory forgotten")}
        self.chat.append_notice(f"{words.get(update.action, self.tr('Memory updated'))}: {update.text}")

    @Slot(object)
    def show_error(self, error: KnownError | InternalError) -> None:
        warn(self, error.user_text(), self.tr("Cleo"))  # the text can quote a model file: shown literally

    @Slot(str)
    def report_bug(self, details: str) -> None:
        """A bug: already logged with its traceback; told once, without blocking the window."""
        log.error("bug reported to the user:\n%s", details)
        if self._bug_reported:
            return
        self._bug_reported = True
        box = message_box(QMessageBox.Icon.Critical, self.tr("Cleo hit a problem"),
                          self.tr("Something went wrong inside Cleo. Your chats are saved and Cleo keeps running. "
                                  "Details are in the log folder: %1").replace("%1", str(folders().logs)),
                          self, QMessageBox.StandardButton.Close)
        box.setDetailedText(details)
        box.setModal(False)
        box.show()

    # --- size and last chat, kept between starts --------------------------------------------------------------

    def _restore_state(self) -> None:
        path = folders().config / WINDOW_STATE_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            self.restoreGeometry(base64.b64decode(state.get("geometry", "")))
            self._last_conversation = str(state.get("last_conversation", ""))
        except FileNotFoundError:
            self.resize(1100, 720)
        except (OSError, ValueError, TypeError):
            log.warning("window state in %s is unreadable; starting with the default layout", path)
            self.resize(1100, 720)

    def save_state(self) -> None:
        path = folders().config / WINDOW_STATE_FILE
        current = self.controller.current
        state = {"geometry": base64.b64encode(bytes(self.saveGeometry().data())).decode(),
                 "last_conversation": "" if self.sidebar.is_temporary(current) else current}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(state), encoding="utf-8")
        except OSError:
            log.warning("could not save the window state to %s", path, exc_info=True)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.save_state()
        if self.models_dialog is not None:
            self.models_dialog.close_downloads()
        self.controller.stop_thread()
        super().closeEvent(event)
