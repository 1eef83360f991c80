"""Logging to a rotating file in Cleo's logs folder.

Users never see tracebacks; the log file keeps them for bug reports. Calling `setup_logging`
twice does not add a second handler.

The log is part of the private profile: its folder is 0700 and every log file, the rotated ones
included, is 0600 on POSIX (Windows gives the user's folders to that user already). Log records
name chats, messages and memories by id, never by what they say: a chat deleted or a memory
forgotten must not live on in the log (tests/engine/test_privacy.py searches it).
"""

from __future__ import annotations

import logging
from io import TextIOWrapper
from logging.handlers import RotatingFileHandler
from pathlib import Path

from engine.paths import ensure, folders, make_private_file

LOG_FILE = "cleo.log"
_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"
_OLD_FILES = 3


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A `RotatingFileHandler` whose files are created 0600, whatever the umask: the first one and
    each new one after a rollover (the renamed old files keep the mode they had)."""

    def _open(self) -> TextIOWrapper:
        make_private_file(Path(self.baseFilename))
        return super()._open()


def setup_logging(level: int = logging.INFO) -> Path:
    """Send Cleo's log records to `<logs>/cleo.log` (2 MB per file, `_OLD_FILES` old files kept)."""
    path = ensure(folders().logs) / LOG_FILE
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, RotatingFileHandler) and Path(handler.baseFilename) == path:
            return path
    for old in (path, *(path.with_name(f"{LOG_FILE}.{n}") for n in range(1, _OLD_FILES + 1))):
        if old.is_file():  # left by a Cleo that created them with the umask's mode
            make_private_file(old)
    handler = PrivateRotatingFileHandler(path, maxBytes=2_000_000, backupCount=_OLD_FILES, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    root.setLevel(min(root.getEffectiveLevel(), level))
    return path
