"""The window under test: a new user's profile, a window opened on it, and what the tests do with it.

`profile` and `open_window` are fixtures (tests/app/conftest.py makes them available there); the
rest are plain helpers. Windows run offscreen on the real engine and the default models.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QTreeWidgetItem
from pytestqt.qtbot import QtBot

from app.main_window import MainWindow
from app.memory_panel import MemoryPanel
from app.settings_dialog import SettingsDialog
from app.worker import EngineWorker
from engine import Settings, folders

FAST = Settings(threads=1, context_size=1024, max_tokens=12, temperature=0.0, seed=1)


class DefaultModelFiles(Protocol):
    """What the window's tests use of the session's `default_models` fixture."""

    @property
    def chat(self) -> Path: ...

    @property
    def dense_base(self) -> Path: ...

    def copy_home_to(self, home: Path) -> None: ...


class OpenWindow(Protocol):
    """The `open_window` fixture: a shown, started window; by default once its model is loaded."""

    def __call__(self, settings: Settings = FAST, *, ready: bool = True) -> MainWindow: ...


@pytest.fixture
def profile(default_models: DefaultModelFiles, cleo_home: Path) -> Path:
    """A new user's profile: the default models and nothing else."""
    shutil.copytree(default_models.chat.parent, folders().models)
    return cleo_home


@pytest.fixture
def open_window(qtbot: QtBot, profile: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenWindow]:
    """Opens windows that record the errors they would show (as `window.errors`) instead of blocking."""
    errors: list[str] = []

    def record(box: QMessageBox) -> int:
        errors.append(box.text())
        return QMessageBox.StandardButton.Ok.value

    monkeypatch.setattr(QMessageBox, "exec", record)
    windows: list[MainWindow] = []

    def make(settings: Settings = FAST, *, ready: bool = True) -> MainWindow:
        window = MainWindow(settings, EngineWorker(settings))
        window.errors = errors  # type: ignore[attr-defined]
        qtbot.addWidget(window)
        window.show()
        window.start()
        windows.append(window)
        if ready:
            qtbot.waitUntil(lambda: window.model_state is not None, timeout=60_000)
        return window

    yield make
    for window in windows:
        window.close()


def rows(sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the profile's database as another program would, while Cleo has it open."""
    path = folders().data / "cleo.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute(sql, args).fetchall()


def send(qtbot: QtBot, window: MainWindow, text: str, *, wait: bool = True) -> None:
    """Type `text` and press Enter; with `wait`, until the reply is written and shown."""
    window.composer.setPlainText(text)
    qtbot.keyClick(window.composer, Qt.Key.Key_Return)
    if wait:
        qtbot.waitUntil(lambda: window.controller.busy, timeout=10_000)
        idle(qtbot, window)


def idle(qtbot: QtBot, window: MainWindow) -> None:
    """Until no reply is being written and the chat on screen holds the last one."""
    qtbot.waitUntil(lambda: window.controller.settled, timeout=60_000)


def record_paints(window: MainWindow) -> list[str]:
    """The texts the streaming reply is painted with, in order."""
    painted: list[str] = []
    paint = window.chat.update_reply

    def recording(text: str) -> None:
        painted.append(text)
        paint(text)

    window.chat.update_reply = recording  # type: ignore[method-assign]
    return painted


def remembered(panel: MemoryPanel) -> dict[str, QTreeWidgetItem]:
    """The memory panel's Remembered list, by text."""
    items = (panel.remembered.topLevelItem(i) for i in range(panel.remembered.topLevelItemCount()))
    return {item.text(1): item for item in items if item is not None}


class ReaderWatch:
    """Notices anything opening the FIFO `fifo` to read. Another process keeps opening it to write,
    so every such reader reads end-of-file and goes on instead of waiting forever."""

    _WRITER = ("import pathlib, sys\n"
               "fifo, seen = sys.argv[1], pathlib.Path(sys.argv[2])\n"
               "while True:\n"
               "    open(fifo, 'wb').close()  # returns once a reader has opened the other end\n"
               "    seen.touch()\n")

    def __init__(self, fifo: Path) -> None:
        self._seen = fifo.with_name(fifo.name + ".opened")
        self._writer = subprocess.Popen([sys.executable, "-c", self._WRITER, str(fifo), str(self._seen)])

    def stop(self) -> bool:
        """Whether a reader came (the writer gets half a second to say so after a reader left)."""
        deadline = time.monotonic() + 0.5
        while not self._seen.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._writer.kill()
        self._writer.wait()
        return self._seen.exists()


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on (the OS picks it; it stays free for the moment a test needs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def in_settings(window: MainWindow, monkeypatch: pytest.MonkeyPatch, use: Callable[[SettingsDialog], bool]) -> None:
    """Open Settings from the window as the user does; `use(dialog)` works in it and says whether to press OK."""
    def run(dialog: SettingsDialog) -> int:
        if use(dialog):
            dialog.buttons.button(dialog.buttons.StandardButton.Ok).click()
        else:
            dialog.reject()
        return dialog.result()

    with monkeypatch.context() as patch:
        patch.setattr(SettingsDialog, "exec", run)
        window.open_settings()
    assert window.settings_dialog is None  # the window forgets the dialog once it is closed
