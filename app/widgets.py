"""Small widget helpers shared by the window's panels and dialogs."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtWidgets import QPushButton


def button(text: str, description: str, action: Callable[[], object]) -> QPushButton:
    """A push button named and described for screen readers, with its description as tooltip."""
    made = QPushButton(text)
    made.setAccessibleName(text.rstrip("…"))
    made.setAccessibleDescription(description)
    made.setToolTip(description)
    made.clicked.connect(action)
    return made
