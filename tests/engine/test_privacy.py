"""Privacy: the profile is private, and what the user deletes is in no byte of it afterwards.

Everything goes through the Session, as the window and the terminal use it, on a real profile
(SQLite with FTS5 and sqlite-vec, the log file, a backup made by a real migration) with a
scripted model: the test chats, lets Cleo learn (a memory, its correction, a summary), deletes
one way or another, and then reads every file under CLEO_HOME. No scrubbing helper is called.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.logs import setup_logging
from engine.paths import folders
from engine.profile import open_profile
from engine.session import Session
from engine.settings import Settings, save_settings
from engine.storage import migrations
from engine.storage.migrations import MIGRATIONS, Migration, backups_folder
from tests.helpers.scripted_model import ScriptedChatModel

SETTINGS = Settings(ask_before_remembering=False)
NO_EMBEDDER = Path("no-embedder.gguf")  # memory search on keywords: the point here is the text


def canary() -> str:
    """A word found nowhere else, that the search index's stemmer leaves as it is (it ends in 'q')."""
    return f"Qz{secrets.token_hex(6)}q"


@dataclass(frozen=True)
class Secrets:
    """The canaries of one realistic session, and where each lives."""

    chat: str  # in the user's message, so in the chat's title and the search index too
    reply: str  # in Cleo's reply
    memory: str  # in a memory learned from the chat, then corrected: the replaced version
    correction: str  # the memory as corrected: the current version
    summary: str  # in the summary of the chat, kept as an "event" memory
    chat_id: str
    memory_id: str
    summary_id: str

    def all(self) -> tuple[str, ...]:
        return (self.chat, self.reply, self.memory, self.correction, self.summary)


@contextmanager
def logging_to_file() -> Iterator[Path]:
    """Cleo's log file in CLEO_HOME, at its most talkative, as the app sets it up at start."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield setup_logging(logging.DEBUG)
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


@pytest.fixture
def logged() -> Iterator[Path]:
    with logging_to_file() as path:
        yield path


@pytest.fixture
def sessions() -> Iterator[Callable[[ScriptedChatModel], Session]]:
    opened: list[Session] = []

    def open_one(model: ScriptedChatModel) -> Session:
        session = Session(open_profile(embedder_path=NO_EMBEDDER), model, SETTINGS)
        opened.append(session)
        return session
    yield open_one
    for session in opened:
        if not getattr(session.assistant.model, "closed", False):  # not closed by the test itself
            session.close()


def _reply(session: Session, conversation_id: str, text: str) -> str:
    ticket = session.send(conversation_id, text)
    list(session.run(ticket))
    return ticket.conversation_id


def _learn(session: Session) -> None:
    while session.learning_pending:
        session.learn_step()


def _live_a_little(open_session: Callable[[ScriptedChatModel], Session],
                   monkeypatch: pytest.MonkeyPatch) -> tuple[Session, Secrets]:
    """Chat, let Cleo learn, close; then a newer Cleo opens the profile, backing it up before its
    migration. Returns that newer Cleo's Session and what was said."""
    chat, reply, memory, correction, summary = (canary() for _ in range(5))
    model = ScriptedChatModel(
        [f"I will keep {reply} in mind.", "Noted, I updated it."],
        json_answers=[
            {"action": "ADD", "memory_id": "", "kind": "fact", "content": f"The user's locker code is {memory}"},
            # filled in below, once the first memory's id is known
        ])
    session = open_session(model)
    chat_id = _reply(session, "", f"My locker code is {chat}, please keep it safe.")
    _learn(session)
    [first] = session.memory_state().remembered
    model.json_answers.append({"action": "SUPERSEDE", "memory_id": first.id[:8], "kind": "fact",
                               "content": f"The user's locker code changed to {correction}"})
    _reply(session, chat_id, "My locker code changed last week.")
    _learn(session)
    model.json_answers.append({"summary": f"The user shared a locker code, {summary}, and changed it."})
    session.open_chat(chat_id)
    session.open_chat("")  # leaving the chat: Cleo summarises it when it learns next
    _learn(session)
    remembered = {m.kind: m for m in session.memory_state().remembered}
    assert set(remembered) == {"fact", "event"}, remembered
    assert correction in remembered["fact"].content and summary in remembered["event"].content
    save_settings(session.settings)
    session.close()

    # A newer Cleo, with one more migration: the profile is backed up before it is applied.
    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, Migration("9999-newer-cleo", "CREATE TABLE later (x)")])
    newer = open_session(ScriptedChatModel())
    return newer, Secrets(chat, reply, memory, correction, summary, chat_id, remembered["fact"].id,
                          remembered["event"].id)


def _found_in(home: Path, words: tuple[str, ...]) -> dict[str, list[str]]:
    """Each word -> the files under `home` holding it: as written, lowercased (as the search index
    keeps its words), or its random tail alone (the index stores a word after one sharing its
    first letters as the letters that differ)."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        if sys.platform == "win32" and path.suffix == ".lock":
            continue  # Windows refuses to read a byte another handle has locked; it is empty
        data = path.read_bytes()
        for word in words:
            if any(form.encode() in data for form in (word, word.lower(), word[-10:])):
                found.setdefault(word, []).append(str(path.relative_to(home)))
    return found


DELETIONS = ["delete the chat", "delete the chat and what was learned from it", "forget the memories",
             "edit a memory, then forget it"]


@pytest.mark.parametrize("deletion", DELETIONS)
def test_what_the_user_deletes_is_in_no_byte_of_the_profile(
        deletion: str, sessions: Callable[[ScriptedChatModel], Session], logged: Path,
        monkeypatch: pytest.MonkeyPatch, cleo_home: Path) -> None:
    session, said = _live_a_little(sessions, monkeypatch)
    [backup] = backups_folder(session.profile.database.path).glob("*.db")
    before = _found_in(cleo_home, said.all())
    for word in said.all():  # the test can see each of them: in the profile and in its backup
        assert str(backup.relative_to(cleo_home)) in before.get(word, []), (word, before)

    edited = canary()
    gone: tuple[str, ...]
    kept: tuple[str, ...]
    if deletion == "delete the chat":
        session.delete_chat(said.chat_id, forget_what_was_learned=False)
        gone, kept = (said.chat, said.reply), (said.memory, said.correction, said.summary)
    elif deletion == "delete the chat and what was learned from it":
        session.delete_chat(said.chat_id, forget_what_was_learned=True)
        gone, kept = said.all(), ()
    elif deletion == "forget the memories":
        session.change_memory("forget", said.memory_id)  # and with it the version it replaced
        session.change_memory("forget", said.summary_id)  # and with it the chat's summary
        gone, kept = (said.memory, said.correction, said.summary), (said.chat, said.reply)
    else:
        session.edit_memory(said.memory_id, f"The user's locker code is now {edited}")
        assert edited in _found_in(cleo_home, (edited,))  # saved, in the file
        session.change_memory("forget", said.memory_id)
        gone, kept = (said.memory, said.correction, edited), (said.chat, said.reply, said.summary)

    logging.getLogger("engine").debug("after the deletion")  # the log file is read as it is now
    after = _found_in(cleo_home, (*gone, *kept))
    assert {word: after[word] for word in gone if word in after} == {}
    for word in kept:  # kept in the profile, and so also in its backup
        assert str(backup.relative_to(cleo_home)) in after.get(word, []), (word, after)
    session.close()
    assert {word: files for word, files in _found_in(cleo_home, gone).items()} == {}


def test_every_folder_and_file_of_the_profile_is_private(
        sessions: Callable[[ScriptedChatModel], Session], logged: Path,
        monkeypatch: pytest.MonkeyPatch, cleo_home: Path) -> None:
    if os.name != "posix":
        pytest.skip("modes are POSIX; Windows gives the user's profile folders to that user alone")
    previous = os.umask(0o022)  # the usual umask: files 0644, folders 0755, readable by everyone
    try:
        session, said = _live_a_little(sessions, monkeypatch)
        session.delete_chat(said.chat_id, forget_what_was_learned=True)
        logging.getLogger("engine").info("a line in the log")
        _assert_private(cleo_home, {"cleo.db", "cleo.db-wal", "cleo.db-shm", "cleo.db.lock", "cleo.log",
                                    "settings.json", "backups"})
        session.close()
        sessions(ScriptedChatModel()).close()  # a second start, with everything already there
    finally:
        os.umask(previous)
    _assert_private(cleo_home, {"cleo.db", "cleo.db.lock", "cleo.log", "settings.json", "backups"})


def _assert_private(home: Path, names: set[str]) -> None:
    everything = [home, *home.rglob("*")]
    assert {p.name for p in everything} >= names
    assert list(backups_folder(folders().data / "cleo.db").glob("*.db"))
    modes = {str(p.relative_to(home)): oct(stat.S_IMODE(p.stat().st_mode)) for p in everything}
    assert modes == {str(p.relative_to(home)): oct(0o700 if p.is_dir() else 0o600) for p in everything}


def test_a_profile_left_readable_by_an_older_cleo_is_made_private_at_open(
        sessions: Callable[[ScriptedChatModel], Session], cleo_home: Path) -> None:
    if os.name != "posix":
        pytest.skip("modes are POSIX")
    session = sessions(ScriptedChatModel())
    _reply(session, "", "Hello")
    database = session.profile.database.path
    sides = [database.with_name(database.name + side) for side in ("-wal", "-shm")]
    crashed = {path: path.read_bytes() for path in sides}  # as a Cleo that crashed leaves them
    session.close()
    for path, data in crashed.items():
        path.write_bytes(data)
    logs = folders().logs
    logs.mkdir()
    older = [database, *sides, database.with_name(database.name + ".lock"), logs / "cleo.log", logs / "cleo.log.1"]
    for path in older:
        path.touch()
        os.chmod(path, 0o644)
    for folder in (database.parent, logs):
        os.chmod(folder, 0o755)
    with logging_to_file():
        sessions(ScriptedChatModel())
    modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in [*older, database.parent, logs]}
    assert modes == {path.name: oct(0o600) for path in older} | {database.parent.name: oct(0o700), "logs": oct(0o700)}


def test_a_memory_learned_from_a_deleted_chat_is_forgotten_though_another_chat_corrected_it(
        sessions: Callable[[ScriptedChatModel], Session], logged: Path, cleo_home: Path) -> None:
    first, correction = canary(), canary()
    model = ScriptedChatModel(json_answers=[
        {"action": "ADD", "memory_id": "", "kind": "fact", "content": f"The user's locker code is {first}"}])
    session = sessions(model)
    deleted = _reply(session, "", "My locker code is secret.")
    _learn(session)
    [learned] = session.memory_state().remembered
    model.json_answers.append({"action": "SUPERSEDE", "memory_id": learned.id[:8], "kind": "fact",
                               "content": f"The user's locker code changed to {correction}"})
    _reply(session, "", "My locker code changed last week.")  # in another chat
    _learn(session)
    corrected = [f"The user's locker code changed to {correction}."]
    assert [m.content for m in session.memory_state().remembered] == corrected

    session.delete_chat(deleted, forget_what_was_learned=True)
    assert [m.content for m in session.memory_state().remembered] == corrected
    assert list(_found_in(cleo_home, (first, correction))) == [correction]
