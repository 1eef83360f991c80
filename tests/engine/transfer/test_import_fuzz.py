"""Any value a file can put in a time, text or id field: the import succeeds or raises
`ImportFileInvalid`, never another exception; a refused file changes nothing; and everything an
import stores can be shown (every time becomes a date, every id is plain)."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.storage.database import Database, open_database
from engine.transfer import ImportFileInvalid, import_chatgpt, import_cleo_file, import_cleo_json
from engine.transfer.importing import ID_PATTERN
from tests.engine.transfer.test_hostile_imports import START, chatgpt_chat, rows

HOSTILE_TEXT = ["", " ", "<img src=/dev/zero>", '<a href="x">', "<b>", 'a"b', "../../x.gguf", "/tmp/evil.gguf",
                "\ud800", "\udc00x", "\x00", "\u202e", "x" * 70, "a b", "NaN", "Infinity", "1e300"]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.just(10**5000), st.just(-(2**63)), st.just(2**64),
    st.floats(), st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e300, -1.0, 0.0, 32_503_680_001.0]),
    st.text(max_size=20), st.sampled_from(HOSTILE_TEXT),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
CLEO_FIELDS = [("conversation", "id"), ("conversation", "title"), ("conversation", "created_at"),
               ("conversation", "updated_at"), ("conversation", "current_leaf_id"),
               ("conversation", "system_prompt"), ("conversation", "model"), ("message", "id"),
               ("message", "parent_id"), ("message", "content"), ("message", "created_at"),
               ("message", "updated_at"), ("message", "source_id"), ("message", "model"),
               ("message", "prompt_tokens"), ("message", "finish_reason")]
CHATGPT_FIELDS = [("conversation", "id"), ("conversation", "title"), ("conversation", "create_time"),
                  ("conversation", "update_time"), ("conversation", "current_node"), ("message", "id"),
                  ("message", "create_time"), ("parts", 0), ("metadata", "model_slug")]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _cleo_document(where: str, name: str, value: Any) -> dict[str, Any]:
    message = {"id": "m1", "parent_id": None, "role": "user", "content": "Hello", "created_at": START}
    chat = {"id": "c1", "title": "Hi", "created_at": START, "messages": [message], "current_leaf_id": "m1"}
    (chat if where == "conversation" else message)[name] = value
    return {"format": "cleo-conversations", "version": 1, "conversations": [chat]}


def _chatgpt_chats(where: str, name: Any, value: Any) -> list[Any]:
    chat = chatgpt_chat("c1")
    message = chat["mapping"]["a1"]["message"]
    {"conversation": chat, "message": message, "parts": message["content"]["parts"],
     "metadata": message["metadata"]}[where][name] = value
    return [chat]


def _json_text(data: Any, value: Any) -> str:
    """`data` as JSON text, `value` included even where Python's json cannot write it (a 5000-digit number)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 10_000:
        return json.dumps(data).replace('"__huge__"', "9" * 5000)
    return json.dumps(data)


def _check(import_file: Callable[[Database], object]) -> None:
    """Import into a fresh database holding one earlier chat, and check what the user would see."""
    with tempfile.TemporaryDirectory() as folder:
        database = open_database(Path(folder) / "cleo.db")
        try:
            import_cleo_json(database, _cleo_document("conversation", "id", "earlier"))
            before = rows(database)
            try:
                import_file(database)
            except ImportFileInvalid as refused:
                assert "Nothing from" in refused.message
                assert rows(database) == before
            times = database.conn.execute(
                "SELECT created_at FROM conversations UNION ALL SELECT updated_at FROM conversations "
                "UNION ALL SELECT created_at FROM messages UNION ALL SELECT updated_at FROM messages").fetchall()
            for (at,) in times:
                datetime.fromtimestamp(at)
                time.strftime("%Y-%m-%d %H:%M", time.localtime(at))
            ids = database.conn.execute("SELECT id FROM conversations UNION ALL SELECT id FROM messages "
                                        "UNION ALL SELECT parent_id FROM messages UNION ALL SELECT source_id "
                                        "FROM messages UNION ALL SELECT current_leaf_id FROM conversations")
            assert all(i is None or ID_PATTERN.fullmatch(i) for (i,) in ids)
            assert all(model == "" for (model,) in database.conn.execute("SELECT model FROM conversations"))
        finally:
            database.close()


@FUZZ
@given(field=st.sampled_from(CLEO_FIELDS), value=VALUES)
def test_a_cleo_export_with_any_value_in_any_field(field: tuple[str, str], value: Any) -> None:
    document = _cleo_document(*field, value)
    _check(lambda database: import_cleo_json(database, document, source="backup.json"))


@FUZZ
@given(field=st.sampled_from(CLEO_FIELDS), value=VALUES)
def test_a_cleo_export_file_with_any_value_in_any_field(field: tuple[str, str], value: Any) -> None:
    """Written as Python's json writes it, NaN, Infinity and huge numbers included."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "backup.json"
        huge = isinstance(value, int) and value.bit_length() > 10_000
        path.write_text(_json_text(_cleo_document(*field, "__huge__" if huge else value), value), encoding="utf-8")
        _check(lambda database: import_cleo_file(database, path))


@FUZZ
@given(field=st.sampled_from(CHATGPT_FIELDS), value=VALUES)
def test_a_chatgpt_export_with_any_value_in_any_field(field: tuple[str, Any], value: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "conversations.json"
        huge = isinstance(value, int) and value.bit_length() > 10_000
        path.write_text(_json_text(_chatgpt_chats(*field, "__huge__" if huge else value), value), encoding="utf-8")
        _check(lambda database: import_chatgpt(database, path))
