"""Logging to a rotating file in Cleo's logs folder.

Users never see tracebacks; the log file keeps them for bug reports. Calling `setup_logging`
twice does not add a second handler.
"""

from __future__ import annotations

import logging
from logging.handlers import RotatingFileHandler
from pathlib import Path

from engine.paths import ensure, folders

LOG_FILE = "cleo.log"
_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> Path:
    """Send Cleo's log records to `<logs>/cleo.log` (2 MB per file, 3 old files kept)."""
    path = ensure(folders().logs) / LOG_FILE
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, RotatingFileHandler) and Path(handler.baseFilename) == path:
            return path
    handler = RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(handler)
    root.setLevel(min(root.getEffectiveLevel(), level))
    return path
