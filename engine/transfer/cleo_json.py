"""Cleo's own JSON export format: every branch of every conversation, written and read back.

A document is {"format": "cleo-conversations", "version": 1, "exported_at": ..., "conversations":
[...]}, each conversation with all its messages and their ids. Importing it keeps Cleo's ids, so
importing the same export again, or a newer one, adds only the messages not there yet.

An id that is not a plain id (`importing.ID_PATTERN`) is refused rather than replaced: Cleo
writes none, so the file was edited, and a replaced id would not be the same message on the
next import of that file. A chat's model is not imported: it is a file on the computer that
exported it, and a file must not make Cleo load a model its user never chose (the chat uses the
model in the settings until its user picks one).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.storage.database import Database
from engine.storage.records import ConversationRecord, MessageRecord
from engine.transfer.importing import (
    ImportFileInvalid,
    ImportReport,
    Place,
    as_object,
    check_unique,
    count,
    field_value,
    identifier,
    kind_of,
    message_text,
    parents_first,
    save,
    shown,
    text,
    timestamp,
)
from engine.transfer.reading import JsonRecords, open_records

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
    """Import what `export_json` or `export_everything` wrote, already parsed; `source` names it in errors."""
    place = Place(source, _CLEO_HINT)
    document = as_object(data, place)
    _check_header(document, place)
    records = field_value(document, "conversations", (list,), place, required=True)
    # Already in memory, so every record is checked before the first is saved.
    conversations = [_conversation_record(record, place.inner(f"conversation {n}"))
                     for n, record in enumerate(records, 1)]
    return save(database, conversations, place)


def import_cleo_file(database: Database, path: Path) -> ImportReport:
    """Import a file written by `cleo export` (JSON), its conversations streamed into the database, all or none."""
    place = Place(str(path), _CLEO_HINT)
    with open_records(path, place, None) as records:
        records.open_object()
        header: dict[str, Any] = {}
        while (key := records.next_field()) is not None and key != "conversations":
            header[key] = records.value(f"field {shown(key)}")
        _check_header(header, place)  # Cleo writes them first, so no conversation is read before this check
        if key is None:
            raise place.error("'conversations' is missing")
        if not records.next_is_list():
            raise place.error(f"'conversations' is {kind_of(records.value('conversations'))}, not a list")
        return save(database, _streamed_conversations(records, place), place)


def _streamed_conversations(records: JsonRecords, place: Place) -> Iterator[ConversationRecord]:
    for number, record in enumerate(records.items(lambda n: f"conversation {n}"), 1):
        yield _conversation_record(record, place.inner(f"conversation {number}"))
    while (key := records.next_field()) is not None:  # the rest: read, bounded, and checked to be JSON
        if key == "conversations":
            raise place.error("'conversations' appears twice")
        records.value(f"field {shown(key)}")
    records.finish()


def _check_header(document: dict[str, Any], place: Place) -> None:
    if document.get("format") != CLEO_FORMAT:
        raise place.error(f"it is not a Cleo export ('format' is not {CLEO_FORMAT!r})")
    version = field_value(document, "version", (int,), place, required=True)
    if version > CLEO_FORMAT_VERSION:
        raise ImportFileInvalid(f"{place.file} was exported by a newer Cleo (format version {shown(version)}).",
                                hint="Update Cleo, then import it again.")


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
    title = text(record, "title", place, default="")
    place = place.named(shown(title))
    created_at = timestamp(record, "created_at", place)
    records = field_value(record, "messages", (list,), place, required=True)
    messages = [_message_record(m, place.inner(f"message {n}")) for n, m in enumerate(records, 1)]
    keys = [m.key for m in messages]
    check_unique(keys, place, "message")
    parents_first({m.key: m.parent_key for m in messages}, place, "message")
    current = field_value(record, "current_leaf_id", (str,), place)
    if current is not None and current not in keys:
        raise place.error(f"'current_leaf_id' {shown(current)} is not one of its messages")
    return ConversationRecord(
        id=identifier(record, "id", place, required=True), title=title, created_at=created_at,
        updated_at=timestamp(record, "updated_at", place, default=created_at), messages=messages,
        current_key=current, pinned=field_value(record, "pinned", (bool,), place, default=False),
        archived=field_value(record, "archived", (bool,), place, default=False),
        system_prompt=text(record, "system_prompt", place),
        memory_enabled=field_value(record, "memory_enabled", (bool,), place, default=True))


def _message_record(value: Any, place: Place) -> MessageRecord:
    record = as_object(value, place)
    message_id = identifier(record, "id", place, required=True)
    place = place.named(shown(message_id))
    role = field_value(record, "role", (str,), place, required=True)
    if role not in _ROLES:
        raise place.error(f"'role' is {shown(role)}, not one of {', '.join(map(repr, _ROLES))}")
    created_at = timestamp(record, "created_at", place)
    return MessageRecord(
        key=message_id, id=message_id, parent_key=identifier(record, "parent_id", place), role=role,
        content=message_text(text(record, "content", place, required=True), place), created_at=created_at,
        updated_at=timestamp(record, "updated_at", place, default=created_at),
        source_id=identifier(record, "source_id", place),
        model=text(record, "model", place, default=""),
        finish_reason=text(record, "finish_reason", place, default=""),
        prompt_tokens=count(record, "prompt_tokens", place),
        completion_tokens=count(record, "completion_tokens", place))
