"""A second double-click while Cleo is open brings the open window forward.

A profile is locked to one Cleo, so a second window could only explain that it cannot work. The
open Cleo watches a folder in its data folder instead; a second launch drops a request file
there and waits for it to be taken (deleted), which is the answer. If nobody takes it (the
profile is held by `cleo chat`, or by a Cleo that hangs), the second launch opens its window as
before and that window explains. Files rather than a local socket: QtNetwork would add
megabytes to the bundle, and a file works alike on every OS.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QFileSystemWatcher, QObject, QTimer

from engine.profile_lock import in_use

log = logging.getLogger(__name__)

_REQUESTS = "window-requests"
_REQUEST_SUFFIX = ".request"
ANSWER_WITHIN_S = 3.0


def bring_open_cleo_forward(database: Path, *, wait_s: float = ANSWER_WITHIN_S) -> bool:
    """From a second launch: ask the Cleo that holds `database` to show its window. True once it
    took the request; False when no Cleo holds the profile or none answered within `wait_s`."""
    if not in_use(database):
        return False
    folder = database.parent / _REQUESTS
    request = folder / f"{os.getpid()}-{time.monotonic_ns()}{_REQUEST_SUFFIX}"
    try:
        folder.mkdir(exist_ok=True)
        request.touch()
    except OSError as exc:
        log.warning("could not ask the open Cleo to come forward (%s)", exc)
        return False
    _let_the_open_cleo_take_the_foreground()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not request.exists():
            return True
        time.sleep(0.02)
    try:
        request.unlink()
    except FileNotFoundError:  # taken at the last moment
        return True
    return False


def _let_the_open_cleo_take_the_foreground() -> None:
    # Windows lets only the process the user just started raise a window; this hands that
    # right on to the open Cleo, or its window would only flash in the taskbar.
    if sys.platform == "win32":
        import ctypes

        ctypes.windll.user32.AllowSetForegroundWindow(-1)  # ASFW_ANY


class SecondLaunches(QObject):
    """In the open Cleo: take each request in the folder and call `show_window` once per batch."""

    def __init__(self, database: Path, show_window: Callable[[], None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._folder = database.parent / _REQUESTS
        self._show_window = show_window
        self._watcher = QFileSystemWatcher(self)
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("a second launch cannot bring this window forward: %s", exc)
            return
        for stale in self._requests():  # left by a second launch that gave up: not a request now
            stale.unlink(missing_ok=True)
        if self._watcher.addPath(str(self._folder)):
            self._watcher.directoryChanged.connect(self._take_requests)
        else:  # out of inotify watches, say: look twice a second instead
            log.warning("cannot watch %s; checking it twice a second instead", self._folder)
            self._poll = QTimer(self)
            self._poll.timeout.connect(self._take_requests)
            self._poll.start(500)

    def _requests(self) -> list[Path]:
        try:
            return [p for p in self._folder.iterdir() if p.name.endswith(_REQUEST_SUFFIX)]
        except OSError:
            return []

    def _take_requests(self) -> None:
        taken = False
        for request in self._requests():
            try:
                request.unlink()
            except OSError:  # the asker gave up and removed it first
                continue
            taken = True
        if taken:
            log.info("a second launch asked for this window")
            self._show_window()
