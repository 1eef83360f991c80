"""Hostile files to import, on a real database: each is imported whole or refused with a clear
`ImportFileInvalid` (exit 2 in the terminal) that names the file, the record and the field, and a
refused file changes nothing."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from engine.cli.main import EXIT_KNOWN_ERROR, main
from engine.paths import folders
from engine.storage.database import Database, open_database
from engine.transfer import ImportFileInvalid, import_chatgpt, import_cleo_json
from engine.transfer.importing import ID_PATTERN, MAX_MESSAGE_CHARS

START = 1_700_000_000.0


def chatgpt_message(node_id: str, role: str, text: str, at: Any) -> dict[str, Any]:
    return {"id": node_id, "author": {"role": role}, "create_time": at,
            "content": {"content_type": "text", "parts": [text]}, "metadata": {}}


def chatgpt_chat(conversation_id: str, title: str = "Plans", at: Any = START) -> dict[str, Any]:
    """A ChatGPT conversation: an empty root, a question and its answer."""
    return {"title": title, "create_time": at, "update_time": START + 9, "id": conversation_id,
            "current_node": "a1", "mapping": {
                "root": {"id": "root", "message": None, "parent": None, "children": ["u1"]},
                "u1": {"id": "u1", "message": chatgpt_message("u1", "user", "What now?", START + 1),
                       "parent": "root", "children": ["a1"]},
                "a1": {"id": "a1", "message": chatgpt_message("a1", "assistant", "Rest.", START + 2),
                       "parent": "u1", "children": []}}}


def rows(database: Database) -> tuple[list[Any], ...]:
    """Everything the import tables hold, to compare before and after."""
    return tuple(database.conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
                 for table in ("conversations", "messages", "messages_fts"))


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path / "cleo.db")
    yield database
    database.close()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


GOOD = json.dumps(chatgpt_chat("first"))
# Each file holds a good conversation and then a bad one; the text is written as it is, since
# Python's json module would not write most of these.
HOSTILE_CHATGPT = {
    "create_time Infinity": (f'[{GOOD}, {{"id": "c2", "create_time": Infinity, "mapping": {{}}}}]',
                             "conversation 2", "'create_time'"),
    "create_time 1e300": (f'[{GOOD}, {{"id": "c2", "create_time": 1e300, "mapping": {{}}}}]',
                          "conversation 2", "'create_time' is 1e+300, not a time between 1970 and 3000"),
    "update_time NaN": (f'[{GOOD}, {{"id": "c2", "update_time": NaN, "mapping": {{}}}}]',
                        "conversation 2", "'update_time'"),
    "create_time of 5000 digits": (f'[{GOOD}, {{"id": "c2", "create_time": {"9" * 5000}, "mapping": {{}}}}]',
                                   "conversation 2, field 'create_time'", "integer overflow"),
    "a message's time 1e300": ("[" + json.dumps(chatgpt_chat("c2")).replace(str(START + 1), "1e300", 1) + "]",
                               "conversation 1 ('Plans'), node 'u1'", "'create_time' is 1e+300"),
    "negative time": ("[" + json.dumps(chatgpt_chat("c2", at=-5.0)) + "]", "conversation 1", "'create_time' is -5.0"),
    "100k nested brackets": (f'[{GOOD}, {{"id": "c2", "metadata": {"[" * 100_000}{"]" * 100_000}}}]',
                             "conversation 2, field 'metadata'", "nest more than 100 deep"),
    "a duplicate conversation id": (f"[{GOOD}, {json.dumps(chatgpt_chat('other'))}, {GOOD}]",
                                    "conversation 3 ('Plans')", "'chatgpt-first' is also the id of conversation 1"),
    "a lone low surrogate": (f'[{GOOD}, {{"id": "c2", "title": "\\udc00"}}]', "conversation 2", "UTF-8"),
    "garbage after the list": (f"[{GOOD}] [", "", "trailing garbage"),
}


@pytest.mark.parametrize("case", list(HOSTILE_CHATGPT))
def test_a_hostile_chatgpt_file_is_refused_with_exit_2_and_the_database_is_unchanged(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content, record, problem = HOSTILE_CHATGPT[case]
    earlier = _write(tmp_path / "earlier.json", json.dumps([chatgpt_chat("earlier", "Kept")]))
    assert main(["import", "chatgpt", str(earlier)]) == 0
    before = _database_rows()
    path = _write(tmp_path / "conversations.json", content)
    capsys.readouterr()

    assert main(["import", "chatgpt", str(path)]) == EXIT_KNOWN_ERROR

    said = capsys.readouterr().err
    assert f"Cleo cannot import {path}" in said
    assert record in said and problem in said, said
    assert "Nothing from" in said
    assert _database_rows() == before
    assert len(said) < 1000  # quotes the value, not the file


def _database_rows() -> tuple[list[Any], ...]:
    database = open_database(folders().data / "cleo.db")
    try:
        return rows(database)
    finally:
        database.close()


def test_the_first_hostile_time_case_is_what_broke_the_sidebar(database: Database, tmp_path: Path) -> None:
    """Before: Infinity was stored, and every start then failed turning it into a date."""
    path = _write(tmp_path / "conversations.json",
                  "[" + json.dumps(chatgpt_chat("c1")).replace(str(START), "Infinity", 1) + "]")
    with pytest.raises(ImportFileInvalid, match="'create_time'"):
        import_chatgpt(database, path)
    assert rows(database) == ([], [], [])


def _encrypted_zip(path: Path) -> Path:
    """A .zip whose conversations.json is marked encrypted (Python writes none; its flag is what readers check)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("conversations.json", json.dumps([chatgpt_chat("c1")]))
    data = bytearray(path.read_bytes())
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    for flags in (local + 6, central + 8):
        struct.pack_into("<H", data, flags, struct.unpack_from("<H", data, flags)[0] | 0x1)
    path.write_bytes(bytes(data))
    return path


def test_an_encrypted_zip_member_is_refused(database: Database, tmp_path: Path) -> None:
    path = _encrypted_zip(tmp_path / "export.zip")

    with pytest.raises(ImportFileInvalid) as raised:
        import_chatgpt(database, path)

    assert str(path) in raised.value.message
    assert "'conversations.json' in it is encrypted" in raised.value.message
    assert "password" in raised.value.hint
    assert rows(database) == ([], [], [])


def test_a_zip_with_a_huge_list_of_files_is_refused_before_it_is_read(database: Database, tmp_path: Path) -> None:
    """zipfile reads the whole list of a .zip's files into memory: 200,000 entries cost far more than a chat."""
    entries = [f"f{n:07}.txt".encode() for n in range(200_000)]
    local = b"".join(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name
                     for name in entries)
    central, offset = [], 0
    for name in entries:
        central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0,
                                   0, 0, offset) + name)
        offset += 30 + len(name)
    directory = b"".join(central)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, len(directory), len(local), 0)
    path = tmp_path / "export.zip"
    path.write_bytes(local + directory + end)

    with pytest.raises(ImportFileInvalid, match=r"its list of files takes \d+ MB"):
        import_chatgpt(database, path)


def test_a_long_chain_with_a_loop_is_refused_in_linear_time(database: Database) -> None:
    """200,000 messages in one chain and two in a loop after them: before, finding the loop took
    time in the square of the chain (hours here); now it is one pass."""
    chain = [{"id": f"m{n}", "parent_id": f"m{n - 1}" if n else None, "role": "user", "content": "hi",
              "created_at": START + n} for n in range(200_000)]
    loop = [{"id": "x1", "parent_id": "x2", "role": "user", "content": "a", "created_at": START},
            {"id": "x2", "parent_id": "x1", "role": "user", "content": "b", "created_at": START}]
    document = {"format": "cleo-conversations", "version": 1, "conversations": [
        {"id": "long", "title": "Long", "created_at": START, "messages": chain + loop}]}

    with pytest.raises(ImportFileInvalid, match=r"message 'x1'.*its parent links form a loop"):
        import_cleo_json(database, document)
    assert rows(database) == ([], [], [])


def test_every_time_stored_by_an_import_becomes_a_date(database: Database, tmp_path: Path) -> None:
    """The bounds: 1970 and 3000 are kept and shown; a second before or after is refused."""
    kept = [chatgpt_chat("c1", at=0), chatgpt_chat("c2", at=32_503_680_000)]
    import_chatgpt(database, _write(tmp_path / "a.json", json.dumps(kept)))
    for (at,) in database.conn.execute("SELECT created_at FROM conversations"):
        assert datetime.fromtimestamp(at).year in (1970, 1969, 3000, 2999)
        time.localtime(at)
    for at in (-1, 32_503_680_001):
        with pytest.raises(ImportFileInvalid, match="not a time between 1970 and 3000"):
            import_chatgpt(database, _write(tmp_path / "b.json", json.dumps([chatgpt_chat("c3", at=at)])))


def test_ids_from_chatgpt_that_are_not_plain_are_kept_as_a_stable_fingerprint(database: Database,
                                                                               tmp_path: Path) -> None:
    """Not refused (ChatGPT's ids are its own), never stored as given, and the same on every import."""
    chat = chatgpt_chat('<img src="/dev/zero"> x')
    chat["mapping"]["u1"]["message"]["id"] = "<b>u1</b>"
    path = _write(tmp_path / "conversations.json", json.dumps([chat]))

    first = import_chatgpt(database, path)
    again = import_chatgpt(database, path)

    assert (first.conversations_added, first.messages_added) == (1, 2)
    assert (again.conversations_added, again.messages_added, again.conversations_skipped) == (0, 0, 1)
    ids = [row[0] for row in database.conn.execute(
        "SELECT id FROM conversations UNION ALL SELECT id FROM messages UNION ALL SELECT source_id FROM messages")]
    assert all(ID_PATTERN.fullmatch(i) for i in ids), ids


@pytest.mark.parametrize(("field", "value"), [
    ("id", '<img src="/dev/zero">'), ("id", "a b"), ("id", "x" * 65), ("id", ""),
    ("message id", "<a href=x>"), ("message id", 'say "hi"'), ("parent_id", "../up"), ("source_id", "a\nb"),
])
def test_a_cleo_export_with_an_id_that_is_not_plain_is_refused(database: Database, field: str, value: str) -> None:
    message = {"id": "m1", "parent_id": None, "role": "user", "content": "Hello", "created_at": START}
    chat = {"id": "c1", "title": "Hi", "created_at": START, "messages": [message]}
    if field == "id":
        chat["id"] = value
    elif field == "message id":
        message["id"] = value
    else:
        message[field] = value
    document = {"format": "cleo-conversations", "version": 1, "conversations": [chat]}

    with pytest.raises(ImportFileInvalid, match=r"backup\.json, conversation 1.*not an id \(1 to 64 letters"):
        import_cleo_json(database, document, source="backup.json")
    assert rows(database) == ([], [], [])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize("source", ["chatgpt", "cleo"])
def test_a_named_pipe_is_refused_at_once_rather_than_waited_on(source: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Opening a FIFO for reading waits for a writer: the import hung for ever, its check came after the open."""
    fifo = tmp_path / "conversations.json"
    os.mkfifo(fifo)
    codes: list[int] = []
    importing = threading.Thread(target=lambda: codes.append(main(["import", source, str(fifo)])), daemon=True)
    importing.start()
    importing.join(timeout=10)
    if importing.is_alive():  # let the import end before failing: a writer that writes nothing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        importing.join(timeout=10)
        pytest.fail(f"`cleo import {source}` of a named pipe was still waiting after 10 s")

    assert codes == [EXIT_KNOWN_ERROR]
    said = capsys.readouterr().err
    assert f"Cleo cannot import {fifo}: it is not a file (a folder, a pipe or a device)" in said, said
    assert "Choose the .json (or .zip) file to import." in said


def test_a_message_longer_than_cleo_keeps_is_cut_with_a_note_and_reported(database: Database) -> None:
    text = "word " * (MAX_MESSAGE_CHARS // 5) + "tail-that-is-cut"
    document = {"format": "cleo-conversations", "version": 1, "conversations": [
        {"id": "c1", "title": "Logs", "created_at": START, "messages": [
            {"id": "m1", "role": "user", "content": text, "created_at": START},
            {"id": "m2", "role": "assistant", "content": "Short.", "created_at": START + 1, "parent_id": "m1"}]}]}

    report = import_cleo_json(database, document, source="logs.json")

    kept = database.conn.execute("SELECT content FROM messages WHERE id = 'm1'").fetchone()[0]
    assert kept == (text[:MAX_MESSAGE_CHARS] + f"\n\n[… cut by Cleo's import: this message had {len(text):,} "
                    f"characters, Cleo keeps {MAX_MESSAGE_CHARS:,}]")
    assert report.messages_cut == ["conversation 1 ('Logs'), message 1 ('m1')"]
    assert report.summary() == ("1 conversation(s) added, 2 message(s) added, 1 message(s) longer than "
                                f"{MAX_MESSAGE_CHARS:,} characters cut to that length "
                                "(conversation 1 ('Logs'), message 1 ('m1'))")
