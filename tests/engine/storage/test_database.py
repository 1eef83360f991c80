"""The database file: migrations, backups, damage, the profile lock, a full disk, durability."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import sqlean

from engine.storage.conversations import SqliteConversationStore
from engine.storage.database import DatabaseDamaged, DiskFull, open_database
from engine.storage.migrations import MIGRATIONS, applied_migrations, backups_folder
from engine.storage.profile_lock import DatabaseInUse, lock_profile, unlock
from tests.helpers.models import DefaultModels


def test_a_new_database_gets_every_migration_once(tmp_path: Path) -> None:
    database = open_database(tmp_path / "cleo.db")
    assert applied_migrations(database) == [m.name for m in MIGRATIONS]
    database.close()
    again = open_database(tmp_path / "cleo.db")
    assert applied_migrations(again) == [m.name for m in MIGRATIONS]
    again.close()
    assert not backups_folder(tmp_path / "cleo.db").exists()  # nothing to migrate, nothing to back up


def test_an_older_database_is_backed_up_then_migrated_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "cleo.db"
    old = sqlean.connect(str(path), isolation_level=None)  # what the first released version left behind
    old.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    old.executescript(MIGRATIONS[0].sql)
    old.execute("INSERT INTO schema_migrations VALUES (?, 0)", (MIGRATIONS[0].name,))
    old.execute("INSERT INTO conversations (id, title, created_at, updated_at) VALUES ('c1', 'Trip', 1, 1)")
    old.execute("INSERT INTO messages (id, conversation_id, role, content, created_at, updated_at) "
                "VALUES ('m1', 'c1', 'user', 'Book a train to Porto', 1, 1)")
    old.close()

    database = open_database(path)
    assert applied_migrations(database) == [m.name for m in MIGRATIONS]
    store = SqliteConversationStore(database)
    assert store.message("m1").content == "Book a train to Porto"
    assert [h.message_id for h in store.search("Porto")] == ["m1"]
    database.close()
    backups = list(backups_folder(path).glob("*.db"))
    assert len(backups) == 1 and "before-0002" in backups[0].name
    backup = sqlean.connect(str(backups[0]))
    assert backup.execute("SELECT name FROM schema_migrations").fetchall() == [(MIGRATIONS[0].name,)]
    backup.close()


@pytest.mark.parametrize("damage", ["text", "truncated", "garbled pages"])
def test_a_damaged_database_is_named_never_recreated(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "cleo.db"
    database = open_database(path)
    store = SqliteConversationStore(database)
    chat = store.create_conversation("Notes")
    for i in range(200):
        store.add_message(chat.id, "user", f"note number {i} " * 20, None)
    database.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    database.close()
    data = path.read_bytes()
    damaged = {"text": b"my shopping list\n" * 100, "truncated": data[: len(data) // 3],
               "garbled pages": data[:8192] + bytes(range(256)) * 64 + data[8192 + 16384:]}[damage]
    path.write_bytes(damaged)
    with pytest.raises(DatabaseDamaged) as caught:
        open_database(path)
    assert str(path) in caught.value.message
    assert path.read_bytes() == damaged  # left as it was, for the user or a restore


def test_a_second_cleo_on_the_same_profile_is_refused(tmp_path: Path) -> None:
    first = open_database(tmp_path / "cleo.db")
    with pytest.raises(DatabaseInUse) as caught:
        open_database(tmp_path / "cleo.db")
    assert "Another Cleo" in caught.value.message
    first.close()
    open_database(tmp_path / "cleo.db").close()  # free again once the first has closed


def test_a_lock_held_for_a_moment_does_not_refuse_cleo(tmp_path: Path) -> None:
    # A second launch checks the lock by taking it for an instant; Cleo starting then must not fail.
    moment = lock_profile(tmp_path / "cleo.db")
    threading.Timer(0.02, unlock, (moment,)).start()
    open_database(tmp_path / "cleo.db").close()


def test_a_full_disk_fails_the_write_and_keeps_what_was_saved(tmp_path: Path) -> None:
    database = open_database(tmp_path / "cleo.db")
    store = SqliteConversationStore(database)
    chat = store.create_conversation("Diary")
    kept = store.add_message(chat.id, "user", "Saved before the disk filled up.", None)
    pages = database.conn.execute("PRAGMA page_count").fetchone()[0]
    database.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(DiskFull) as caught:
        store.add_message(chat.id, "user", "x" * 200_000, kept.id)
    assert str(tmp_path / "cleo.db") in caught.value.message
    assert store.message(kept.id).content == "Saved before the disk filled up."
    assert [m.id for m in store.branch(kept.id)] == [kept.id]
    assert store.search("disk")[0].message_id == kept.id
    database.close()


def test_a_megabyte_message_is_stored_and_found(tmp_path: Path) -> None:
    database = open_database(tmp_path / "cleo.db")
    store = SqliteConversationStore(database)
    chat = store.create_conversation()
    text = ("lorem ipsum dolor sit amet " * 40_000) + "the zebra crossing"
    message = store.add_message(chat.id, "user", text, None)
    assert len(text) > 1_000_000 and store.message(message.id).content == text
    hits = store.search("zebra")
    assert [h.message_id for h in hits] == [message.id] and "[zebra]" in hits[0].snippet
    database.close()


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from engine.chat.assistant import Assistant, TurnOptions
    from engine.storage.database import open_database
    from engine.events import Started, Token
    from engine.runtime.chat_model import LlamaChatModel
    from engine.runtime.sampling import Sampling
    from engine.settings import Settings
    from engine.storage.conversations import SqliteConversationStore

    database = open_database(Path(sys.argv[1]))
    store = SqliteConversationStore(database)
    assistant = Assistant(LlamaChatModel(Path(sys.argv[2]), context_size=1024, threads=1), Settings(), store=store)
    chat = assistant.new_conversation()
    options = TurnOptions(sampling=Sampling(max_tokens=2000, seed=1, temperature=0.9))
    for event in assistant.turn(chat, "Write a very long story about a lighthouse keeper.", options):
        if isinstance(event, Started):
            print("STARTED", event.user_message_id, event.reply_message_id, flush=True)
        elif isinstance(event, Token):
            print("TOKEN", repr(event.text), flush=True)
""")


def test_a_crash_mid_reply_loses_at_most_the_last_second(tmp_path: Path, default_models: DefaultModels) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = tmp_path / "cleo.db"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    child = subprocess.Popen([sys.executable, str(script), str(path), str(default_models.chat)],
                             stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    streamed: list[tuple[float, str]] = []
    ids: list[str] = []
    started_streaming = 0.0
    for line in child.stdout:
        kind, _, rest = line.rstrip("\n").partition(" ")
        if kind == "STARTED":
            ids = rest.split()
        elif kind == "TOKEN":
            now = time.monotonic()
            started_streaming = started_streaming or now
            streamed.append((now, eval(rest)))  # repr of a str, written by the child above
            if now - started_streaming > 3.0:
                break
    child.kill()  # SIGKILL; TerminateProcess on Windows: no chance to clean up either way
    killed_at = time.monotonic()
    child.wait()
    child.stdout.close()

    database = open_database(path)
    assert database.conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = SqliteConversationStore(database)
    store.recover_after_crash()
    user, reply = store.message(ids[0]), store.message(ids[1])
    assert user.content == "Write a very long story about a lighthouse keeper."
    assert reply.finish_reason == "interrupted"
    everything = "".join(text for _, text in streamed)
    older_than_a_second = "".join(text for at, text in streamed if at < killed_at - 1.0)
    assert everything.startswith(reply.content)
    assert reply.content.startswith(older_than_a_second) and len(older_than_a_second) > 20
    database.close()


def test_a_commit_that_fails_is_rolled_back_and_its_own_error_is_raised(tmp_path: Path) -> None:
    database = open_database(tmp_path / "cleo.db")
    store = SqliteConversationStore(database)
    chat = store.create_conversation("Diary")
    with pytest.raises(sqlean.IntegrityError, match="FOREIGN KEY"), database.write() as conn:
        conn.execute("PRAGMA defer_foreign_keys = ON")  # checked at COMMIT, which then fails
        conn.execute("INSERT INTO messages (id, conversation_id, role, content, created_at, updated_at) "
                     "VALUES ('orphan', 'no-such-chat', 'user', 'Never saved.', 1, 1)")
    kept = store.add_message(chat.id, "user", "Saved after the failed commit.", None)  # the next write works
    assert [m.content for m in store.branch(kept.id)] == ["Saved after the failed commit."]
    assert database.conn.execute("SELECT count(*) FROM messages WHERE id = 'orphan'").fetchone() == (0,)
    database.close()


def test_an_error_is_not_hidden_by_a_rollback_sqlite_already_did(tmp_path: Path) -> None:
    database = open_database(tmp_path / "cleo.db")
    with pytest.raises(ValueError, match="the first problem"), database.write() as conn:
        conn.execute("INSERT INTO conversations (id, title, created_at, updated_at) VALUES ('c1', 'x', 1, 1)")
        conn.execute("ROLLBACK")  # as SQLite does by itself on some errors (a full disk, an I/O error)
        raise ValueError("the first problem")
    assert SqliteConversationStore(database).conversations() == []
    database.close()


def test_a_checkpoint_kept_busy_by_a_reader_is_logged_and_done_later(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                                ) -> None:
    database = open_database(tmp_path / "cleo.db")
    database.conn.execute("PRAGMA busy_timeout = 10")
    store = SqliteConversationStore(database)
    chat = store.create_conversation("Diary")
    store.add_message(chat.id, "user", "Dear diary", None)
    reader = database.reader()
    reader.conn.execute("BEGIN")
    reader.conn.execute("SELECT count(*) FROM messages").fetchone()  # a read in progress on another connection
    store.delete_conversation(chat.id)
    assert "could not be emptied" in caplog.text and database.log_not_emptied
    reader.conn.execute("COMMIT")
    reader.close()
    wal = tmp_path / "cleo.db-wal"
    assert wal.stat().st_size > 0
    assert database.empty_log() and wal.stat().st_size == 0 and not database.log_not_emptied
    database.close()


def test_a_write_inside_a_write_is_part_of_it_and_an_error_in_it_undoes_only_its_own(tmp_path: Path) -> None:
    database = open_database(tmp_path / "cleo.db")
    store = SqliteConversationStore(database)
    with database.write():
        kept = store.create_conversation("Kept")  # saved through the store's own write()
        with pytest.raises(RuntimeError), database.write():
            store.create_conversation("Undone")
            raise RuntimeError("a bug half way")
        assert database.conn.in_transaction  # nothing committed yet
    assert [c.title for c in store.conversations()] == ["Kept"]
    with pytest.raises(RuntimeError), database.write():
        store.update_conversation(kept.id, title="Renamed")
        raise RuntimeError("a bug after the inner write")
    assert [c.title for c in store.conversations()] == ["Kept"]
    database.close()
