"""ChatGPT's data export in: `conversations.json`, or the export's .zip, with every branch.

A ChatGPT conversation becomes the Cleo conversation `chatgpt-<ChatGPT's conversation id>` and
each message keeps ChatGPT's message id as `source_id`, so importing a file again adds nothing,
and a newer export of the same chats brings in just what is new. Only what a person sees in the
chat is imported: user and assistant text, code as a fenced block; system, tool and hidden
messages, images and browsing results are left out, and a message's parent becomes its nearest
imported ancestor.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.storage.database import Database
from engine.storage.records import ConversationRecord, MessageRecord
from engine.transfer.importing import (
    ImportReport,
    Place,
    as_object,
    check_unique,
    clean_text,
    field_value,
    is_identifier,
    message_text,
    optional_timestamp,
    parents_first,
    save,
    shown,
    text,
    timestamp,
)
from engine.transfer.reading import JsonRecords, open_records

CHATGPT_ID_PREFIX = "chatgpt-"

_CHATGPT_HINT = ("Import the conversations.json (or the whole .zip) of a ChatGPT data export; if that is what this is, "
                 "it is damaged or was edited: export again from ChatGPT (Settings → Data controls → Export data).")
# ChatGPT's finish reasons in Cleo's words; a reply must have one, or Cleo would call it interrupted.
_CHATGPT_FINISH = {"stop": "stop", "max_tokens": "length", "interrupted": "stopped"}


@dataclass(frozen=True)
class _ChatGPTNode:
    parent: str | None
    message: _ChatGPTMessage | None  # None: nothing Cleo shows (empty root, system, tool, hidden, not text)


@dataclass(frozen=True)
class _ChatGPTMessage:
    id: str
    role: str
    content: str
    created_at: float | None
    model: str
    finish_reason: str


@dataclass
class _Tree:
    """A conversation's nodes while they become messages: each node's nearest imported ancestor-or-self."""

    nearest: dict[str, str | None] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)


def import_chatgpt(database: Database, path: Path) -> ImportReport:
    """Import `conversations.json` from a ChatGPT data export (or the export's .zip), every branch.

    The conversations stream from the file into the database one at a time, all or none."""
    place = Place(str(path), _CHATGPT_HINT)
    with open_records(path, place, _chatgpt_member) as records:
        records.open_list("the list of conversations of a ChatGPT export")
        return save(database, _chatgpt_conversations(records, place), place)


def _chatgpt_conversations(records: JsonRecords, place: Place) -> Iterator[ConversationRecord]:
    for number, record in enumerate(records.items(lambda n: f"conversation {n}"), 1):
        yield _chatgpt_conversation(record, number, place)
    records.finish()


def _chatgpt_member(archive: zipfile.ZipFile) -> str:
    for name in archive.namelist():
        if name.rsplit("/", 1)[-1] == "conversations.json":
            return name
    raise KeyError("conversations.json")


def _chatgpt_conversation(value: Any, number: int, file: Place) -> ConversationRecord:
    place = file.inner(f"conversation {number}")
    record = as_object(value, place)
    title = text(record, "title", place, default="")
    place = file.inner(f"conversation {number} ({shown(title)})")
    mapping = field_value(record, "mapping", (dict,), place, required=True)
    nodes = {key: _chatgpt_node(key, node, place.inner(f"node {shown(key)}")) for key, node in mapping.items()}
    check_unique((n.message.id for n in nodes.values() if n.message), place, "message")
    order = parents_first({key: node.parent for key, node in nodes.items()}, place, "node")
    times = [n.message.created_at for n in nodes.values() if n.message and n.message.created_at is not None]
    created_at = timestamp(record, "create_time", place, default=min(times, default=time.time()))
    tree = _Tree()
    messages = [m for key in order if (m := _chatgpt_message(key, nodes, tree, created_at)) is not None]
    updated_at = timestamp(record, "update_time", place, default=max(times, default=created_at))
    return ConversationRecord(
        id=CHATGPT_ID_PREFIX + _chatgpt_id(record, mapping, place), created_at=created_at,
        title=title or _title_from(next((m.content for m in messages if m.role == "user"), "")),
        updated_at=updated_at, messages=messages,
        current_key=_chatgpt_current(record, nodes, tree, messages, place))


def _chatgpt_id(record: dict[str, Any], mapping: dict[str, Any], place: Place) -> str:
    given = field_value(record, "conversation_id", (str,), place) or field_value(record, "id", (str,), place)
    if given:
        return _kept_id(given, longest=64 - len(CHATGPT_ID_PREFIX))
    # Old exports may lack an id; the same conversation must still get the same one every time.
    fingerprint = json.dumps([record.get("create_time"), sorted(mapping)])
    return _fingerprint(fingerprint)


def _kept_id(given: str, *, longest: int = 64) -> str:
    """ChatGPT's id as Cleo keeps it: as it is (a UUID), or, when it is not a plain id, its fingerprint.

    Not refused: ChatGPT's ids are its business. A fingerprint is the same on every import, so
    importing the file again still finds what the first import saved."""
    return given if is_identifier(given) and len(given) <= longest else _fingerprint(given)


def _fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _chatgpt_node(key: str, value: Any, place: Place) -> _ChatGPTNode:
    node = as_object(value, place)
    parent = field_value(node, "parent", (str,), place)
    message = field_value(node, "message", (dict,), place)
    return _ChatGPTNode(parent, _chatgpt_node_message(key, message, place) if message is not None else None)


def _chatgpt_node_message(key: str, message: dict[str, Any], place: Place) -> _ChatGPTMessage | None:
    author = field_value(message, "author", (dict,), place, required=True)
    role = field_value(author, "role", (str,), place.inner("author"), required=True)
    content = field_value(message, "content", (dict,), place, required=True)
    said = _chatgpt_text(content, place.inner("content"))
    metadata = field_value(message, "metadata", (dict,), place, default={})
    created_at = optional_timestamp(message, "create_time", place)
    if role not in ("user", "assistant") or not said.strip() or metadata.get("is_visually_hidden_from_conversation"):
        return None
    said = message_text(said, place)
    finish = metadata.get("finish_details")
    finish_type = finish.get("type") if isinstance(finish, dict) else None
    model = metadata.get("model_slug")
    return _ChatGPTMessage(
        id=_kept_id(field_value(message, "id", (str,), place, default=key)), role=role, content=said,
        created_at=created_at,
        model=clean_text(model) if isinstance(model, str) and role == "assistant" else "",
        finish_reason=_CHATGPT_FINISH.get(str(finish_type), "stop") if role == "assistant" else "")


def _chatgpt_text(content: dict[str, Any], place: Place) -> str:
    """The text a person sees: string parts of text and multimodal text, code as a fenced block; nothing else."""
    content_type = field_value(content, "content_type", (str,), place, required=True)
    if content_type in ("text", "multimodal_text"):
        parts = field_value(content, "parts", (list,), place, default=[])
        return clean_text("\n".join(part for part in parts if isinstance(part, str)))  # dicts: images, files
    if content_type == "code":
        code = text(content, "text", place, default="")
        language = text(content, "language", place, default="")
        return f"```{'' if language == 'unknown' else language}\n{code}\n```" if code.strip() else ""
    return ""  # browsing results, reasoning, custom instructions, memory: not the conversation itself


def _chatgpt_message(key: str, nodes: dict[str, _ChatGPTNode], tree: _Tree, start: float) -> MessageRecord | None:
    """Node `key` as a Cleo message whose parent is its nearest imported ancestor (nodes come parents first)."""
    node = nodes[key]
    inherited = tree.nearest.get(node.parent) if node.parent is not None else None
    if node.message is None:
        tree.nearest[key] = inherited
        return None
    message = node.message
    # A message without a time sorts right after its parent, so its branch keeps its place.
    created_at = message.created_at if message.created_at is not None else tree.times.get(inherited or "", start)
    tree.nearest[key] = message.id
    tree.times[message.id] = created_at
    return MessageRecord(key=message.id, parent_key=inherited, role=message.role, content=message.content,
                       created_at=created_at, updated_at=created_at, source_id=message.id, model=message.model,
                       finish_reason=message.finish_reason)


def _chatgpt_current(record: dict[str, Any], nodes: dict[str, _ChatGPTNode], tree: _Tree,
                     messages: list[MessageRecord], place: Place) -> str | None:
    """The imported message nearest ChatGPT's `current_node`; without one, the newest message."""
    current = field_value(record, "current_node", (str,), place)
    if current in nodes and tree.nearest.get(current) is not None:
        return tree.nearest[current]
    newest = max(messages, key=lambda m: m.created_at, default=None)
    return newest.key if newest else None


def _title_from(text: str) -> str:
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first_line[:60] + ("…" if len(first_line) > 60 else "")
