"""The theme on its own: the settings' light or dark colours the widgets and the chat, at their text size."""

from __future__ import annotations

from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from app.chat_view import ChatView
from app.render import DARK, LIGHT
from app.theme import Theme
from engine import Settings


def test_a_chosen_theme_colours_the_widgets_and_the_chat_whatever_the_os_says(qtbot: QtBot) -> None:
    chat = ChatView()
    qtbot.addWidget(chat)
    theme = Theme(chat, chat)
    theme.apply(Settings(theme="dark", font_size=15))
    assert chat.palette_ == DARK and chat.font().pointSize() == 15
    assert QApplication.palette().color(QPalette.ColorRole.Window).name() == "#202124"
    theme.apply(Settings(theme="light"))
    assert chat.palette_ == LIGHT and chat.font().pointSize() == 11
    assert QApplication.palette().color(QPalette.ColorRole.Window).name() != "#202124"
    theme.apply(Settings())  # back to following the OS, as every other test's window does
