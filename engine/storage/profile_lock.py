"""The lock that keeps a profile to one Cleo at a time.

Apart from database.py so that a second launch can ask "is this profile open?" before it shows
a window, without importing SQLite. The lock is a byte-range/flock lock on a file beside the
database: the OS drops it when the process ends, so a crash never leaves the profile locked.
The lock file is empty and private (0600 on POSIX) like everything else in the profile.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO

from engine.errors import KnownError
from engine.paths import folders, make_private_file

DATABASE_FILE = "cleo.db"
_TRIES = 5


class DatabaseInUse(KnownError):
    """Another Cleo has this profile open."""


def default_database_path() -> Path:
    return folders().data / DATABASE_FILE


def lock_file(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


def lock_profile(database: Path) -> IO[bytes]:
    """Take the profile's lock, held until `unlock`; raises DatabaseInUse when another Cleo holds it."""
    lock = make_private_file(lock_file(database)).open("a+b")
    # A second launch's `in_use` holds the lock for a moment: wait that out before refusing.
    for attempt in range(_TRIES):
        if attempt:
            time.sleep(0.05)
        if _try_lock(lock):
            return lock
    lock.close()
    raise DatabaseInUse(f"Another Cleo is already using {database}.",
                        hint="Switch to the Cleo that has it open (a window, or `cleo chat` in a terminal), "
                             "or close it first.")


def unlock(lock: IO[bytes]) -> None:
    lock.close()  # closing the file releases the lock on every platform


def in_use(database: Path) -> bool:
    """Whether another process holds the profile's lock now (taken and given back at once if not)."""
    try:
        lock = lock_file(database).open("rb")
    except OSError:  # no lock file: no Cleo has ever opened this profile
        return False
    with lock:
        return not _try_lock(lock)


def _try_lock(lock: IO[bytes]) -> bool:
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(lock.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
