"""Cleo's own JSON export format: every branch of every conversation, written and read back.

A document is {"format": "cleo-conversations", "version": 1, "exported_at": ..., "conversations":
[...]}, each conversation with all its messages and their ids. Importing it keeps Cleo's ids, so
importing the same export again, or a newer one, adds only the messages not there yet.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.storage.database import Database
from engine.storage.records import ConversationRecord, MessageRecord
from engine.transfer.importing import (
    NUMBER,
    ImportFileInvalid,
    ImportReport,
    Place,
    as_object,
    check_unique,
    field_value,
    parents_first,
    read_json,
    save,
)

CLEO_FORMAT = "cleo-conversations"
CLEO_FORMAT_VERSION = 1

_CLEO_HINT = ("Import a file written by `cleo export --format json` or `cleo export --all`; if that is what this is, "
              "it is damaged or was edited: export it again from Cleo.")
_ROLES = ("user", "assistant", "system")


def cleo_document(conversations: Sequence[ConversationRecord]) -> dict[str, Any]:
    """`conversations` as a Cleo export, the document `import_cleo_json` reads."""
    return {"format": CLEO_FORMAT, "version": CLEO_FORMAT_VERSION, "exported_at": time.time(),
            "conversations": [_conversation_json(c) for c in conversations]}


def import_cleo_json(database: Database, data: Any, *, source: str = "the Cleo export") -> ImportReport:
    """Import what `export_json` or `export_everything` wrote; `source` names the file in errors."""
    place = Place(source, _CLEO_HINT)
    document = as_object(data, place)
    if document.get("format") != CLEO_FORMAT:
        raise place.error(f"it is not a Cleo export ('format' is not {CLEO_FORMAT!r})")
    version = field_value(document, "version", (int,), place, required=True)
    if version > CLEO_FORMAT_VERSION:
        raise ImportFileInvalid(f"{source} was exported by a newer Cleo (format version {version}).",
                                hint="Update Cleo, then import it again.")
    records = field_value(document, "conversations", (list,), place, required=True)
    conversations = [_conversation_record(record, place.inner(f"conversation {n}"))
                     for n, record in enumerate(records, 1)]
    return save(database, conversations, place)


def import_cleo_file(database: Database, path: Path) -> ImportReport:
    """Import a file written by `cleo export` (JSON)."""
    return import_cleo_json(database, read_json(path, Place(str(path), _CLEO_HINT), None), source=str(path))


def _conversation_json(conversation: ConversationRecord) -> dict[str, Any]:
    return {"id": conversation.id, "title": conversation.title, "created_at": conversation.created_at,
            "updated_at": conversation.updated_at, "pinned": conversation.pinned, "archived": conversation.archived,
            "model": conversation.model, "system_prompt": conversation.system_prompt,
            "memory_enabled": conversation.memory_enabled, "current_leaf_id": conversation.current_key,
            "messages": [_message_json(m) for m in conversation.messages]}


def _message_json(message: MessageRecord) -> dict[str, Any]:
    return {"id": message.key, "parent_id": message.parent_key, "role": message.role, "content": message.content,
            "created_at": message.created_at, "updated_at": message.updated_at,
            "finish_reason": message.finish_reason, "model": message.model, "source_id": message.source_id,
            "prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens}


def _conversation_record(value: Any, place: Place) -> ConversationRecord:
    record = as_object(value, place)
    title = field_value(record, "title", (str,), place, default="")
    place = place.named(repr(title))
    created_at = float(field_value(record, "created_at", NUMBER, place, required=True))
    records = field_value(record, "messages", (list,), place, required=True)
    messages = [_message_record(m, place.inner(f"message {n}")) for n, m in enumerate(records, 1)]
    keys = [m.key for m in messages]
    check_unique(keys, place, "message")
    parents_first({m.key: m.parent_key for m in messages}, place, "message")
    current = field_value(record, "current_leaf_id", (str,), place)
    if current is not None and current not in keys:
        raise place.error(f"'current_leaf_id' {current!r} is not one of its messages")
    return ConversationRecord(
        id=field_value(record, "id", (str,), place, required=True), title=title, created_at=created_at,
        updated_at=float(field_value(record, "updated_at", NUMBER, place, default=created_at)), messages=messages,
        current_key=current, pinned=field_value(record, "pinned", (bool,), place, default=False),
        archived=field_value(record, "archived", (bool,), place, default=False),
        model=field_value(record, "model", (str,), place, default=""),
        system_prompt=field_value(record, "system_prompt", (str,), place),
        memory_enabled=field_value(record, "memory_enabled", (bool,), place, default=True))


def _message_record(value: Any, place: Place) -> MessageRecord:
    record = as_object(value, place)
    message_id = field_value(record, "id", (str,), place, required=True)
    place = place.named(repr(message_id))
    role = field_value(record, "role", (str,), place, required=True)
    if role not in _ROLES:
        raise place.error(f"'role' is {role!r}, not one of {', '.join(map(repr, _ROLES))}")
    created_at = float(field_value(record, "created_at", NUMBER, place, required=True))
    return MessageRecord(
        key=message_id, id=message_id, parent_key=field_value(record, "parent_id", (str,), place), role=role,
        content=field_value(record, "content", (str,), place, required=True), created_at=created_at,
        updated_at=float(field_value(record, "updated_at", NUMBER, place, default=created_at)),
        source_id=field_value(record, "source_id", (str,), place),
        model=field_value(record, "model", (str,), place, default=""),
        finish_reason=field_value(record, "finish_reason", (str,), place, default=""),
        prompt_tokens=field_value(record, "prompt_tokens", (int,), place),
        completion_tokens=field_value(record, "completion_tokens", (int,), place))
