"""The database's schema: named migrations, each applied once, in order, after a backup of the file.

A migration is never edited once it has shipped; a change to the schema is a new migration.
`migrate` applies the missing ones, each in its own transaction recorded in `schema_migrations`,
after copying an existing file to `backups/` (the newest few are kept). A backup is one private
(0600) file, and it never keeps what the user deleted since it was made: every delete brings the
backups in line with the profile (`engine.storage.forgetting`).

sqlite-utils is not used (nor a dependency): Cleo's schema needs FTS5 tables with their own
tokenizer and external content, vec0 virtual tables and triggers, none of which sqlite-utils'
table API creates, so migrations would still be plain SQL; its one use, listing table names, is a
query on `sqlite_master`; and it would bring its command-line dependencies into the packaged app.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlean

from engine.paths import ensure, make_private_file

if TYPE_CHECKING:
    from engine.storage.database import Database

log = logging.getLogger(__name__)

EMBEDDING_DIMENSION = 384  # all-MiniLM-L6-v2, the default embedder
_KEEP_BACKUPS = 5


@dataclass(frozen=True)
class Migration:
    """One change to the schema: `name` is recorded once it is applied; `sql` may hold several statements."""

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
_NOTE_DELETED = """
CREATE TRIGGER {table}_deleted_for_backups AFTER DELETE ON {table} BEGIN
  INSERT OR IGNORE INTO deleted_for_backups VALUES ('{table}', old.id);
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
    # How often learning has started on a queued item: an item is removed only once what it taught
    # is saved, so one that crashes Cleo each time must not be tried at every start for ever.
    Migration("0006-learning-attempts", """
ALTER TABLE learning_queue ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
"""),
    # Forgetting at the cost of what is forgotten, not of the whole profile (`engine.storage.forgetting`):
    # the search indexes take a deleted row's words out as it is deleted ('secure-delete', SQLite
    # 3.42 and later) instead of merging every segment after each delete, once 'optimize' has
    # dropped what earlier deletes left; and the ids of deleted rows wait in `deleted_for_backups`
    # until the backups have lost them too, so a backup is cleaned by those ids, not compared whole.
    Migration("0007-forgetting-in-place", f"""
INSERT INTO messages_fts(messages_fts, rank) VALUES ('secure-delete', 1);
INSERT INTO memories_fts(memories_fts, rank) VALUES ('secure-delete', 1);
INSERT INTO messages_fts(messages_fts) VALUES ('optimize');
INSERT INTO memories_fts(memories_fts) VALUES ('optimize');
CREATE TABLE deleted_for_backups (
  kind TEXT NOT NULL,  -- the table: conversations, messages, summaries or memories
  id NOT NULL,
  PRIMARY KEY (kind, id)
) WITHOUT ROWID;
{"".join(_NOTE_DELETED.format(table=table) for table in ("conversations", "messages", "summaries", "memories"))}
"""),
]


def applied_migrations(database: Database) -> list[str]:
    if database.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
                             ).fetchone() is None:
        return []
    return [row[0] for row in database.conn.execute("SELECT name FROM schema_migrations ORDER BY name")]


def migrate(database: Database, *, backup: bool, migrations: list[Migration] | None = None) -> None:
    """Apply the migrations `database` lacks, each once; with `backup`, copy the file first."""
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
    target = make_private_file(folder / f"{database.path.stem}-{time.strftime('%Y%m%d-%H%M%S')}-{reason}.db")
    copy = sqlean.connect(str(target))
    try:
        database.conn.backup(copy)
        copy.execute("PRAGMA journal_mode = DELETE")  # one file, not a -wal and -shm beside it
    finally:
        copy.close()
    for old in sorted(folder.glob(f"{database.path.stem}-*.db"))[:-_KEEP_BACKUPS]:
        old.unlink()
    return target
