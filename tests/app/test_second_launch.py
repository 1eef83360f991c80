"""Launching Cleo while it is open: the open window comes forward, and no second one opens."""

from __future__ import annotations

import os
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.second_launch import SecondLaunches, bring_open_cleo_forward
from engine import default_database_path, open_profile
from tests.helpers.gui import OpenWindow, ReaderWatch


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


# --- the request folder holds whatever anyone put there -------------------------------------------------------


def _requests_folder() -> Path:
    folder = default_database_path().parent / "window-requests"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _precious(tmp_path: Path) -> Path:
    """A file of the user's outside Cleo's folders, that a link in the request folder points at."""
    precious = tmp_path / "documents" / "thesis.request"
    precious.parent.mkdir()
    precious.write_text("years of work", encoding="utf-8")
    return precious


@pytest.mark.usefixtures("qapp")
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_among_the_requests_does_not_hang_the_window() -> None:
    folder = _requests_folder()
    fifo = folder / "stuck.request"
    shown: list[bool] = []
    launches = SecondLaunches(default_database_path(), lambda: shown.append(True))
    os.mkfifo(fifo)  # after the start-up clean-up, as a FIFO made while Cleo runs would be
    (folder / "1-1.request").write_text("", encoding="utf-8")  # and a real request beside it
    watch = ReaderWatch(fifo)
    launches.on_poll_timeout()  # what the folder watcher calls; it must come back
    assert not watch.stop(), "the window opened the FIFO, and would have waited for a writer forever"
    assert shown == [True] and not (folder / "1-1.request").exists() and fifo.exists()


@pytest.mark.usefixtures("qapp")
@pytest.mark.skipif(sys.platform == "win32", reason="links need developer mode on Windows")
def test_links_in_the_request_folder_never_make_cleo_delete_or_read_their_targets(tmp_path: Path) -> None:
    folder = _requests_folder()
    precious = _precious(tmp_path)
    (folder / "stale.request").symlink_to(precious)  # there when Cleo starts: the clean-up must spare it
    shown: list[bool] = []
    launches = SecondLaunches(default_database_path(), lambda: shown.append(True))
    (folder / "new.request").symlink_to(precious)
    launches.on_poll_timeout()
    assert precious.read_text(encoding="utf-8") == "years of work"
    assert shown == []  # a link is not a request: nothing asked for the window


@pytest.mark.usefixtures("qapp")
@pytest.mark.skipif(sys.platform == "win32", reason="links need developer mode on Windows")
def test_a_request_folder_that_is_a_link_is_left_alone(tmp_path: Path) -> None:
    precious = _precious(tmp_path)
    folder = default_database_path().parent / "window-requests"
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(precious.parent, target_is_directory=True)
    launches = SecondLaunches(default_database_path(), lambda: None)
    launches.on_poll_timeout()
    assert precious.read_text(encoding="utf-8") == "years of work"


@pytest.mark.usefixtures("qapp")
@pytest.mark.skipif(sys.platform == "win32", reason="sparse files are made differently on Windows")
def test_a_huge_request_is_taken_after_reading_a_few_kilobytes(tmp_path: Path) -> None:
    folder = _requests_folder()
    shown: list[bool] = []
    launches = SecondLaunches(default_database_path(), lambda: shown.append(True))
    huge = folder / "2-2.request"
    with huge.open("wb") as f:
        f.truncate(64 * 2**20)  # 64 MB of zeros that take no disk
    tracemalloc.start()
    try:
        launches.on_poll_timeout()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shown == [True] and not huge.exists()
    assert peak < 1 * 2**20, f"taking one request allocated {peak} bytes"
