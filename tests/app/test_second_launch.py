"""Launching Cleo while it is open: the open window comes forward, and no second one opens."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.second_launch import SecondLaunches, bring_open_cleo_forward
from engine import default_database_path, open_profile
from tests.helpers.gui import OpenWindow


def test_a_profile_held_by_something_that_is_not_a_window_gets_no_answer(cleo_home: Path) -> None:
    database = default_database_path()
    assert not bring_open_cleo_forward(database)  # nobody holds it: open a window as usual
    holder = open_profile()  # `cleo chat`, say: it holds the profile but has no window to show
    try:
        assert not bring_open_cleo_forward(database, wait_s=0.3)
    finally:
        holder.close()
    requests = database.parent / "window-requests"
    assert not requests.exists() or not list(requests.iterdir())  # the unanswered request is taken back


def _launch_again(qtbot: QtBot) -> bool:
    """What a second launch does first, on a thread of its own while this event loop answers it."""
    answered: list[bool] = []
    second_launch = threading.Thread(target=lambda: answered.append(bring_open_cleo_forward(default_database_path())))
    second_launch.start()
    qtbot.waitUntil(lambda: bool(answered), timeout=10_000)
    second_launch.join()
    return answered == [True]


def test_launching_cleo_again_brings_the_minimised_window_back(qtbot: QtBot, open_window: OpenWindow) -> None:
    window = open_window()
    SecondLaunches(default_database_path(), window.bring_forward, parent=window)  # as app.gui wires it
    window.showMinimized()
    assert window.isMinimized()
    assert _launch_again(qtbot)
    assert window.isVisible() and not window.isMinimized()


def test_the_launchers_focus_token_goes_to_the_open_window(qtbot: QtBot, open_window: OpenWindow,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # On Wayland a window takes the focus only with the token the launcher gave the new process.
    window = open_window()
    presented: list[str | None] = []
    SecondLaunches(default_database_path(), lambda: presented.append(os.environ.get("XDG_ACTIVATION_TOKEN")),
                   parent=window)
    monkeypatch.setenv("XDG_ACTIVATION_TOKEN", "launcher-token-7")
    assert _launch_again(qtbot) and presented == ["launcher-token-7"]
    assert "XDG_ACTIVATION_TOKEN" not in os.environ  # used once, and not left for anything Cleo starts
