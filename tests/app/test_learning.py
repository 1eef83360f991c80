"""Learning from chats in the window: it waits until the user is idle and never holds up a reply.

Both shorten the Session's idle delay, and the first slows down its memory's learning: the point
is when the window learns, which nothing on screen shows.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

from engine import Session, Settings, open_profile
from tests.helpers.gui import OpenWindow, rows, send
from tests.helpers.scripted_model import ScriptedChatModel


def test_a_message_sent_while_cleo_learns_waits_for_one_learning_step_not_all(
        qtbot: QtBot, open_window: OpenWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engine.session.IDLE_BEFORE_LEARNING_S", 0.05)
    window = open_window()
    assert window.worker.session is not None
    assistant = window.worker.session.assistant
    steps_done: list[float] = []

    class SlowLearning:  # scripted: the point is when the worker learns, not what it learns
        def __init__(self, memory: Any) -> None:
            self._memory, self.left = memory, 4

        def __getattr__(self, name: str) -> Any:
            return getattr(self._memory, name)

        @property
        def learning_pending(self) -> bool:
            return self.left > 0

        def learn(self, ask: Any, *, at_most: int | None = None) -> list[Any]:
            for _ in range(min(at_most or self.left, self.left)):
                time.sleep(0.4)  # one model call
                self.left -= 1
                steps_done.append(time.monotonic())
            return []

    learning = SlowLearning(assistant.memory)
    assistant.memory = learning
    replies_started: list[float] = []
    window.worker.busy_changed.connect(lambda busy: replies_started.append(time.monotonic()) if busy else None)
    send(qtbot, window, "Hello")  # learning starts once the reply is done and the user is idle
    qtbot.waitUntil(lambda: len(steps_done) >= 1, timeout=10_000)
    sent = time.monotonic()
    send(qtbot, window, "And another thing")
    assert sum(sent < t < replies_started[-1] for t in steps_done) <= 1  # at most the step under way
    qtbot.waitUntil(lambda: learning.left == 0, timeout=10_000)  # and the rest is learned afterwards
    assert len(steps_done) == 4


def test_learning_left_over_from_the_last_session_is_done_once_the_user_is_idle(
        qtbot: QtBot, open_window: OpenWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    last = Session(open_profile(), ScriptedChatModel(["Nice!"]), Settings())  # the last run of Cleo
    list(last.run(last.send("", "I have a dog called Rex.")))
    last.close()  # before it learned from the turn
    assert rows("SELECT count(*) FROM learning_queue") == [(1,)]
    monkeypatch.setattr("engine.session.IDLE_BEFORE_LEARNING_S", 0.05)
    open_window()
    qtbot.waitUntil(lambda: rows("SELECT count(*) FROM learning_queue") == [(0,)], timeout=60_000)
