"""The sidebar in the window: searching every chat and opening the message a hit points to."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from tests.helpers.gui import OpenWindow, send


def test_search_shows_snippets_and_opens_the_hit(qtbot: QtBot, open_window: OpenWindow) -> None:
    window = open_window()
    send(qtbot, window, "My axolotl is called Pancake.")
    found_in = window.controller.current
    window.controller.new_chat()
    chats = window.sidebar.chats
    qtbot.keyClicks(window.sidebar.search_box, "axolotl")
    qtbot.waitUntil(lambda: chats.count() >= 1 and "axolotl" in chats.item(0).text(), timeout=10_000)
    chats.itemClicked.emit(chats.item(0))
    qtbot.waitUntil(lambda: window.chat.view is not None and window.chat.view.id == found_in, timeout=10_000)
    assert "Pancake" in window.chat.toPlainText()
