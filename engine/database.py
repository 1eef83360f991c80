"""Cleo's database: one SQLite file per profile, opened in one place (DESIGN.md decision 4).

`open_database` gives a `sqlite_utils.Database` on a `sqlean` connection (Python's own sqlite3
often cannot load extensions) with sqlite-vec loaded, WAL, foreign keys and secure delete on. It
checks the file is intact, takes a lock so a second Cleo cannot write the same profile, proves
vec0 and FTS5 work, and applies the named migrations that are missing, each once, after copying
the file to `backups/`.

A damaged file is never recreated silently: the error names it and the latest backup.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import sqlean
import sqlite_utils
import sqlite_vec

from engine.errors import KnownError
from engine.paths import ensure
from engine.profile_lock import DatabaseInUse, default_database_path, lock_profile, unlock

log = logging.getLogger(__name__)

EMBEDDING_DIMENSION = 384  # all-MiniLM-L6-v2, the default embedder
_KEEP_BACKUPS = 5


class DatabaseDamaged(KnownError):
    """The database file is not a database, or is damaged."""


class InstallationIncomplete(KnownError):
    """A part of Cleo itself is missing or broken (not the user's data)."""


class DiskFull(KnownError):
    """A write failed because the disk (or the database's size limit) is full."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str


_FTS_SYNC = """
CREATE TRIGGER {table}_fts_insert AFTER INSERT ON {table} BEGIN
  INSERT INTO {table}_fts(rowid, content) VALUES (new.rowid, new.content);
END;
CREATE TRIGGER {table}_fts_delete AFTER DELETE ON {table} BEGIN
  INSERT INTO {table}_fts({table}_fts, rowid, content) VALUES ('delete', old.rowid, old.content);
END;
CREATE TRIGGER {table}_fts_update AFTER UPDATE OF content ON {table} BEGIN
  INSERT INTO {table}_fts({table}_fts, rowid, content) VALUES ('delete', old.rowid, old.content);
  INSERT INTO {table}_fts(rowid, content) VALUES (new.rowid, new.content);
END;
"""
_FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"

# Applied in order, each once; never edit one that has shipped, add a new one.
MIGRATIONS = [
    Migration("0001-conversations", f"""
CREATE TABLE conversations (
  id TEXT PRIMARY KEY,
  title TEXT NOT NULL DEFAULT '',
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  pinned INTEGER NOT NULL DEFAULT 0,
  archived INTEGER NOT NULL DEFAULT 0,
  temporary INTEGER NOT NULL DEFAULT 0,
  model TEXT NOT NULL DEFAULT '',
  system_prompt TEXT,
  memory_enabled INTEGER NOT NULL DEFAULT 1,
  current_leaf_id TEXT
);
CREATE TABLE messages (
  rowid INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
  parent_id TEXT,
  role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
  content TEXT NOT NULL,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  prompt_tokens INTEGER,
  completion_tokens INTEGER,
  model TEXT NOT NULL DEFAULT '',
  finish_reason TEXT NOT NULL DEFAULT '',
  source_id TEXT
);
CREATE INDEX messages_by_conversation ON messages(conversation_id, created_at);
CREATE INDEX messages_by_parent ON messages(parent_id);
CREATE UNIQUE INDEX messages_by_source ON messages(conversation_id, source_id) WHERE source_id IS NOT NULL;
CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', content_rowid='rowid',
  tokenize='{_FTS_TOKENIZER}');
{_FTS_SYNC.format(table="messages")}
"""),
    Migration("0002-memories", f"""
CREATE TABLE memories (
  rowid INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL CHECK (kind IN ('profile', 'preference', 'fact', 'event', 'instruction')),
  content TEXT NOT NULL,
  importance REAL NOT NULL DEFAULT 0.5,
  status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('proposed', 'active', 'superseded', 'invalidated')),
  superseded_by TEXT,
  replaces TEXT,  -- a proposal that, once approved, supersedes this memory
  pinned INTEGER NOT NULL DEFAULT 0,
  source_message_id TEXT,
  source_conversation_id TEXT,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  last_used_at REAL,
  use_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX memories_by_status ON memories(status, kind);
CREATE VIRTUAL TABLE memories_fts USING fts5(content, content='memories', content_rowid='rowid',
  tokenize='{_FTS_TOKENIZER}');
{_FTS_SYNC.format(table="memories")}
CREATE TABLE memory_log (
  id INTEGER PRIMARY KEY,
  memory_id TEXT NOT NULL,
  action TEXT NOT NULL,
  content TEXT NOT NULL,
  reason TEXT NOT NULL DEFAULT '',
  source_message_id TEXT,
  at REAL NOT NULL
);
CREATE INDEX memory_log_by_memory ON memory_log(memory_id, at);
CREATE TABLE summaries (
  id TEXT PRIMARY KEY,
  conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
  content TEXT NOT NULL,
  first_message_id TEXT,
  last_message_id TEXT,
  memory_id TEXT,  -- the "event" memory that carries the summary into recall
  created_at REAL NOT NULL
);
"""),
    Migration("0003-vectors", f"""
CREATE VIRTUAL TABLE message_vectors USING vec0(embedding float[{EMBEDDING_DIMENSION}] distance_metric=cosine);
CREATE VIRTUAL TABLE memory_vectors USING vec0(embedding float[{EMBEDDING_DIMENSION}] distance_metric=cosine);
CREATE TRIGGER messages_vector_delete AFTER DELETE ON messages BEGIN
  DELETE FROM message_vectors WHERE rowid = old.rowid;
END;
CREATE TRIGGER messages_vector_stale AFTER UPDATE OF content ON messages BEGIN
  DELETE FROM message_vectors WHERE rowid = old.rowid;
END;
CREATE TRIGGER memories_vector_delete AFTER DELETE ON memories BEGIN
  DELETE FROM memory_vectors WHERE rowid = old.rowid;
END;
CREATE TRIGGER memories_vector_stale AFTER UPDATE OF content ON memories BEGIN
  DELETE FROM memory_vectors WHERE rowid = old.rowid;
END;
"""),
    # What memory has still to learn from: kept on disk so that closing Cleo (or a crash) before
    # the idle moment when learning runs does not lose it.
    Migration("0004-learning-queue", """
CREATE TABLE learning_queue (
  id INTEGER PRIMARY KEY,  -- order of arrival
  conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
  kind TEXT NOT NULL CHECK (kind IN ('turn', 'summary')),
  message_ids TEXT NOT NULL,  -- JSON list, in conversation order
  queued_at REAL NOT NULL
);
"""),
    # What memory put in front of the model for a reply ("Why this answer"), by reference only:
    # a memory forgotten since, or a message deleted with its chat, drops out rather than lingers.
    Migration("0005-reply-recalls", """
CREATE TABLE reply_recalls (
  reply_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
  position INTEGER NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('memory', 'message')),
  item_id TEXT NOT NULL,  -- memories.id or messages.id
  score REAL NOT NULL,
  PRIMARY KEY (reply_id, position)
);
"""),
]


class Database:
    """The open database: `db` (sqlite-utils) for queries, `write()` for transactions."""

    def __init__(self, path: Path, conn: Any, lock: IO[bytes] | None) -> None:
        self.path = path
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
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
        _migrate(database, backup=existed)
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


def applied_migrations(database: Database) -> list[str]:
    if "schema_migrations" not in database.db.table_names():
        return []
    return [row[0] for row in database.conn.execute("SELECT name FROM schema_migrations ORDER BY name")]


def _migrate(database: Database, *, backup: bool, migrations: list[Migration] | None = None) -> None:
    database.conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    done = set(applied_migrations(database))
    missing = [m for m in migrations or MIGRATIONS if m.name not in done]
    if missing and backup:
        backup_database(database, reason=f"before-{missing[0].name}")
    for migration in missing:
        log.info("applying database migration %s", migration.name)
        with database.write() as conn:
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (migration.name, time.time()))


def _statements(sql: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies (which contain `;`) whole."""
    statements, current = [], ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlean.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


def backups_folder(path: Path) -> Path:
    return path.parent / "backups"


def backup_database(database: Database, *, reason: str) -> Path:
    """A consistent copy of the database in `backups/`, keeping the newest few."""
    folder = ensure(backups_folder(database.path))
    target = folder / f"{database.path.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{reason}.db"
    copy = sqlean.connect(str(target))
    try:
        database.conn.backup(copy)
    finally:
        copy.close()
    for old in sorted(folder.glob(f"{database.path.stem}-*.db"))[:-_KEEP_BACKUPS]:
        old.unlink()
    return target


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
