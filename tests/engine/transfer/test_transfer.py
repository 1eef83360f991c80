"""Import and export of conversations, on a real database: ChatGPT's export in, Markdown and JSON out."""

from __future__ import annotations

import argparse
import copy
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.cli import transfer_commands
from engine.errors import KnownError
from engine.storage.conversations import SqliteConversationStore
from engine.storage.database import Database, open_database
from engine.transfer import (
    export_everything,
    export_json,
    export_markdown,
    import_chatgpt,
    import_cleo_json,
)

TRIP_START = 1_700_000_000.25
BREAD_START = 1_710_000_000.5


def _node(node_id: str, parent: str | None, children: list[str], message: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": node_id, "message": message, "parent": parent, "children": children}


def _message(node_id: str, role: str, parts: list[Any], at: float | None, *, content_type: str = "text",
             **metadata: Any) -> dict[str, Any]:
    return {"id": node_id, "author": {"role": role, "name": None, "metadata": {}}, "create_time": at,
            "update_time": None, "content": {"content_type": content_type, "parts": parts}, "status":
            "finished_successfully", "end_turn": True, "weight": 1.0, "metadata": metadata, "recipient": "all"}


def _trip() -> dict[str, Any]:
    """A chat whose second question was edited: two branches, a hidden system node, a tool node."""
    t = TRIP_START
    reply: dict[str, Any] = {"model_slug": "gpt-4o", "finish_details": {"type": "stop"}}
    mapping = {
        "root-1": _node("root-1", None, ["sys-1"], None),
        "sys-1": _node("sys-1", "root-1", ["u1"], _message("sys-1", "system", [""], None,
                                                            is_visually_hidden_from_conversation=True)),
        "u1": _node("u1", "sys-1", ["a1"], _message("u1", "user", ["Where should I stay in Lisbon?"], t + 10)),
        "a1": _node("a1", "u1", ["u2a", "u2b"], _message("a1", "assistant", ["Alfama or Baixa."], t + 12, **reply)),
        "u2a": _node("u2a", "a1", ["a2a"], _message("u2a", "user", ["And for food?"], t + 30)),
        "a2a": _node("a2a", "u2a", [], _message("a2a", "assistant", ["Try the Time Out Market."], t + 31, **reply)),
        "u2b": _node("u2b", "a1", ["tool-1"], _message("u2b", "user", ["And for a day trip?"], t + 40)),
        "tool-1": _node("tool-1", "u2b", ["a2b"], _message("tool-1", "tool", ["search results"], t + 41,
                                                            content_type="tether_browsing_display")),
        "a2b": _node("a2b", "tool-1", [], _message("a2b", "assistant", ["Sintra is an easy day trip."], t + 42,
                                                   model_slug="gpt-4o",
                                                   finish_details={"type": "max_tokens"})),
    }
    return {"title": "Trip to Lisbon", "create_time": t, "update_time": t + 50, "mapping": mapping,
            "current_node": "a2b", "id": "conv-trip", "conversation_id": "conv-trip", "moderation_results": []}


def _bread() -> dict[str, Any]:
    """A chat with a picture: one message is only an image (skipped), one is an image and a question."""
    t = BREAD_START
    image = {"content_type": "image_asset_pointer", "asset_pointer": "file-service://file-abc", "width": 512}
    mapping = {
        "root-2": _node("root-2", None, ["img"], None),
        "img": _node("img", "root-2", ["q"], _message("img", "user", [image], t + 1, content_type="multimodal_text")),
        "q": _node("q", "img", ["r"], _message("q", "user", [image, "Why did my bread not rise?"], t + 2,
                                               content_type="multimodal_text")),
        "r": _node("r", "q", [], _message("r", "assistant", ["The yeast was probably old."], None,
                                          model_slug="gpt-4")),
    }
    return {"title": "Bread", "create_time": t, "update_time": None, "mapping": mapping, "current_node": "r",
            "id": "conv-bread"}


def _write_export(folder: Path, conversations: list[Any], name: str = "conversations.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(conversations), encoding="utf-8")
    return path


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path / "cleo.db")
    yield database
    database.close()


def _count(database: Database, table: str) -> int:
    return int(database.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _contents(messages: list[Any]) -> list[str]:
    return [m.content for m in messages]


def test_a_chatgpt_export_keeps_titles_times_branches_and_ids(database: Database, tmp_path: Path) -> None:
    report = import_chatgpt(database, _write_export(tmp_path, [_trip(), _bread()]))

    assert (report.conversations_added, report.messages_added, report.conversations_skipped) == (2, 8, 0)
    store = SqliteConversationStore(database)
    assert sorted(c.title for c in store.conversations()) == ["Bread", "Trip to Lisbon"]
    trip = store.conversation("chatgpt-conv-trip")
    assert trip.created_at == TRIP_START
    updated = {c.id: c.updated_at for c in store.conversations()}
    assert updated["chatgpt-conv-trip"] == TRIP_START + 50
    assert updated["chatgpt-conv-bread"] == BREAD_START + 2  # no update_time: the newest message's
    branch = store.branch(trip.current_leaf_id)
    assert _contents(branch) == ["Where should I stay in Lisbon?", "Alfama or Baixa.", "And for a day trip?",
                                 "Sintra is an easy day trip."]
    assert [m.role for m in branch] == ["user", "assistant", "user", "assistant"]
    assert branch[0].parent_id is None  # the empty root and the hidden system node are skipped
    assert branch[0].created_at == TRIP_START + 10
    assert (branch[1].model, branch[1].finish_reason) == ("gpt-4o", "stop")
    assert branch[3].finish_reason == "length"
    assert branch[3].parent_id == branch[2].id  # the tool node between them is skipped
    assert _contents(store.alternatives(branch[2].id)) == ["And for food?", "And for a day trip?"]
    first_question = store.alternatives(branch[2].id)[0]
    assert _contents(store.branch(first_question.id)) == [*_contents(branch[:2]), "And for food?"]
    sources = dict(database.conn.execute("SELECT content, source_id FROM messages").fetchall())
    assert sources["And for food?"] == "u2a"
    assert sources["Try the Time Out Market."] == "a2a"
    assert "search results" not in sources


def test_non_text_parts_are_left_out_and_an_image_only_message_is_skipped(database: Database, tmp_path: Path) -> None:
    import_chatgpt(database, _write_export(tmp_path, [_bread()]))

    store = SqliteConversationStore(database)
    bread = store.conversation("chatgpt-conv-bread")
    branch = store.branch(bread.current_leaf_id)
    assert _contents(branch) == ["Why did my bread not rise?", "The yeast was probably old."]
    assert branch[0].parent_id is None
    assert branch[1].created_at == branch[0].created_at  # no time given: its parent's, so it sorts after it


def test_importing_the_same_file_again_adds_nothing(database: Database, tmp_path: Path) -> None:
    path = _write_export(tmp_path, [_trip(), _bread()])
    import_chatgpt(database, path)

    again = import_chatgpt(database, path)

    assert (again.conversations_added, again.messages_added, again.conversations_skipped) == (0, 0, 2)
    assert (_count(database, "conversations"), _count(database, "messages")) == (2, 8)


def test_a_newer_export_adds_only_the_new_messages(database: Database, tmp_path: Path) -> None:
    import_chatgpt(database, _write_export(tmp_path, [_trip()]))
    later = _trip()
    later["mapping"]["a2b"]["children"] = ["u3"]
    later["mapping"]["u3"] = _node("u3", "a2b", [], _message("u3", "user", ["How do I get there?"], TRIP_START + 60))
    later["current_node"] = "u3"

    report = import_chatgpt(database, _write_export(tmp_path, [later], "newer.json"))

    assert (report.conversations_added, report.conversations_updated, report.messages_added) == (0, 1, 1)
    store = SqliteConversationStore(database)
    branch = store.branch(store.conversation("chatgpt-conv-trip").current_leaf_id)
    assert _contents(branch)[-2:] == ["Sintra is an easy day trip.", "How do I get there?"]


def _with_list_node(conversation: dict[str, Any]) -> None:
    conversation["mapping"]["a2a"] = ["not", "a", "node"]


def _without_content(conversation: dict[str, Any]) -> None:
    del conversation["mapping"]["u2b"]["message"]["content"]


def _with_mapping_list(conversation: dict[str, Any]) -> None:
    conversation["mapping"] = []


def _with_loop(conversation: dict[str, Any]) -> None:
    conversation["mapping"]["root-1"]["parent"] = "a2a"


@pytest.mark.parametrize(("damage", "record", "problem"), [
    (_with_list_node, "conversation 2 ('Trip to Lisbon'), node 'a2a'", "it is a list, not an object"),
    (_without_content, "conversation 2 ('Trip to Lisbon'), node 'u2b'", "'content' is missing"),
    (_with_mapping_list, "conversation 2 ('Trip to Lisbon')", "'mapping' is a list, not an object"),
    (_with_loop, "conversation 2 ('Trip to Lisbon'), node", "loop"),
])
def test_a_damaged_record_names_file_and_record_and_saves_nothing(database: Database, tmp_path: Path,
                                                                  damage: Any, record: str, problem: str) -> None:
    trip = _trip()
    damage(trip)
    path = _write_export(tmp_path, [_bread(), trip])  # the first conversation is fine

    with pytest.raises(KnownError) as raised:
        import_chatgpt(database, path)

    assert str(path) in raised.value.message
    assert record in raised.value.message
    assert problem in raised.value.message
    assert raised.value.hint
    assert (_count(database, "conversations"), _count(database, "messages"), _count(database, "messages_fts")) == \
        (0, 0, 0)


@pytest.mark.parametrize(("text", "problem"), [
    ("{not json", "is not JSON ("),
    ('{"conversations": []}', "an object, not the list of conversations"),
])
def test_a_file_that_is_not_a_chatgpt_export_is_refused(database: Database, tmp_path: Path, text: str,
                                                        problem: str) -> None:
    path = tmp_path / "conversations.json"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(KnownError) as raised:
        import_chatgpt(database, path)

    assert str(path) in raised.value.message
    assert problem in raised.value.message


def test_the_zip_chatgpt_sends_can_be_imported_as_it_is(database: Database, tmp_path: Path) -> None:
    path = tmp_path / "export.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("chat.html", "<html></html>")
        archive.writestr("conversations.json", json.dumps([_bread()]))

    assert import_chatgpt(database, path).conversations_added == 1


def test_markdown_has_the_current_branch_in_order(database: Database, tmp_path: Path) -> None:
    import_chatgpt(database, _write_export(tmp_path, [_trip()]))
    store = SqliteConversationStore(database)

    text = export_markdown(store, "chatgpt-conv-trip")

    assert text.startswith("# Trip to Lisbon\n")
    assert time.strftime("%Y-%m-%d", time.localtime(TRIP_START)) in text
    wanted = ["## You", "Where should I stay in Lisbon?", "## Assistant (gpt-4o)", "Alfama or Baixa.", "## You",
              "And for a day trip?", "## Assistant (gpt-4o)", "Sintra is an easy day trip."]
    positions = [text.index(part, text.index(wanted[i - 1]) + 1 if i else 0) for i, part in enumerate(wanted)]
    assert positions == sorted(positions)
    assert "And for food?" not in text  # the other branch


def test_a_cleo_export_round_trips_into_a_fresh_database(database: Database, tmp_path: Path) -> None:
    import_chatgpt(database, _write_export(tmp_path, [_trip(), _bread()]))
    store = SqliteConversationStore(database)
    chat = store.create_conversation("Written in Cleo", "Be brief.")
    question = store.add_message(chat.id, "user", "Hello?", None)
    answer = store.add_message(chat.id, "assistant", "Hi.", question.id, model="cleo-moe", finish_reason="stop")
    store.set_current_leaf(chat.id, answer.id)
    store.create_conversation("Secret", temporary=True)
    document = json.loads(json.dumps(export_everything(database)))
    fresh = open_database(tmp_path / "fresh.db")
    try:
        report = import_cleo_json(fresh, document, source="backup.json")
        again = import_cleo_json(fresh, document, source="backup.json")

        assert (report.conversations_added, report.messages_added) == (3, 10)
        assert (again.conversations_added, again.messages_added, again.conversations_skipped) == (0, 0, 3)
        assert _rows(fresh) == _rows(database)
        fresh_store = SqliteConversationStore(fresh)
        assert fresh_store.conversation(chat.id) == store.conversation(chat.id)
        assert export_markdown(fresh_store, "chatgpt-conv-trip") == export_markdown(store, "chatgpt-conv-trip")
    finally:
        fresh.close()


def _rows(database: Database) -> tuple[list[Any], list[Any]]:
    conversations = database.conn.execute(
        "SELECT id, title, created_at, updated_at, system_prompt, current_leaf_id FROM conversations "
        "WHERE temporary = 0 ORDER BY id").fetchall()
    messages = database.conn.execute(
        "SELECT id, conversation_id, parent_id, role, content, created_at, finish_reason, model, source_id "
        "FROM messages ORDER BY id").fetchall()
    return conversations, messages


def test_one_conversation_as_json_imports_back(database: Database, tmp_path: Path) -> None:
    import_chatgpt(database, _write_export(tmp_path, [_trip()]))
    document = export_json(SqliteConversationStore(database), "chatgpt-conv-trip")
    fresh = open_database(tmp_path / "fresh.db")
    try:
        assert import_cleo_json(fresh, document).messages_added == 6
        # the same chat imported from ChatGPT later is recognised by ChatGPT's ids, not duplicated
        assert import_chatgpt(fresh, _write_export(tmp_path, [_trip()])).messages_added == 0
    finally:
        fresh.close()


def test_a_damaged_cleo_export_names_the_record_and_saves_nothing(database: Database) -> None:
    store = SqliteConversationStore(database)
    chat = store.create_conversation("Kept")
    store.add_message(chat.id, "user", "Hello?", None)
    document = copy.deepcopy(export_everything(database))
    document["conversations"][0]["id"] = "another"
    bad = copy.deepcopy(document["conversations"][0])
    bad["title"] = "Broken"
    bad["messages"][0]["role"] = "robot"
    document["conversations"].append(bad)

    with pytest.raises(KnownError, match=r"backup\.json, conversation 2 \('Broken'\), message 1") as raised:
        import_cleo_json(database, document, source="backup.json")

    assert "'role' is 'robot'" in raised.value.message
    assert _count(database, "conversations") == 1


def _cleo(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cleo")
    transfer_commands.add_commands(parser.add_subparsers(dest="command", required=True))
    return transfer_commands.run(parser.parse_args(argv))


def test_the_commands_import_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_export(tmp_path, [_trip(), _bread()])

    assert _cleo(["import", "chatgpt", str(path)]) == 0
    assert "2 conversation(s) added, 8 message(s) added" in capsys.readouterr().out
    assert _cleo(["import", "chatgpt", str(path)]) == 0
    assert "2 already imported" in capsys.readouterr().out

    backup = tmp_path / "backup.json"
    assert _cleo(["export", "--all", "--output", str(backup)]) == 0
    assert len(json.loads(backup.read_text(encoding="utf-8"))["conversations"]) == 2
    assert _cleo(["export", "chatgpt-conv-bread"]) == 0
    assert "Why did my bread not rise?" in capsys.readouterr().out
    with pytest.raises(KnownError, match="conversation id, or --all"):
        _cleo(["export"])
