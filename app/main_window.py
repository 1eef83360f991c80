"""Cleo's window: chats on the left, the conversation and composer in the middle, memory on the right.

The window states intents through the `ChatController` and shows what comes back; it never
touches the engine itself (DESIGN.md: app imports only engine's public surface and PySide6).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import TYPE_CHECKING

from PySide6.QtCore import QPoint, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QCloseEvent, QColor, QGuiApplication, QKeyEvent, QKeySequence, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDockWidget,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from app.chat_view import ChatView
from app.controller import ChatController
from app.memory_panel import MemoryPanel
from app.render import DARK, LIGHT
from app.worker import ConversationView, EngineWorker, MemoryState, ModelList, ModelState
from engine.errors import KnownError
from engine.events import MemoryUpdated, Usage
from engine.paths import folders

if TYPE_CHECKING:  # dialogs and the store load when first used, after the window has painted
    from app.models_dialog import ModelsDialog
    from engine.settings import Settings
    from engine.store import ConversationSummary, SearchHit

log = logging.getLogger(__name__)

_ID = Qt.ItemDataRole.UserRole
_MESSAGE = Qt.ItemDataRole.UserRole + 1
WINDOW_STATE_FILE = "window.json"


def dark_palette() -> QPalette:
    palette = QPalette()
    colours = {
        QPalette.ColorRole.Window: "#202124", QPalette.ColorRole.WindowText: "#e8eaed",
        QPalette.ColorRole.Base: "#17181a", QPalette.ColorRole.AlternateBase: "#2a2b2e",
        QPalette.ColorRole.Text: "#e8eaed", QPalette.ColorRole.Button: "#2d2e31",
        QPalette.ColorRole.ButtonText: "#e8eaed", QPalette.ColorRole.Highlight: "#3d6fb6",
        QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.Link: "#8ab4f8",
        QPalette.ColorRole.ToolTipBase: "#2d2e31", QPalette.ColorRole.ToolTipText: "#e8eaed",
        QPalette.ColorRole.PlaceholderText: "#9aa0a6",
    }
    for role, colour in colours.items():
        palette.setColor(role, QColor(colour))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#7f8388"))
    return palette


class Composer(QPlainTextEdit):
    """Enter sends, Shift+Enter starts a new line, Esc stops the reply."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__()
        self._window = window
        self.setPlaceholderText(self.tr("Message Cleo…  (Enter sends, Shift+Enter for a new line)"))
        self.setAccessibleName(self.tr("Message"))
        self.setAccessibleDescription(self.tr("Write to Cleo. Enter sends, Shift+Enter adds a line, Esc stops."))
        self.setMaximumHeight(140)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        enter = event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
        if enter and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self._window.send()
            return
        if event.key() == Qt.Key.Key_Escape:
            self._window.controller.stop()
            return
        super().keyPressEvent(event)


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings, worker: EngineWorker) -> None:
        super().__init__()
        self.settings = settings
        self.setWindowTitle("Cleo")
        self.setAccessibleName("Cleo")
        self.chat = ChatView()
        self.controller = ChatController(worker, self.chat)
        self.worker = worker
        self.conversations: list[ConversationSummary] = []
        self.model_state: ModelState | None = None
        self.models_dialog: ModelsDialog | None = None
        self._bug_reported = False
        self._pending_scroll = ""  # a message to show once its chat has opened
        self._last_conversation = ""  # reopened once the model is ready

        # sidebar
        self.new_button = QPushButton(self.tr("New chat"))
        self.new_button.setAccessibleName(self.tr("New chat"))
        self.new_button.setAccessibleDescription(self.tr("Start a new conversation (Ctrl+N)"))
        self.new_button.clicked.connect(lambda: self.controller.new_chat())
        self.search_box = QLineEdit()
        self.search_box.setPlaceholderText(self.tr("Search all chats (Ctrl+F)"))
        self.search_box.setAccessibleName(self.tr("Search chats"))
        self.search_box.setAccessibleDescription(self.tr("Find words in every conversation"))
        self.search_box.setClearButtonEnabled(True)
        self._search_timer = QTimer(self, singleShot=True, interval=250)
        self._search_timer.timeout.connect(self._search)
        self.search_box.textChanged.connect(lambda _: self._search_timer.start())
        self.sidebar = QListWidget()
        self.sidebar.setAccessibleName(self.tr("Chats"))
        self.sidebar.setAccessibleDescription(self.tr("Your conversations, pinned first; right-click for more"))
        self.sidebar.setWordWrap(True)
        self.sidebar.itemActivated.connect(self._open_item)
        self.sidebar.itemClicked.connect(self._open_item)
        self.sidebar.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.sidebar.customContextMenuRequested.connect(self._sidebar_menu)
        left = QWidget()
        column = QVBoxLayout(left)
        column.addWidget(self.new_button)
        column.addWidget(self.search_box)
        column.addWidget(self.sidebar)

        # conversation
        self.title = QLabel()
        self.title.setAccessibleName(self.tr("Chat title"))
        self.memory_switch = QCheckBox(self.tr("Memory"))
        self.memory_switch.setAccessibleName(self.tr("Memory in this chat"))
        self.memory_switch.setAccessibleDescription(self.tr("Let Cleo remember and recall things in this chat"))
        self.memory_switch.setChecked(True)
        self.memory_switch.toggled.connect(self._memory_toggled)
        self.persona = QComboBox()
        self.persona.setAccessibleName(self.tr("Instructions for this chat"))
        self.persona.setAccessibleDescription(self.tr("The default instructions from the settings, or a saved persona"))
        self.persona.setToolTip(self.persona.accessibleDescription())
        self.persona.activated.connect(lambda _: self.controller.use_instructions(self.persona.currentData() or ""))
        self.composer = Composer(self)
        self.send_button = QPushButton(self.tr("Send"))
        self.send_button.setAccessibleName(self.tr("Send"))
        self.send_button.setAccessibleDescription(self.tr("Send the message, or stop the reply while Cleo writes"))
        self.send_button.clicked.connect(self._send_or_stop)
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(self.persona)
        top.addWidget(self.memory_switch)
        bottom = QHBoxLayout()
        bottom.addWidget(self.composer, 1)
        bottom.addWidget(self.send_button)
        middle = QWidget()
        column = QVBoxLayout(middle)
        column.addLayout(top)
        column.addWidget(self.chat, 1)
        column.addLayout(bottom)
        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(middle)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([260, 740])
        self.setCentralWidget(splitter)

        # memory
        self.memory_panel = MemoryPanel()
        self.memory_dock = QDockWidget(self.tr("Memory"), self)
        self.memory_dock.setObjectName("memory")
        self.memory_dock.setWidget(self.memory_panel)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.memory_dock)
        self.memory_dock.hide()
        self.memory_panel.actionRequested.connect(self.controller.memory_action)
        self.memory_panel.editRequested.connect(self.controller.edit_memory)
        self.memory_panel.addRequested.connect(self.controller.add_memory)
        self.memory_panel.sourceRequested.connect(self.open_message)

        # status line
        self.model_label = QLabel(self.tr("Loading the model…"))
        self.device_label = QLabel()
        self.speed_label = QLabel()
        self.context_gauge = QProgressBar()
        self.context_gauge.setMaximumWidth(160)
        self.context_gauge.setFormat(self.tr("context %v / %m"))
        self.context_gauge.setAccessibleName(self.tr("Context used"))
        for widget in (self.model_label, self.device_label, self.speed_label):
            self.statusBar().addWidget(widget)
        self.statusBar().addPermanentWidget(self.context_gauge)

        self._menus()
        self._connect(worker)
        QGuiApplication.styleHints().colorSchemeChanged.connect(lambda _: self._follow_scheme())
        self._apply_look(settings)
        self._restore_state()
        self._show_personas(None)
        self._set_busy(False)

    # --- wiring -----------------------------------------------------------------------------------------------

    def _menus(self) -> None:
        chats = self.menuBar().addMenu(self.tr("&Chat"))
        self._action(chats, self.tr("New chat"), QKeySequence.StandardKey.New, lambda: self.controller.new_chat())
        self._action(chats, self.tr("New temporary chat"), "Ctrl+Shift+N",
                     lambda: self._new_temporary())
        self._action(chats, self.tr("Search chats"), QKeySequence.StandardKey.Find, self._focus_search)
        self._action(chats, self.tr("Copy last reply"), "Ctrl+Shift+C", self.copy_last_reply)
        self._action(chats, self.tr("Stop reply"), "Esc", self.controller.stop)
        chats.addSeparator()
        self._action(chats, self.tr("Quit"), QKeySequence.StandardKey.Quit, self.close)
        tools = self.menuBar().addMenu(self.tr("&Tools"))
        self._action(tools, self.tr("Memory"), "Ctrl+M", self._toggle_memory)
        self._action(tools, self.tr("Models…"), "Ctrl+L", self.open_models)
        self._action(tools, self.tr("Settings…"), "Ctrl+,", self.open_settings)

    def _action(self, menu: QMenu, text: str, shortcut: str | QKeySequence.StandardKey, slot: object) -> QAction:
        action = QAction(text, self)
        action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _connect(self, worker: EngineWorker) -> None:
        worker.ready.connect(self._on_ready)
        worker.startFailed.connect(self._on_start_failed)
        worker.conversationsChanged.connect(self._on_conversations)
        worker.searchFinished.connect(self._on_search)
        worker.memoriesChanged.connect(self._on_memories)
        worker.modelsListed.connect(self._on_models)
        worker.settingsChanged.connect(self._on_settings)
        worker.knownError.connect(self.show_error)
        worker.bug.connect(self.report_bug)
        self.controller.currentChanged.connect(self._on_current)
        self.controller.busyChanged.connect(self._set_busy)
        self.controller.usage.connect(self._on_usage)
        self.controller.memoryUpdated.connect(self._on_memory_updated)
        self.controller.failed.connect(self.show_error)
        self.chat.editRequested.connect(self._edit_message)
        self.chat.sourceRequested.connect(self.open_message)

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

    def _send_or_stop(self) -> None:
        if self.controller.busy:
            self.controller.stop()
        else:
            self.send()

    def _new_temporary(self) -> None:
        self.controller.new_chat(temporary=True)
        self.title.setText(self.tr("Temporary chat: nothing is remembered, and it is deleted when you leave it"))

    def copy_last_reply(self) -> None:
        QGuiApplication.clipboard().setText(self.controller.last_reply())

    def _focus_search(self) -> None:
        self.search_box.setFocus()
        self.search_box.selectAll()

    def _toggle_memory(self) -> None:
        self.memory_dock.setVisible(not self.memory_dock.isVisible())

    def open_message(self, conversation_id: str, message_id: str) -> None:
        """Open a chat and scroll to a message in it (search hits, memory sources)."""
        self._pending_scroll = message_id
        self.controller.open(conversation_id)

    def _open_item(self, item: QListWidgetItem) -> None:
        conversation_id = item.data(_ID)
        if not conversation_id:
            return
        message_id = item.data(_MESSAGE)
        if message_id:
            self.open_message(conversation_id, message_id)
        elif conversation_id != self.controller.current:
            self.controller.open(conversation_id)

    def _edit_message(self, message_id: str) -> None:
        old = self.chat.message_text(message_id)
        text, ok = QInputDialog.getMultiLineText(self, self.tr("Edit message"), self.tr("Your message:"), old)
        if ok and text.strip() and text != old:
            self.controller.edit(message_id, text)

    def _memory_toggled(self, on: bool) -> None:
        if self.controller.current:
            self.controller.change_conversation(self.controller.current, memory_enabled=on)

    def _search(self) -> None:
        query = self.search_box.text().strip()
        if query:
            self.controller.search(query)
        else:
            self._fill_sidebar()

    def _sidebar_menu(self, position: QPoint) -> None:
        item = self.sidebar.itemAt(position)
        if item is None or not item.data(_ID):
            return
        summary = next((c for c in self.conversations if c.id == item.data(_ID)), None)
        if summary is None:
            return
        menu = QMenu(self)
        menu.addAction(self.tr("Rename…"), lambda: self._rename(summary))
        menu.addAction(self.tr("Unpin") if summary.pinned else self.tr("Pin"),
                       lambda: self.controller.change_conversation(summary.id, pinned=not summary.pinned))
        menu.addAction(self.tr("Unarchive") if summary.archived else self.tr("Archive"),
                       lambda: self.controller.change_conversation(summary.id, archived=not summary.archived))
        menu.addAction(self.tr("Delete…"), lambda: self.delete_conversation(summary))
        menu.exec(self.sidebar.mapToGlobal(position))

    def _rename(self, summary: ConversationSummary) -> None:
        title, ok = QInputDialog.getText(self, self.tr("Rename chat"), self.tr("Title:"), text=summary.title)
        if ok and title.strip():
            self.controller.change_conversation(summary.id, title=title.strip())

    def delete_conversation(self, summary: ConversationSummary) -> None:
        box = QMessageBox(QMessageBox.Icon.Warning, self.tr("Delete chat"),
                          self.tr("Delete “%1” and all its messages? This cannot be undone.")
                          .replace("%1", summary.title),
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        forget = QCheckBox(self.tr("Also forget what Cleo learned from this chat"))
        box.setCheckBox(forget)
        if box.exec() == QMessageBox.StandardButton.Yes:
            self.controller.delete_conversation(summary.id, forget_its_memories=forget.isChecked())

    def open_settings(self) -> None:
        from app.settings_dialog import SettingsDialog

        dialog = SettingsDialog(self.settings, self)
        if dialog.exec() == SettingsDialog.DialogCode.Accepted and dialog.settings != self.settings:
            self.controller.apply_settings(dialog.settings)

    def open_models(self) -> None:
        from app.models_dialog import ModelsDialog

        if self.models_dialog is None:
            self.models_dialog = ModelsDialog(self.settings.context_size, self.settings.model_folders, self)
            self.models_dialog.useRequested.connect(self.controller.use_model)
            self.models_dialog.useInChatRequested.connect(self.controller.use_model_in_chat)
            self.models_dialog.foldersChanged.connect(
                lambda places: self.controller.apply_settings(self.settings.updated(model_folders=tuple(places))))
        self.models_dialog.show()
        self.models_dialog.raise_()
        self.controller.list_models()

    # --- what comes back --------------------------------------------------------------------------------------

    @Slot(object)
    def _on_ready(self, state: ModelState) -> None:
        self.model_state = state
        self.model_label.setText(state.name)
        self.device_label.setText(state.device)
        self.context_gauge.setRange(0, state.context_size)
        self.context_gauge.setValue(0)
        self._set_busy(self.controller.busy)
        if self.controller.current == "" and self._last_conversation:
            self.controller.open(self._last_conversation)
            self._last_conversation = ""

    @Slot(object)
    def _on_start_failed(self, error: KnownError) -> None:
        self.model_label.setText(self.tr("No model loaded"))
        self.show_error(error)
        self.open_models()

    @Slot(object)
    def _on_conversations(self, conversations: list[ConversationSummary]) -> None:
        self.conversations = conversations
        if not self.search_box.text().strip():
            self._fill_sidebar()

    def _fill_sidebar(self) -> None:
        self.sidebar.clear()
        for c in self.conversations:
            if c.temporary:
                continue
            label = ("★ " if c.pinned else "") + (c.title or self.tr("New chat")) + (
                self.tr(" (archived)") if c.archived else "")
            item = QListWidgetItem(label)
            item.setData(_ID, c.id)
            item.setToolTip(time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated_at)))
            self.sidebar.addItem(item)
            if c.id == self.controller.current:
                self.sidebar.setCurrentItem(item)

    @Slot(str, object)
    def _on_search(self, query: str, hits: list[SearchHit]) -> None:
        if query != self.search_box.text().strip():
            return  # an older search
        self.sidebar.clear()
        if not hits:
            self.sidebar.addItem(QListWidgetItem(self.tr("No chat mentions “%1”.").replace("%1", query)))
        for hit in hits:
            snippet = hit.snippet.replace("[", "").replace("]", "")
            item = QListWidgetItem(f"{hit.conversation_title}\n{snippet}")
            item.setData(_ID, hit.conversation_id)
            item.setData(_MESSAGE, hit.message_id)
            self.sidebar.addItem(item)

    @Slot(object)
    def _on_current(self, view: ConversationView | None) -> None:
        self._show_personas(view.instructions if view is not None else None)
        if view is None:
            self.title.setText(self.tr("New chat"))
            self.memory_switch.setEnabled(True)
            return
        self.title.setText(view.title + (self.tr(" (temporary)") if view.temporary else ""))
        self.memory_switch.blockSignals(True)
        self.memory_switch.setChecked(view.memory_enabled)
        self.memory_switch.setEnabled(not view.temporary)
        self.memory_switch.blockSignals(False)
        scroll = self._pending_scroll
        if scroll:
            self._pending_scroll = ""
            self.chat.scroll_to_message(scroll)
        for i in range(self.sidebar.count()):
            if self.sidebar.item(i).data(_ID) == view.id and not self.sidebar.item(i).data(_MESSAGE):
                self.sidebar.setCurrentRow(i)

    def _show_personas(self, instructions: str | None) -> None:
        """The persona choices, with the one `instructions` belong to selected (or a custom entry)."""
        self.persona.clear()
        self.persona.addItem(self.tr("Default instructions"), "")
        for persona in self.settings.personas:
            self.persona.addItem(persona.name, persona.instructions)
        if instructions:
            index = self.persona.findData(instructions)
            if index < 0:
                self.persona.addItem(self.tr("This chat's own instructions"), instructions)
                index = self.persona.count() - 1
            self.persona.setCurrentIndex(index)

    @Slot(object)
    def _on_memories(self, state: MemoryState) -> None:
        self.memory_panel.show_state(state)

    @Slot(object)
    def _on_models(self, listed: ModelList) -> None:
        if self.models_dialog is not None:
            self.models_dialog.show_models(listed)

    @Slot(object)
    def _on_settings(self, settings: Settings) -> None:
        self.settings = settings
        self._apply_look(settings)
        self._show_personas(self.persona.currentData() or None)

    @Slot(object)
    def _on_usage(self, usage: Usage) -> None:
        self.speed_label.setText(self.tr("%1 tokens/s").replace("%1", f"{usage.tokens_per_s:.1f}"))
        self.context_gauge.setRange(0, usage.context_size)
        self.context_gauge.setValue(usage.context_used)

    @Slot(object)
    def _on_memory_updated(self, update: MemoryUpdated) -> None:
        words = {"added": self.tr("Memory updated"), "proposed": self.tr("Cleo would like to remember (see Inbox)"),
                 "bumped": self.tr("Memory confirmed"), "superseded": self.tr("Memory corrected"),
                 "forgotten": self.tr("Memory forgotten")}
        self.chat.append_notice(f"{words.get(update.action, self.tr('Memory updated'))}: {update.text}")

    @Slot(bool)
    def _set_busy(self, busy: bool) -> None:
        self.send_button.setText(self.tr("Stop") if busy else self.tr("Send"))
        self.send_button.setAccessibleName(self.send_button.text())
        ready = self.model_state is not None
        self.send_button.setEnabled(ready)

    @Slot(object)
    def show_error(self, error: KnownError) -> None:
        QMessageBox.warning(self, self.tr("Cleo"), error.user_text())

    @Slot(str)
    def report_bug(self, details: str) -> None:
        """A bug: already logged with its traceback; told once, without blocking the window."""
        log.error("bug reported to the user:\n%s", details)
        if self._bug_reported:
            return
        self._bug_reported = True
        box = QMessageBox(QMessageBox.Icon.Critical, self.tr("Cleo hit a problem"),
                          self.tr("Something went wrong inside Cleo. Your chats are saved and Cleo keeps running. "
                                  "Details are in the log folder: %1").replace("%1", str(folders().logs)),
                          QMessageBox.StandardButton.Close, self)
        box.setDetailedText(details)
        box.setModal(False)
        box.show()

    # --- look and state ---------------------------------------------------------------------------------------

    def _apply_look(self, settings: Settings) -> None:
        hints = QGuiApplication.styleHints()
        scheme = {"light": Qt.ColorScheme.Light, "dark": Qt.ColorScheme.Dark}.get(settings.theme,
                                                                                  Qt.ColorScheme.Unknown)
        if hasattr(hints, "setColorScheme"):
            hints.setColorScheme(scheme)
        self._follow_scheme()
        font = self.chat.font()
        font.setPointSize(settings.font_size)
        self.chat.setFont(font)
        self.chat.document().setDefaultFont(font)

    def _follow_scheme(self) -> None:
        dark = QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark
        if self.settings.theme != "system":
            dark = self.settings.theme == "dark"
        # Not every platform applies a forced scheme to the widgets' colours: set them directly.
        app = QApplication.instance()
        if isinstance(app, QApplication):
            app.setPalette(dark_palette() if dark else app.style().standardPalette())
        self.chat.set_palette(DARK if dark else LIGHT)

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
        temporary = any(c.id == current and c.temporary for c in self.conversations)
        state = {"geometry": base64.b64encode(bytes(self.saveGeometry().data())).decode(),
                 "last_conversation": "" if temporary else current}
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
