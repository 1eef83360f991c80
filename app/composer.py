"""The composer under the chat: where the user writes, with the keys people expect of a chat app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QPlainTextEdit

if TYPE_CHECKING:
    from app.main_window import MainWindow


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
