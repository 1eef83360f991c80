"""The column of chats on the left: New chat, the search box, and the chats (or search hits).

Right-clicking a chat renames, pins, archives or deletes it. Search runs a quarter second after
the user stops typing, and an answer to an older query is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PySide6.QtCore import QPoint, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QInputDialog,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QVBoxLayout,
    QWidget,
)

from app.controller import ChatController
from app.widgets import button, message_box

if TYPE_CHECKING:
    from engine import ConversationSummary, SearchHit

_ID = Qt.ItemDataRole.UserRole
_MESSAGE = Qt.ItemDataRole.UserRole + 1
SEARCH_AFTER_MS = 250  # typing pauses this long before the search runs


class Sidebar(QWidget):
    message_requested = Signal(str, str)  # conversation id, message id: a search hit the user chose

    def __init__(self, controller: ChatController) -> None:
        super().__init__()
        self.controller = controller
        self.conversations: tuple[ConversationSummary, ...] = ()
        self.new_button = button(self.tr("New chat"), self.tr("Start a new conversation (Ctrl+N)"),
                                 self.on_new_button_clicked)
        self.search_box = QLineEdit()
        self.search_box.setPlaceholderText(self.tr("Search all chats (Ctrl+F)"))
        self.search_box.setAccessibleName(self.tr("Search chats"))
        self.search_box.setAccessibleDescription(self.tr("Find words in every conversation"))
        self.search_box.setClearButtonEnabled(True)
        self.search_box.textChanged.connect(self.on_search_box_text_changed)
        self._search_timer = QTimer(self, singleShot=True, interval=SEARCH_AFTER_MS)
        self._search_timer.timeout.connect(self.on_search_timer_timeout)
        self.chats = QListWidget()
        self.chats.setAccessibleName(self.tr("Chats"))
        self.chats.setAccessibleDescription(self.tr("Your conversations, pinned first; right-click for more"))
        self.chats.setWordWrap(True)
        self.chats.itemActivated.connect(self.on_chats_item_activated)
        self.chats.itemClicked.connect(self.on_chats_item_clicked)
        self.chats.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.chats.customContextMenuRequested.connect(self.on_chats_context_menu_requested)
        column = QVBoxLayout(self)
        column.addWidget(self.new_button)
        column.addWidget(self.search_box)
        column.addWidget(self.chats)

    # --- what the window calls ------------------------------------------------------------------------------

    def show_conversations(self, conversations: Sequence[ConversationSummary]) -> None:
        """The chats changed; the list shows them unless it is showing search hits."""
        self.conversations = tuple(conversations)
        if not self.search_box.text().strip():
            self._fill()

    def show_hits(self, query: str, hits: Sequence[SearchHit]) -> None:
        if query != self.search_box.text().strip():
            return  # an older search
        self.chats.clear()
        if not hits:
            self.chats.addItem(QListWidgetItem(self.tr("No chat mentions “%1”.").replace("%1", query)))
        for hit in hits:
            snippet = hit.snippet.replace("[", "").replace("]", "")
            item = QListWidgetItem(f"{hit.conversation_title}\n{snippet}")
            item.setData(_ID, hit.conversation_id)
            item.setData(_MESSAGE, hit.message_id)
            self.chats.addItem(item)

    def show_current(self, conversation_id: str) -> None:
        """Select the open chat's row (not a search hit in it)."""
        for i in range(self.chats.count()):
            if self.chats.item(i).data(_ID) == conversation_id and not self.chats.item(i).data(_MESSAGE):
                self.chats.setCurrentRow(i)

    def focus_search(self) -> None:
        self.search_box.setFocus()
        self.search_box.selectAll()

    def is_temporary(self, conversation_id: str) -> bool:
        return any(c.id == conversation_id and c.temporary for c in self.conversations)

    # --- the user -------------------------------------------------------------------------------------------

    def on_new_button_clicked(self) -> None:
        self.controller.new_chat()

    def on_search_box_text_changed(self, _text: str) -> None:
        self._search_timer.start()

    def on_search_timer_timeout(self) -> None:
        query = self.search_box.text().strip()
        if query:
            self.controller.search(query)
        else:
            self._fill()

    def on_chats_item_activated(self, item: QListWidgetItem) -> None:
        conversation_id = item.data(_ID)
        if not conversation_id:
            return  # "No chat mentions …"
        message_id = item.data(_MESSAGE)
        if message_id:
            self.message_requested.emit(conversation_id, message_id)
        elif conversation_id != self.controller.current:
            self.controller.open(conversation_id)

    def on_chats_item_clicked(self, item: QListWidgetItem) -> None:
        self.on_chats_item_activated(item)  # one click opens a chat, as Enter or a double click does

    def on_chats_context_menu_requested(self, position: QPoint) -> None:
        item = self.chats.itemAt(position)
        if item is None or not item.data(_ID):
            return
        summary = next((c for c in self.conversations if c.id == item.data(_ID)), None)
        if summary is None:
            return
        menu = QMenu(self.window())
        menu.addAction(self.tr("Rename…"), lambda: self.rename(summary))
        menu.addAction(self.tr("Unpin") if summary.pinned else self.tr("Pin"),
                       lambda: self.controller.change_conversation(summary.id, pinned=not summary.pinned))
        menu.addAction(self.tr("Unarchive") if summary.archived else self.tr("Archive"),
                       lambda: self.controller.change_conversation(summary.id, archived=not summary.archived))
        menu.addAction(self.tr("Delete…"), lambda: self.delete(summary))
        menu.exec(self.chats.mapToGlobal(position))

    def rename(self, summary: ConversationSummary) -> None:
        title, ok = QInputDialog.getText(self.window(), self.tr("Rename chat"), self.tr("Title:"),
                                         text=summary.title)
        if ok and title.strip():
            self.controller.change_conversation(summary.id, title=title.strip())

    def delete(self, summary: ConversationSummary) -> None:
        box = message_box(QMessageBox.Icon.Warning, self.tr("Delete chat"),
                          self.tr("Delete “%1” and all its messages? This cannot be undone.")
                          .replace("%1", summary.title), self.window(),
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
        forget = QCheckBox(self.tr("Also forget what Cleo learned from this chat"))
        box.setCheckBox(forget)
        if box.exec() == QMessageBox.StandardButton.Yes:
            self.controller.delete_conversation(summary.id, forget_its_memories=forget.isChecked())

    def _fill(self) -> None:
        self.chats.clear()
        for c in self.conversations:
            if c.temporary:
                continue
            label = ("★ " if c.pinned else "") + (c.title or self.tr("New chat")) + (
                self.tr(" (archived)") if c.archived else "")
            item = QListWidgetItem(label)
            item.setData(_ID, c.id)
            item.setToolTip(time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated_at)))
            self.chats.addItem(item)
            if c.id == self.controller.current:
                self.chats.setCurrentItem(item)
