"""Deleted means gone: once a chat or a memory is deleted, its text is in no file of the profile.

SQLite keeps deleted text in four places unless told otherwise; each is cleared, at a cost that
grows with what was deleted rather than with the profile (`erase_deleted`, which every delete
ends with, does the last two):

- free space in the database's pages: `secure_delete`, set at open, overwrites deleted rows and
  freed pages with zeros as they are deleted;
- the full-text indexes: by default FTS5 deletes a row by adding a "delete" entry that carries
  the row's words beside the entry that holds them, until their segments are merged. Cleo's
  indexes are set to 'secure-delete' (migration 0007), so a row's words are taken out of the
  index as the row is deleted, and the pages that held them are rewritten without them;
- the write-ahead log: the pages as they were before the delete stay in `cleo.db-wal` until a
  checkpoint copies the new ones over them; TRUNCATE then cuts the log to nothing. A checkpoint
  that readers keep busy is retried and logged (`Database.empty_log`), never ignored;
- the backups made before migrations: each loses what the profile lost (chats, messages,
  summaries, memories, and the text of forgotten memories' history) and keeps the rest, so it
  can still restore everything the user kept. Triggers note the id of every row deleted from
  the profile in `deleted_for_backups`; a backup loses the rows with those ids, and the ids are
  dropped once every backup has. A backup made before migration 0007 has neither 'secure-delete'
  nor a clean record: it is compared with the profile whole, once, and set to 'secure-delete'.

A backup that is busy (another program has it open, or the disk is full) is named in the log and
cleaned at the next delete: the ids wait for it. One that cannot be cleaned otherwise (it is not
a database any more, is damaged, or lacks a table a backup of Cleo has) could neither restore
anything nor forget: it is named in the log and removed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlean

from engine.storage.database import Database, DatabaseDamaged, connect
from engine.storage.migrations import backups_folder

log = logging.getLogger(__name__)

# The full-text indexes of the tables whose rows hold the user's words.
SEARCH_INDEXES = ("messages_fts", "memories_fts")

# The tables whose deleted rows a backup loses, by the column that names them (the one the
# triggers note); conversations first, so that their messages, summaries and queued learning go
# with them (ON DELETE CASCADE), and the triggers take messages' and memories' words and vectors
# out of the backup's indexes.
_FORGOTTEN_BY_ID = (
    ("conversations", "id"),
    ("messages", "id"),
    ("summaries", "id"),
    ("memories", "id"),
)
# What a backup made before migration 0007 keeps only while the profile has it: compared whole, once.
_KEPT_WHILE_THE_PROFILE_HAS_THEM = (*_FORGOTTEN_BY_ID, ("learning_queue", "id"))

BACKUP_BUSY_WAIT = 5.0  # seconds a backup another program holds is waited for, at each delete
# SQLite's result codes (the low byte of an extended code) for a backup that may be cleaned later.
_TRY_AGAIN_CODES = {
    5: "busy",  # SQLITE_BUSY: another connection writes it
    6: "locked",  # SQLITE_LOCKED
    10: "an input/output error",  # SQLITE_IOERR: a disk or share failing for a moment
    13: "the disk is full",  # SQLITE_FULL
}


def erase_deleted(database: Database) -> None:
    """After rows were deleted: their text out of the write-ahead log and the backups. The search
    indexes need nothing more: with 'secure-delete' they lost the rows' words with the rows."""
    forget_in_backups(database)
    database.empty_log()


def forget_in_backups(database: Database) -> None:
    """Each backup of `database` loses what the profile lost since (`deleted_for_backups`); once
    every backup has, the ids are dropped."""
    folder = backups_folder(database.path)
    backups = sorted(folder.glob(f"{database.path.stem}-*.db")) if folder.is_dir() else []
    left = False
    for backup in backups:
        try:
            _forget_in_backup(backup, database.path)
        except (sqlean.DatabaseError, DatabaseDamaged) as exc:
            # Opening it wraps SQLite's error in DatabaseDamaged: its cause says what happened.
            cause = exc.__cause__ if isinstance(exc, DatabaseDamaged) else exc
            why = _TRY_AGAIN_CODES.get(getattr(cause, "sqlite_errorcode", 0) & 0xFF)
            if why is None:  # e.g. "no such table": trying again would fail the same way for ever
                _remove(backup, cause or exc)
                continue
            log.warning("could not remove deleted chats and memories from the backup %s (%s: %s); "
                        "trying again at the next delete", backup, why, cause)
            left = True
    if not left:
        with database.write() as conn:
            conn.execute("DELETE FROM deleted_for_backups")


def _remove(backup: Path, exc: BaseException) -> None:
    log.warning("the backup %s is damaged or is not a backup of this Cleo (%s); removed, since it could "
                "restore nothing and might keep what was deleted", backup, exc)
    backup.unlink(missing_ok=True)


def _forget_in_backup(backup: Path, profile: Path) -> None:
    conn = connect(backup, journal_mode="DELETE", timeout=BACKUP_BUSY_WAIT)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        conn.execute("ATTACH DATABASE ? AS profile", (str(profile),))
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _forgets_in_place(conn, tables):
                _forget_by_id(conn, tables)
            else:
                _forget_by_comparing(conn, tables)
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


def _forgets_in_place(conn: Any, tables: set[str]) -> bool:
    """Whether the backup's search indexes take words out as rows go: made since migration 0007,
    or compared whole once already."""
    return all(conn.execute(f"SELECT v FROM main.{index}_config WHERE k = 'secure-delete'").fetchone() == (1,)
               for index in SEARCH_INDEXES if index in tables)


def _forget_by_id(conn: Any, tables: set[str]) -> None:
    """The rows whose ids the profile noted as deleted, unless the profile has one again (a chat
    imported anew): looked up by id, so the cost is that of what was deleted."""
    for table, key in _FORGOTTEN_BY_ID:
        if table in tables:
            conn.execute(f"DELETE FROM main.{table} WHERE {key} IN "
                         f"(SELECT id FROM profile.deleted_for_backups WHERE kind = '{table}') "
                         f"AND NOT EXISTS (SELECT 1 FROM profile.{table} p WHERE p.{key} = main.{table}.{key})")
    if "memory_log" in tables:
        conn.execute("UPDATE main.memory_log SET content = '' WHERE content != '' AND memory_id IN "
                     "(SELECT id FROM profile.deleted_for_backups WHERE kind = 'memories') "
                     "AND NOT EXISTS (SELECT 1 FROM profile.memories p WHERE p.id = main.memory_log.memory_id)")
    if "deleted_for_backups" in tables:  # what the backup's own triggers just noted
        conn.execute("DELETE FROM main.deleted_for_backups")


def _forget_by_comparing(conn: Any, tables: set[str]) -> None:
    """A backup from before migration 0007: what the profile no longer has, it loses, found by
    comparing whole tables; then its indexes forget in place, and later deletes go by id."""
    for table, key in _KEPT_WHILE_THE_PROFILE_HAS_THEM:
        if table in tables:
            conn.execute(f"DELETE FROM main.{table} WHERE {key} NOT IN (SELECT {key} FROM profile.{table})")
    if "memory_log" in tables:
        conn.execute("UPDATE main.memory_log SET content = '' WHERE content != '' "
                     "AND memory_id NOT IN (SELECT id FROM profile.memories)")
    for index in SEARCH_INDEXES:
        if index in tables:
            conn.execute(f"INSERT INTO main.{index}({index}, rank) VALUES ('secure-delete', 1)")
            conn.execute(f"INSERT INTO main.{index}({index}) VALUES ('optimize')")
