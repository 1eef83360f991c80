"""Small widget helpers shared by the window's panels and dialogs.

Text that comes from outside Cleo (a model's name, a chat title, a memory, an error naming a
model file) is shown through these helpers, so it is always shown as the characters it is. Qt
takes any string that looks like markup for HTML unless told otherwise, and HTML can make it
load files (an `<img src=...>` reads a local file, or on Windows opens a network share).
"""

from __future__ import annotations

import html
from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QMessageBox, QPushButton, QWidget


def button(text: str, description: str, action: Callable[[], object]) -> QPushButton:
    """A push button named and described for screen readers, with its description as tooltip."""
    made = QPushButton(text)
    made.setAccessibleName(text.rstrip("…"))
    made.setAccessibleDescription(description)
    made.setToolTip(description)
    made.clicked.connect(action)
    return made


def plain_label(text: str = "") -> QLabel:
    """A label that shows its text literally, whatever it holds."""
    label = QLabel()
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setText(text)
    return label


def tooltip(text: str) -> str:
    """`text` as a tooltip that shows it literally. Tooltips have no plain-text switch: Qt guesses,
    so the text is escaped and handed over as rich text (which also wraps long lines)."""
    if not text:
        return ""
    return f'<p style="white-space: pre-wrap">{html.escape(text, quote=False)}</p>'


def message_box(icon: QMessageBox.Icon, title: str, text: str, parent: QWidget | None = None,
                buttons: QMessageBox.StandardButton = QMessageBox.StandardButton.Ok) -> QMessageBox:
    """A message box that shows `text` literally (QMessageBox's static helpers guess, like a label)."""
    box = QMessageBox(icon, title, "", buttons, parent)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setText(text)
    return box


def warn(parent: QWidget | None, text: str, title: str = "Cleo") -> None:
    """Tell the user `text` (a known error, a warning) and wait until they close the box."""
    message_box(QMessageBox.Icon.Warning, title, text, parent).exec()
