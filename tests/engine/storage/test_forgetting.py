"""Backups forget what the profile forgets, at the cost of what was deleted: a backup made before
the search indexes forgot in place is compared whole once, a busy one is cleaned later (even by
a later Cleo), and one that can never be cleaned is removed rather than retried for ever."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlean

from engine.storage import forgetting, migrations
from engine.storage.conversations import SqliteConversationStore
from engine.storage.database import Database, connect, open_database
from engine.storage.migrations import MIGRATIONS, backup_database, backups_folder
from engine.transfer import import_cleo_json

FORGETTING_IN_PLACE = "0007-forgetting-in-place"


def canary() -> str:
    return f"Qz{secrets.token_hex(6)}q"  # a word nothing else holds, that the index keeps as it is


def found_in(path: Path, word: str) -> bool:
    """Whether `word` is in the file's bytes: as written, lowercased (the index's form), or its tail."""
    data = path.read_bytes()
    return any(form.encode() in data for form in (word, word.lower(), word[-10:]))


def chat(database: Database, text: str) -> str:
    store = SqliteConversationStore(database)
    conversation = store.create_conversation("Diary")
    store.add_message(conversation.id, "user", f"Dear diary, {text} is the code.", None)
    return conversation.id


def secure_delete(path: Path) -> list[Any]:
    conn = connect(path, journal_mode="DELETE")
    try:
        return [conn.execute(f"SELECT v FROM {index}_config WHERE k = 'secure-delete'").fetchone()
                for index in forgetting.SEARCH_INDEXES]
    finally:
        conn.close()


@pytest.fixture
def profile(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "cleo.db"


def test_a_backup_from_before_forgetting_in_place_is_compared_whole_once(profile: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    older = [m for m in MIGRATIONS if m.name < FORGETTING_IN_PLACE]
    with monkeypatch.context() as older_cleo:
        older_cleo.setattr(migrations, "MIGRATIONS", older)
        database = open_database(profile)
        deleted, kept = canary(), canary()
        deleted_id = chat(database, deleted)
        chat(database, kept)
        database.close()
    database = open_database(profile)  # this Cleo backs the profile up, then migrates it
    [backup] = backups_folder(profile).glob("*.db")
    assert found_in(backup, deleted) and secure_delete(backup) == [None, None]

    SqliteConversationStore(database).delete_conversation(deleted_id)

    assert not found_in(backup, deleted) and found_in(backup, kept)
    assert secure_delete(backup) == [(1,), (1,)]  # from now on it forgets in place, by id
    assert database.conn.execute("SELECT count(*) FROM deleted_for_backups").fetchone() == (0,)
    later = canary()
    later_id = chat(database, later)
    backup_database(database, reason="newer")
    SqliteConversationStore(database).delete_conversation(later_id)
    database.close()
    for path in [profile, *backups_folder(profile).glob("*.db")]:
        assert not found_in(path, deleted) and not found_in(path, later), path


def test_a_busy_backup_forgets_at_a_later_delete_even_by_a_later_cleo(profile: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    database = open_database(profile)
    first, second = canary(), canary()
    first_id, second_id = chat(database, first), chat(database, second)
    backup = backup_database(database, reason="test")
    monkeypatch.setattr(forgetting, "BACKUP_BUSY_WAIT", 0.05)  # not Cleo's 5 s: the lock is not let go
    holder = sqlean.connect(str(backup))
    holder.execute("BEGIN EXCLUSIVE")  # another program writing the backup: before, taken for damage and removed

    SqliteConversationStore(database).delete_conversation(first_id)

    assert f"could not remove deleted chats and memories from the backup {backup} (busy" in caplog.text
    assert found_in(backup, first)
    database.close()
    holder.execute("ROLLBACK")
    holder.close()
    database = open_database(profile)  # Cleo closed and started again: the ids waited in the profile
    SqliteConversationStore(database).delete_conversation(second_id)
    database.close()
    assert not found_in(backup, first) and not found_in(backup, second)


def test_a_chat_imported_again_after_its_delete_stays_in_the_backup(profile: Path, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    """A backup that missed a delete loses the rows whose ids the profile noted, unless the profile has them again."""
    database = open_database(profile)
    said = canary()
    document = {"format": "cleo-conversations", "version": 1, "conversations": [
        {"id": "trip", "title": "Trip", "created_at": 1.7e9, "messages": [
            {"id": "m1", "role": "user", "content": f"Pack the {said}", "created_at": 1.7e9}]}]}
    import_cleo_json(database, document)
    backup = backup_database(database, reason="test")
    monkeypatch.setattr(forgetting, "BACKUP_BUSY_WAIT", 0.05)  # not Cleo's 5 s: the lock is not let go
    holder = sqlean.connect(str(backup))
    holder.execute("BEGIN EXCLUSIVE")
    SqliteConversationStore(database).delete_conversation("trip")
    holder.execute("ROLLBACK")
    holder.close()
    import_cleo_json(database, document)  # the user imports the same export again

    SqliteConversationStore(database).delete_conversation(chat(database, canary()))  # a later delete cleans it

    assert found_in(backup, said)
    assert database.conn.execute("SELECT count(*) FROM deleted_for_backups").fetchone() == (0,)
    database.close()


def test_a_backup_that_can_never_be_cleaned_is_removed_not_retried_for_ever(profile: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A backup without a table its triggers need (a hand-edited or foreign file): SQLite answers
    "no such table", which was taken for "busy" and retried at every delete, the text kept."""
    database = open_database(profile)
    said = canary()
    deleted_id = chat(database, said)
    backup = backup_database(database, reason="test")
    damaged = connect(backup, journal_mode="DELETE")
    damaged.execute("DROP TABLE message_vectors")
    damaged.close()
    caplog.set_level(logging.WARNING)

    SqliteConversationStore(database).delete_conversation(deleted_id)

    assert not backup.exists()
    assert f"the backup {backup} is damaged or is not a backup of this Cleo (no such table" in caplog.text
    assert "trying again" not in caplog.text
    assert database.conn.execute("SELECT count(*) FROM deleted_for_backups").fetchone() == (0,)
    database.close()
