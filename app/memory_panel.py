"""What Cleo remembers, where it learned it, and the inbox of things it would like to remember."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.widgets import button, tooltip

if TYPE_CHECKING:
    from engine import Memory, MemoryState

_ID = Qt.ItemDataRole.UserRole


class MemoryPanel(QWidget):
    action_requested = Signal(str, str)  # "approve" / "reject" / "forget" / "pin" / "unpin", memory id
    edit_requested = Signal(str, str)  # memory id, new text
    add_requested = Signal(str)  # text
    source_requested = Signal(str, str)  # conversation id, message id

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAccessibleName(self.tr("Memory"))
        self._records: dict[str, Memory] = {}
        self.tabs = QTabWidget(self)
        self.remembered = QTreeWidget()
        self.remembered.setHeaderLabels([self.tr("Kind"), self.tr("What Cleo remembers"), self.tr("Since")])
        self.remembered.setRootIsDecorated(False)
        self.remembered.setAccessibleName(self.tr("Remembered"))
        self.remembered.setAccessibleDescription(self.tr("Everything Cleo remembers about you; pinned first."))
        self.remembered.itemDoubleClicked.connect(self.on_remembered_item_double_clicked)
        self.inbox = QListWidget()
        self.inbox.setAccessibleName(self.tr("Inbox"))
        self.inbox.setAccessibleDescription(self.tr("Things Cleo proposes to remember; approve or reject each."))

        self.add_button = button(self.tr("Add…"), self.tr("Tell Cleo something to remember"),
                                 self.on_add_button_clicked)
        self.edit_button = button(self.tr("Edit…"), self.tr("Change the selected memory"), self.on_edit_button_clicked)
        self.pin_button = button(self.tr("Pin"), self.tr("Always show the selected memory to Cleo"),
                                 self.on_pin_button_clicked)
        self.forget_button = button(self.tr("Forget"), self.tr("Delete the selected memory"),
                                    self.on_forget_button_clicked)
        self.source_button = button(self.tr("Go to source"), self.tr("Open the message it was learned from"),
                                    self.on_source_button_clicked)
        self.approve_button = button(self.tr("Approve"), self.tr("Remember the selected proposal"),
                                     self.on_approve_button_clicked)
        self.reject_button = button(self.tr("Reject"), self.tr("Discard the selected proposal"),
                                    self.on_reject_button_clicked)

        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(self.remembered)
        row = QHBoxLayout()
        for b in (self.add_button, self.edit_button, self.pin_button, self.forget_button, self.source_button):
            row.addWidget(b)
        layout.addLayout(row)
        self.tabs.addTab(page, self.tr("Remembered"))

        page = QWidget()
        layout = QVBoxLayout(page)
        self.inbox_note = QLabel(self.tr("Nothing waiting for approval."))
        layout.addWidget(self.inbox_note)
        layout.addWidget(self.inbox)
        row = QHBoxLayout()
        row.addWidget(self.approve_button)
        row.addWidget(self.reject_button)
        layout.addLayout(row)
        self.tabs.addTab(page, self.tr("Inbox"))
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.tabs)

    def show_state(self, state: MemoryState) -> None:
        self._records = {m.id: m for m in (*state.remembered, *state.inbox)}
        self.remembered.clear()
        for memory in sorted(state.remembered, key=lambda m: (not m.pinned, -m.updated_at)):
            since = time.strftime("%Y-%m-%d", time.localtime(memory.created_at))
            item = QTreeWidgetItem([memory.kind + (" 📌" if memory.pinned else ""), memory.content, since])
            item.setData(0, _ID, memory.id)
            item.setToolTip(1, tooltip(memory.content))
            self.remembered.addTopLevelItem(item)
        self.remembered.resizeColumnToContents(0)
        self.inbox.clear()
        for memory in state.inbox:
            entry = QListWidgetItem(f"{memory.content}  ({memory.kind})")
            entry.setData(_ID, memory.id)
            self.inbox.addItem(entry)
        count = len(state.inbox)
        self.tabs.setTabText(1, self.tr("Inbox (%n)", "", count) if count else self.tr("Inbox"))
        self.inbox_note.setVisible(count == 0)

    def selected(self) -> Memory | None:
        item = self.remembered.currentItem()
        return self._records.get(item.data(0, _ID)) if item is not None else None

    def on_forget_button_clicked(self) -> None:
        memory = self.selected()
        if memory is not None:
            self.action_requested.emit("forget", memory.id)

    def on_approve_button_clicked(self) -> None:
        self._answer_proposal("approve")

    def on_reject_button_clicked(self) -> None:
        self._answer_proposal("reject")

    def on_pin_button_clicked(self) -> None:
        memory = self.selected()
        if memory is not None:
            self.action_requested.emit("unpin" if memory.pinned else "pin", memory.id)

    def on_edit_button_clicked(self) -> None:
        memory = self.selected()
        if memory is None:
            return
        text, ok = QInputDialog.getMultiLineText(self, self.tr("Edit memory"), self.tr("What Cleo remembers:"),
                                                 memory.content)
        if ok and text.strip() and text.strip() != memory.content:
            self.edit_requested.emit(memory.id, text.strip())

    def on_remembered_item_double_clicked(self, _item: QTreeWidgetItem, _column: int) -> None:
        self.on_edit_button_clicked()  # a double click edits, as the Edit button does

    def on_add_button_clicked(self) -> None:
        text, ok = QInputDialog.getMultiLineText(self, self.tr("Add a memory"), self.tr("What should Cleo remember?"))
        if ok and text.strip():
            self.add_requested.emit(text.strip())

    def on_source_button_clicked(self) -> None:
        memory = self.selected()
        if memory is not None and memory.source_conversation_id and memory.source_message_id:
            self.source_requested.emit(memory.source_conversation_id, memory.source_message_id)

    def _answer_proposal(self, action: str) -> None:
        item = self.inbox.currentItem()
        if item is not None:
            self.action_requested.emit(action, item.data(_ID))
