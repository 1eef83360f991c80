"""Deleted means gone: once a chat or a memory is deleted, its text is in no file of the profile.

SQLite keeps deleted text in four places unless told otherwise, and `erase_deleted`, which every
delete ends with, clears each:

- free space in the database's pages: `secure_delete`, set at open, overwrites deleted rows and
  freed pages with zeros as they are deleted;
- the full-text indexes: FTS5 deletes a row by adding a "delete" entry that carries the row's
  words beside the entry that holds them, until their segments are merged. 'optimize' merges
  every segment into one, which drops both, and the freed pages are zeroed like any other;
- the write-ahead log: the pages as they were before the delete stay in `cleo.db-wal` until a
  checkpoint copies the new ones over them; TRUNCATE then cuts the log to nothing. A checkpoint
  that readers keep busy is retried and logged (`Database.empty_log`), never ignored;
- the backups made before migrations: each is brought in line with the profile, losing what the
  profile no longer has (chats, messages, memories, summaries, and the text of forgotten
  memories' history) and keeping the rest, so it can still restore everything the user kept.

A backup that is not a database any more cannot restore anything and cannot be cleaned: it is
removed. One that is busy (another program has it open) is named in the log and cleaned at the
next delete.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlean

from engine.storage.database import Database, DatabaseDamaged, connect
from engine.storage.migrations import backups_folder

log = logging.getLogger(__name__)

# The full-text indexes of the tables whose rows hold the user's words.
SEARCH_INDEXES = ("messages_fts", "memories_fts")

# Rows a backup keeps only while the profile has them, by the column that names them; conversations
# first, so that their messages, summaries and queued learning go with them (ON DELETE CASCADE),
# and the triggers take messages' and memories' words and vectors out of the backup's indexes.
_KEPT_WHILE_THE_PROFILE_HAS_THEM = (
    ("conversations", "id"),
    ("messages", "id"),
    ("summaries", "id"),
    ("memories", "id"),
    ("learning_queue", "id"),
)


def erase_deleted(database: Database, *search_indexes: str) -> None:
    """After rows were deleted: their text out of `search_indexes`, the write-ahead log and the backups."""
    if search_indexes:
        with database.write() as conn:
            for table in search_indexes:
                conn.execute(f"INSERT INTO {table}({table}) VALUES ('optimize')")
    database.empty_log()
    forget_in_backups(database)


def forget_in_backups(database: Database) -> None:
    """Bring each backup of `database` in line with it: what the profile no longer has, it loses."""
    folder = backups_folder(database.path)
    if not folder.is_dir():
        return
    for backup in sorted(folder.glob(f"{database.path.stem}-*.db")):
        try:
            _forget_in_backup(backup, database.path)
        except sqlean.OperationalError as exc:  # busy or locked: the next delete tries again
            log.warning("could not remove deleted chats and memories from the backup %s (%s); "
                        "trying again at the next delete", backup, exc)
        except (sqlean.DatabaseError, DatabaseDamaged) as exc:
            log.warning("the backup %s is damaged (%s); removed, since it could restore nothing and "
                        "might keep what was deleted", backup, exc)
            backup.unlink(missing_ok=True)


def _forget_in_backup(backup: Path, profile: Path) -> None:
    conn = connect(backup, journal_mode="DELETE")
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        conn.execute("ATTACH DATABASE ? AS profile", (str(profile),))
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.total_changes
            for table, key in _KEPT_WHILE_THE_PROFILE_HAS_THEM:
                if table in tables:
                    conn.execute(f"DELETE FROM main.{table} WHERE {key} NOT IN (SELECT {key} FROM profile.{table})")
            if "memory_log" in tables:
                conn.execute("UPDATE main.memory_log SET content = '' WHERE content != '' "
                             "AND memory_id NOT IN (SELECT id FROM profile.memories)")
            if conn.total_changes > before:
                for index in SEARCH_INDEXES:
                    if index in tables:
                        conn.execute(f"INSERT INTO main.{index}({index}) VALUES ('optimize')")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlean.Error:  # the error that stopped the cleaning is the one to report
                    log.exception("could not roll back the cleaning of the backup %s", backup)
            raise
        conn.execute("DETACH DATABASE profile")
    finally:
        conn.close()
