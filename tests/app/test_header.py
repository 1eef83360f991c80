"""The header in the window: a persona chosen there gives its instructions to the chat."""

from __future__ import annotations

from pytestqt.qtbot import QtBot

from tests.helpers.gui import OpenWindow, rows, send


def test_a_persona_gives_a_new_chat_and_the_open_one_their_instructions(
        qtbot: QtBot, open_window: OpenWindow) -> None:
    window = open_window()
    persona = window.header.persona
    concise = window.settings.personas[0]
    persona.setCurrentIndex(persona.findText(concise.name))
    persona.activated.emit(persona.currentIndex())
    send(qtbot, window, "Hi!")
    chat = window.controller.current
    assert rows("SELECT system_prompt FROM conversations WHERE id = ?", chat) == [(concise.instructions,)]
    assert persona.currentText() == concise.name  # shown again after the reply reloads the chat

    persona.setCurrentIndex(0)
    persona.activated.emit(0)
    qtbot.waitUntil(lambda: rows("SELECT system_prompt FROM conversations WHERE id = ?", chat) == [(None,)])
