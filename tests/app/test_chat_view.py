"""The conversation view in the window: alternatives to page through, how often a stream is painted,
and "Why this answer" kept with each reply."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pygments.lexer import Lexer
from PySide6.QtCore import QUrl
from pytestqt.qtbot import QtBot

import app.render
from app.main_window import MainWindow
from app.worker import EngineWorker
from engine import ConversationView, Done, Message, Started, Token, open_profile
from tests.helpers.gui import FAST, OpenWindow, idle, record_paints, remembered, rows, send


def test_regenerate_and_edit_keep_alternatives_to_page_through(qtbot: QtBot, open_window: OpenWindow) -> None:
    window = open_window(FAST.updated(temperature=0.9, seed=-1))
    send(qtbot, window, "Name a colour.")
    assert window.chat.view is not None
    user, first = window.chat.view.messages
    window.chat.anchorClicked.emit(QUrl(f"cleo:regenerate/{first.id}"))
    qtbot.waitUntil(lambda: window.controller.busy, timeout=10_000)
    idle(qtbot, window)
    second = window.chat.view.messages[-1]
    assert second.id != first.id and window.chat.view.alternatives[second.id] == (2, 2)
    assert "2/2" in window.chat.toPlainText()

    window.chat.anchorClicked.emit(QUrl(f"cleo:alt/{second.id}/-1"))
    qtbot.waitUntil(lambda: window.chat.view is not None and window.chat.view.messages[-1].id == first.id)
    assert "1/2" in window.chat.toPlainText()

    window.controller.edit(user.id, "Name a fruit.")
    qtbot.waitUntil(lambda: window.controller.busy, timeout=10_000)
    idle(qtbot, window)
    edited = window.chat.view.messages[0]
    assert edited.content == "Name a fruit." and window.chat.view.alternatives[edited.id] == (2, 2)
    assert rows("SELECT count(*) FROM messages WHERE role = 'user'") == [(2,)]


def test_tokens_are_painted_at_most_twenty_times_a_second(qtbot: QtBot, profile: Path) -> None:
    """Pure window logic: a scripted stream of 100 tokens/s, sent as the engine's worker sends it."""
    window = MainWindow(FAST, EngineWorker(FAST))  # its engine is never started
    qtbot.addWidget(window)
    paints = record_paints(window)
    stream = window.worker.turn_advanced  # emitted on this thread: the controller gets each event at once
    window.controller.current = "chat"
    stream.emit("chat", Started("chat", "u", "r"))
    start = time.monotonic()
    for i in range(100):
        stream.emit("chat", Token(f"w{i} "))
        qtbot.wait(10)  # the stream's pace, not a wait for anything
    stream.emit("chat", Done("r", "stop"))
    seconds = time.monotonic() - start
    assert len(paints) <= 20 * seconds + 3
    assert paints[-1].endswith("w99 ")  # the last tokens are painted when the reply ends


def test_a_code_blocks_language_is_guessed_once_while_its_reply_streams(
        qtbot: QtBot, monkeypatch: pytest.MonkeyPatch) -> None:
    guessed: list[str] = []
    guess = app.render.guess_lexer

    def counting(text: str) -> Lexer:
        guessed.append(text)
        return guess(text)

    monkeypatch.setattr(app.render, "guess_lexer", counting)
    window = MainWindow(FAST, EngineWorker(FAST))  # its engine is never started
    qtbot.addWidget(window)
    paints = record_paints(window)
    stream = window.worker.turn_advanced
    window.controller.current = "chat"
    stream.emit("chat", Started("chat", "u", "r"))
    reply = "Here it is:\n```\n"
    stream.emit("chat", Token(reply))
    for i in range(60):
        token = f"total_{i} = compute(values[{i}]) + offset\n"
        reply += token
        stream.emit("chat", Token(token))
        qtbot.wait(10)
    stream.emit("chat", Done("r", "stop"))
    # the chat comes back from the engine with the reply saved, and is shown again
    saved = (Message("u", "chat", "user", "Some code?", None, 1.7e9),
             Message("r", "chat", "assistant", reply, "u", 1.7e9, "stop"))
    window.controller.on_worker_conversation_loaded(ConversationView("chat", "t", saved))
    assert len(paints) >= 5 and paints[-1] == reply  # it was repainted many times while the block grew
    assert len(guessed) == 1 and "total_0" in window.chat.toPlainText()


def test_why_this_answer_is_kept_with_the_reply_and_a_forgotten_memory_leaves_it(
        qtbot: QtBot, open_window: OpenWindow) -> None:
    memories = open_profile()
    _, cat = memories.book.add("The user's cat is called Miso", "fact")
    memories.close()
    window = open_window()
    send(qtbot, window, "What is my cat called?")
    reply = window.chat.view.messages[-1].id if window.chat.view else ""
    assert [item.text for item in window.chat.why[reply]] == ["The user's cat is called Miso."]
    window.close()

    again = open_window()  # Cleo reopened: the last chat comes back with its "Why this answer"
    qtbot.waitUntil(lambda: again.chat.view is not None and again.chat.view.messages[-1].id == reply, timeout=10_000)
    assert [item.memory_id for item in again.chat.why[reply]] == [cat.id]
    assert "Why this answer (1)" in again.chat.toPlainText()

    panel = again.memory_panel
    qtbot.waitUntil(lambda: "The user's cat is called Miso." in remembered(panel))
    panel.remembered.setCurrentItem(remembered(panel)["The user's cat is called Miso."])
    panel.forget_button.click()
    qtbot.waitUntil(lambda: reply not in again.chat.why, timeout=10_000)
    assert "Why this answer" not in again.chat.toPlainText(), again.chat.toPlainText()
