"""A second double-click while Cleo is open brings the open window forward.

A profile is locked to one Cleo, so a second window could only explain that it cannot work. The
open Cleo watches a folder in its data folder instead; a second launch drops a request file
there and waits for it to be taken (deleted), which is the answer. If nobody takes it (the
profile is held by `cleo chat`, or by a Cleo that hangs), the second launch opens its window as
before and that window explains. Files rather than a local socket: QtNetwork would add
megabytes to the bundle, and a file works alike on every OS.

Anything can be put in that folder, so the open Cleo trusts none of it: it reads only regular
files (a FIFO would block the window, a link could point anywhere), at most a few KB of each,
deletes only its own kind of file in the folder itself, and leaves a folder that is a link alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QFileSystemWatcher, QObject, QTimer

from engine import in_use

log = logging.getLogger(__name__)

_REQUESTS = "window-requests"
_REQUEST_SUFFIX = ".request"
_WRITING_SUFFIX = ".writing"
_MOST_READ = 4096  # a request holds a focus token (about a hundred bytes) or nothing
ANSWER_WITHIN_S = 3.0
_WAYLAND_TOKEN = "XDG_ACTIVATION_TOKEN"


def bring_open_cleo_forward(database: Path, *, wait_s: float = ANSWER_WITHIN_S) -> bool:
    """From a second launch: ask the Cleo that holds `database` to show its window. True once it
    took the request; False when no Cleo holds the profile or none answered within `wait_s`."""
    if not in_use(database):
        return False
    # A Wayland launcher hands the app it starts a one-use token that lets a window take the
    # focus: it goes to the open Cleo (see SecondLaunches._show), or stays for our own window.
    token = os.environ.pop(_WAYLAND_TOKEN, "")
    if _ask(database.parent / _REQUESTS, token, wait_s):
        return True
    if token:
        os.environ[_WAYLAND_TOKEN] = token
    return False


def _ask(folder: Path, token: str, wait_s: float) -> bool:
    name = f"{os.getpid()}-{time.monotonic_ns()}"
    request = folder / f"{name}{_REQUEST_SUFFIX}"
    try:
        folder.mkdir(exist_ok=True)
        writing = folder / f"{name}{_WRITING_SUFFIX}"
        writing.write_text(token, encoding="utf-8")
        writing.replace(request)  # whole, never half-written, when the open Cleo looks
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
            if not self._is_own_folder():
                raise OSError(f"{self._folder} is not a folder of its own (a link?)")
        except OSError as exc:
            log.warning("a second launch cannot bring this window forward: %s", exc)
            return
        for path in self._own_files((_REQUEST_SUFFIX, _WRITING_SUFFIX)):  # left by second launches that died
            with contextlib.suppress(OSError):
                path.unlink()
        if self._watcher.addPath(str(self._folder)):
            self._watcher.directoryChanged.connect(self.on_watcher_directory_changed)
        else:  # out of inotify watches, say: look twice a second instead
            log.warning("cannot watch %s; checking it twice a second instead", self._folder)
            self._poll = QTimer(self)
            self._poll.timeout.connect(self.on_poll_timeout)
            self._poll.start(500)

    def on_watcher_directory_changed(self, _folder: str) -> None:
        self._take_requests()

    def on_poll_timeout(self) -> None:
        self._take_requests()

    def _own_files(self, suffixes: tuple[str, ...]) -> list[Path]:
        """The regular files in the folder (not links, FIFOs or folders) whose names end in `suffixes`."""
        try:
            if not self._is_own_folder():  # a link to a folder of the user's, made since Cleo started
                return []
            with os.scandir(self._folder) as entries:
                return [Path(e.path) for e in entries if e.name.endswith(suffixes) and e.is_file(follow_symlinks=False)]
        except OSError:
            return []

    def _is_own_folder(self) -> bool:
        return stat.S_ISDIR(self._folder.lstat().st_mode)

    def _take_requests(self) -> None:
        tokens: list[str] = []
        for request in self._own_files((_REQUEST_SUFFIX,)):
            try:
                token = _read_request(request)
                request.unlink()  # never follows a link: what goes is the name in this folder
            except OSError:  # the asker gave up and removed it first, or it is not a plain file after all
                continue
            tokens.append(token)
        if tokens:
            log.info("a second launch asked for this window")
            self._show(tokens[-1])

    def _show(self, token: str) -> None:
        # Qt's Wayland plugin presents XDG_ACTIVATION_TOKEN with the window's activation
        # request (and unsets it); without one, a compositor only marks the window as urgent.
        if token and len(token) <= 1024 and token.isprintable():
            os.environ[_WAYLAND_TOKEN] = token
        try:
            self._show_window()
        finally:
            os.environ.pop(_WAYLAND_TOKEN, None)


def _read_request(path: Path) -> str:
    """The first few KB of a request, refusing anything that became a link or a FIFO since it was
    listed (opening a FIFO without O_NONBLOCK waits for a writer that may never come)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = os.read(fd, _MOST_READ)
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace").strip()
