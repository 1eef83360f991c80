"""Cleo's database: one SQLite file per profile, opened in one place.

`open_database` gives a `Database` on a `sqlean` connection (Python's own sqlite3 often cannot
load extensions) with sqlite-vec loaded, WAL, foreign keys and secure delete on. It checks the
file is intact, takes a lock so a second Cleo cannot write the same profile, proves vec0 and FTS5
work, and brings the schema up to date (`engine.storage.migrations`).

The profile is private: its folder is 0700 and the database, its `-wal` and `-shm`, the lock and
the backups are 0600 on POSIX whatever the umask. SQLite gives `-wal` and `-shm` the database
file's mode, so the file is created 0600 before SQLite opens it, and files an older Cleo left
with wider modes are narrowed at each open. On Windows the same calls run and change nothing:
a user's profile folders are theirs alone already.

A damaged file is never recreated silently: the error names it and the latest backup.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import sqlean
import sqlite_vec

from engine.errors import KnownError
from engine.paths import ensure, make_private_file
from engine.storage.migrations import backups_folder, migrate
from engine.storage.profile_lock import DatabaseInUse, default_database_path, lock_file, lock_profile, unlock

log = logging.getLogger(__name__)

_CHECKPOINT_TRIES = 2  # each waits up to the connection's busy timeout for readers to finish


class DatabaseDamaged(KnownError):
    """The database file is not a database, or is damaged."""


class InstallationIncomplete(KnownError):
    """A part of Cleo itself is missing or broken (not the user's data)."""


class DiskFull(KnownError):
    """A write failed because the disk (or the database's size limit) is full."""


class Database:
    """The open database: `conn` for queries, `write()` for transactions."""

    def __init__(self, path: Path, conn: Any, lock: IO[bytes] | None) -> None:
        self.path = path
        self.conn = conn
        self._lock = lock
        self.caches: dict[str, object] = {}  # in-memory state derived from this connection's data
        self.log_not_emptied = False  # a checkpoint was refused: deleted text may still be in the -wal file
        self._writing = 0  # how many `write()` blocks are open, one inside the other

    @contextmanager
    def write(self) -> Iterator[Any]:
        """One transaction: committed when the block ends, rolled back on an error (a failed COMMIT
        included), and the error that failed it is the one raised.

        Inside another `write()` it is part of that transaction (a savepoint: an error rolls back
        its own writes), so code that saves through its own `write()` can be made one with more."""
        if self._writing:
            with self._savepoint():
                yield self.conn
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self._writing = 1
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                self._roll_back()
                raise
            finally:
                self._writing = 0
        except sqlean.OperationalError as exc:
            raise _write_error(self.path, exc) from exc

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        name = f"write_{self._writing}"
        self._writing += 1
        try:
            self.conn.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute(f"ROLLBACK TO {name}")
                    self.conn.execute(f"RELEASE {name}")
                raise
            self.conn.execute(f"RELEASE {name}")
        finally:
            self._writing -= 1

    def _roll_back(self) -> None:
        """End the failed transaction, if SQLite has not ended it already (it does on some errors:
        a full disk, an I/O error). A failure here is logged, never raised: it would hide the
        error that made the transaction fail, which is the one the user must see."""
        if not self.conn.in_transaction:
            return
        try:
            self.conn.execute("ROLLBACK")
        except sqlean.Error:
            log.exception("could not roll back a failed transaction on %s", self.path)

    def empty_log(self) -> bool:
        """Copy the write-ahead log into the database and truncate it to nothing, so pages that
        held deleted text leave the `-wal` file; whether it was done.

        A reader in the middle of a transaction makes SQLite refuse (it reports "busy" rather than
        failing): retried, then logged and retried at the next delete and at close."""
        for _ in range(_CHECKPOINT_TRIES):
            busy, _, _ = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                self.log_not_emptied = False
                return True
        log.warning("the write-ahead log of %s could not be emptied (a reader kept it busy); "
                    "trying again at the next delete and when Cleo closes", self.path)
        self.log_not_emptied = True
        return False

    def reader(self) -> Database:
        """A second connection for reading on another thread (WAL lets it read while we write)."""
        return Database(self.path, connect(self.path), None)

    def close(self) -> None:
        for cached in self.caches.values():
            closer = getattr(cached, "close", None)
            if closer is not None:
                closer()
        self.caches.clear()
        if self.log_not_emptied:
            try:
                self.empty_log()
            except sqlean.Error:  # closing must not fail; the log says deleted text may be left
                log.exception("could not empty the write-ahead log of %s at close", self.path)
        self.conn.close()
        if self._lock is not None:
            unlock(self._lock)
            self._lock = None


def open_database(path: Path | None = None) -> Database:
    """Open (or create) the profile's database, checked, locked and migrated."""
    path = path or default_database_path()
    ensure(path.parent)
    lock = lock_profile(path)
    try:
        existed = path.exists() and path.stat().st_size > 0
        make_private_files(path)
        conn = connect(path)
        if existed:
            _check_intact(path, conn)
        database = Database(path, conn, lock)
        _self_test(database)
        migrate(database, backup=existed)
        return database
    except BaseException:
        unlock(lock)
        raise


def make_private_files(path: Path) -> None:
    """The database (created empty if missing, before SQLite creates it with the umask's mode), its
    `-wal` and `-shm`, its lock and its backups: readable and writable by the user alone."""
    make_private_file(path)
    for side in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"), lock_file(path)):
        if side.exists():
            make_private_file(side)
    backups = backups_folder(path)
    if backups.is_dir():
        ensure(backups)
        for backup in backups.iterdir():
            if backup.is_file() and not backup.is_symlink():
                make_private_file(backup)


def connect(path: Path, *, journal_mode: str = "WAL", timeout: float = 5.0) -> Any:
    """A connection as Cleo needs it: sqlite-vec loaded, foreign keys and secure delete on.
    Backups are single files: they are opened with `journal_mode` "DELETE". `timeout`: how long
    a statement waits for another connection's lock before it fails as busy."""
    conn = sqlean.connect(str(path), isolation_level=None, check_same_thread=True, timeout=timeout)
    try:
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
    except sqlean.OperationalError as exc:  # the extension itself is missing: not the user's data
        conn.close()
        raise InstallationIncomplete(f"Cleo's vector search extension could not be loaded ({exc}).",
                                     hint="Reinstall Cleo; your chats and memories are not affected.") from exc
    try:
        conn.execute(f"PRAGMA journal_mode = {journal_mode}")
        conn.execute("PRAGMA synchronous = NORMAL")  # with WAL: a crash of Cleo loses nothing committed
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA secure_delete = ON")  # deleted text is overwritten, not left in free pages
    except sqlean.DatabaseError as exc:
        conn.close()
        raise _damaged(path, exc) from exc
    return conn


def _check_intact(path: Path, conn: Any) -> None:
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlean.DatabaseError as exc:
        conn.close()
        raise _damaged(path, exc) from exc
    if problems != ["ok"]:
        conn.close()
        raise _damaged(path, RuntimeError("; ".join(problems[:3])))


def _self_test(database: Database) -> None:
    """vec0 and FTS5 must work, or memory cannot; say so now rather than on the first search."""
    conn = database.conn
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.cleo_fts_check USING fts5(x)")
        conn.execute("DROP TABLE temp.cleo_fts_check")
        conn.execute("SELECT vec_distance_cosine(vec_f32('[1, 0]'), vec_f32('[0, 1]'))").fetchone()
    except sqlean.OperationalError as exc:
        raise KnownError(f"The SQLite that came with Cleo lacks a part memory needs ({exc}).",
                         hint="Reinstall Cleo; the sqlean.py and sqlite-vec packages must be installed.") from exc


def latest_backup(path: Path) -> Path | None:
    found = sorted(backups_folder(path).glob(f"{path.stem}-*.db"))
    return found[-1] if found else None


def restore_latest_backup(path: Path) -> Path:
    """Put the newest backup in place of a damaged database; the damaged file is kept aside."""
    backup = latest_backup(path)
    if backup is None:
        raise DatabaseDamaged(f"There is no backup of {path} to restore.", hint="")
    damaged = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, damaged)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, damaged.with_name(damaged.name + suffix))
    make_private_file(path)
    shutil.copyfile(backup, path)  # into the 0600 file: a copy of the backup's mode could be wider
    return backup


def _damaged(path: Path, exc: BaseException) -> DatabaseDamaged:
    backup = latest_backup(path)
    hint = (f"Cleo has a backup from {time.ctime(backup.stat().st_mtime)} at {backup}; "
            "restore it from the app or with `cleo database restore`. The damaged file is kept aside."
            if backup else "There is no backup yet. Move the file away to start with an empty history.")
    return DatabaseDamaged(f"Cleo's database {path} is damaged or is not a database ({exc}).", hint=hint)


def _write_error(path: Path, exc: sqlean.OperationalError) -> KnownError:
    text = str(exc)
    if "full" in text:
        return DiskFull(f"Cleo could not save to {path}: the disk is full ({text}).",
                        hint="Free some disk space; everything saved before is safe.")
    if "locked" in text or "busy" in text:
        return DatabaseInUse(f"{path} is busy ({text}).", hint="Try again in a moment.")
    return KnownError(f"Cleo could not save to {path} ({text}).", hint="Details are in the log file.")
