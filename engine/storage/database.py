"""Cleo's database: one SQLite file per profile, opened in one place.

`open_database` gives a `Database` on a `sqlean` connection (Python's own sqlite3 often cannot
load extensions) with sqlite-vec loaded, WAL, foreign keys and secure delete on. It checks the
file is intact, takes a lock so a second Cleo cannot write the same profile, proves vec0 and FTS5
work, and brings the schema up to date (`engine.storage.migrations`).

A damaged file is never recreated silently: the error names it and the latest backup.
"""

from __future__ import annotations

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
from engine.paths import ensure
from engine.storage.migrations import backups_folder, migrate
from engine.storage.profile_lock import DatabaseInUse, default_database_path, lock_profile, unlock


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

    @contextmanager
    def write(self) -> Iterator[Any]:
        """One transaction: committed when the block ends, rolled back on an error."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlean.OperationalError as exc:
            raise _write_error(self.path, exc) from exc

    def reader(self) -> Database:
        """A second connection for reading on another thread (WAL lets it read while we write)."""
        return Database(self.path, _connect(self.path), None)

    def close(self) -> None:
        for cached in self.caches.values():
            closer = getattr(cached, "close", None)
            if closer is not None:
                closer()
        self.caches.clear()
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
        conn = _connect(path)
        if existed:
            _check_intact(path, conn)
        database = Database(path, conn, lock)
        _self_test(database)
        migrate(database, backup=existed)
        return database
    except BaseException:
        unlock(lock)
        raise


def _connect(path: Path) -> Any:
    conn = sqlean.connect(str(path), isolation_level=None, check_same_thread=True, timeout=5.0)
    try:
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
    except sqlean.OperationalError as exc:  # the extension itself is missing: not the user's data
        conn.close()
        raise InstallationIncomplete(f"Cleo's vector search extension could not be loaded ({exc}).",
                                     hint="Reinstall Cleo; your chats and memories are not affected.") from exc
    try:
        conn.execute("PRAGMA journal_mode = WAL")
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
    shutil.copy2(backup, path)
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
