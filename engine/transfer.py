"""Conversations in and out of Cleo: Markdown and JSON exports, imports of Cleo's JSON and ChatGPT's data export.

An import is all-or-nothing per file: every record is checked before anything is written, and
everything is written in one transaction, so a damaged record leaves the database as it was and
the error names the file and the record.

Importing a file again adds nothing. A ChatGPT conversation becomes the Cleo conversation
`chatgpt-<ChatGPT's conversation id>` and each message keeps ChatGPT's message id as `source_id`;
a Cleo export keeps Cleo's own ids. Only messages that are not there yet are added, so a newer
export of the same chats brings in just what is new.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.conversations import Message
from engine.database import Database
from engine.errors import KnownError
from engine.store import SqliteConversationStore

CLEO_FORMAT = "cleo-conversations"
CLEO_FORMAT_VERSION = 1
CHATGPT_ID_PREFIX = "chatgpt-"

_CHATGPT_HINT = ("Import the conversations.json (or the whole .zip) of a ChatGPT data export; if that is what this is, "
                 "it is damaged or was edited: export again from ChatGPT (Settings → Data controls → Export data).")
_CLEO_HINT = ("Import a file written by `cleo export --format json` or `cleo export --all`; if that is what this is, "
              "it is damaged or was edited: export it again from Cleo.")
# ChatGPT's finish reasons in Cleo's words; a reply must have one, or Cleo would call it interrupted.
_CHATGPT_FINISH = {"stop": "stop", "max_tokens": "length", "interrupted": "stopped"}
_ROLES = {"user": "You", "assistant": "Assistant", "system": "System"}


class ImportFileInvalid(KnownError):
    """A file to import is not what it should be, or one of its records is damaged."""


@dataclass
class ImportReport:
    """What an import did, counted in conversations and messages."""

    conversations_added: int = 0
    conversations_updated: int = 0  # imported before; the file had messages that were not
    conversations_skipped: int = 0  # imported before, nothing new
    conversations_empty: int = 0  # nothing Cleo can show: only hidden, system or non-text messages
    messages_added: int = 0

    def summary(self) -> str:
        parts = [f"{self.conversations_added} conversation(s) added", f"{self.messages_added} message(s) added"]
        if self.conversations_updated:
            parts.append(f"{self.conversations_updated} conversation(s) brought up to date")
        if self.conversations_skipped:
            parts.append(f"{self.conversations_skipped} already imported")
        if self.conversations_empty:
            parts.append(f"{self.conversations_empty} with nothing to import")
        return ", ".join(parts)


# --- exports -------------------------------------------------------------------------------------


def export_markdown(store: SqliteConversationStore, conversation_id: str) -> str:
    """The branch the user is looking at, root to current leaf, as a Markdown document."""
    conversation = store.conversation(conversation_id)
    lines = [f"# {conversation.title or 'Untitled conversation'}", "", f"Started {_when(conversation.created_at)}", ""]
    if conversation.system_prompt:
        lines += [f"> System prompt: {conversation.system_prompt}", ""]
    for message in store.branch(conversation.current_leaf_id or _latest_message_id(store, conversation_id)):
        lines += [f"## {_speaker(message)}", "", message.content.rstrip(), ""]
    return "\n".join(lines)


def export_json(store: SqliteConversationStore, conversation_id: str) -> dict[str, Any]:
    """One conversation with every branch, in the format `import_cleo_json` reads."""
    store.conversation(conversation_id)  # a missing id is the user's to fix, said in the store's words
    return _cleo_document([_conversation_record(store.database, conversation_id)])


def export_everything(database: Database) -> dict[str, Any]:
    """Every conversation except temporary chats, with every branch, in the format `import_cleo_json` reads."""
    rows = database.conn.execute("SELECT id FROM conversations WHERE temporary = 0 ORDER BY created_at, id")
    return _cleo_document([_conversation_record(database, row[0]) for row in rows.fetchall()])


def _cleo_document(conversations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format": CLEO_FORMAT, "version": CLEO_FORMAT_VERSION, "exported_at": time.time(),
            "conversations": conversations}


def _conversation_record(database: Database, conversation_id: str) -> dict[str, Any]:
    conn = database.conn
    row = conn.execute("SELECT id, title, created_at, updated_at, pinned, archived, model, system_prompt, "
                       "memory_enabled, current_leaf_id FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
    messages = conn.execute("SELECT id, parent_id, role, content, created_at, updated_at, finish_reason, model, "
                            "source_id, prompt_tokens, completion_tokens FROM messages WHERE conversation_id = ? "
                            "ORDER BY rowid", (conversation_id,)).fetchall()
    names = ("id", "parent_id", "role", "content", "created_at", "updated_at", "finish_reason", "model", "source_id",
             "prompt_tokens", "completion_tokens")
    return {"id": row[0], "title": row[1], "created_at": row[2], "updated_at": row[3], "pinned": bool(row[4]),
            "archived": bool(row[5]), "model": row[6], "system_prompt": row[7], "memory_enabled": bool(row[8]),
            "current_leaf_id": row[9], "messages": [dict(zip(names, m, strict=True)) for m in messages]}


def _latest_message_id(store: SqliteConversationStore, conversation_id: str) -> str | None:
    row = store.conn.execute("SELECT id FROM messages WHERE conversation_id = ? ORDER BY created_at DESC, rowid DESC "
                             "LIMIT 1", (conversation_id,)).fetchone()
    return str(row[0]) if row else None


def _speaker(message: Message) -> str:
    name = _ROLES.get(message.role, message.role.capitalize())
    return f"{name} ({message.model})" if message.role == "assistant" and message.model else name


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


# --- what an import writes -----------------------------------------------------------------------


@dataclass(frozen=True)
class _NewMessage:
    key: str  # what makes it "the same message" on a second import: ChatGPT's id, or Cleo's id
    parent_key: str | None
    role: str
    content: str
    created_at: float
    updated_at: float
    id: str | None = None  # Cleo's id to keep; None: a new one
    source_id: str | None = None
    model: str = ""
    finish_reason: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class _NewConversation:
    id: str
    title: str
    created_at: float
    updated_at: float
    messages: list[_NewMessage]  # in the order they should be saved
    current_key: str | None
    pinned: bool = False
    archived: bool = False
    model: str = ""
    system_prompt: str | None = None
    memory_enabled: bool = True


def _save(database: Database, conversations: list[_NewConversation], place: _Place) -> ImportReport:
    report = ImportReport()
    with database.write() as conn:
        for conversation in conversations:
            _save_conversation(conn, conversation, place, report)
    return report


def _save_conversation(conn: Any, new: _NewConversation, place: _Place, report: ImportReport) -> None:
    if not new.messages:
        report.conversations_empty += 1
        return
    exists = conn.execute("SELECT 1 FROM conversations WHERE id = ?", (new.id,)).fetchone() is not None
    ids = _saved_message_ids(conn, new.id) if exists else {}
    missing = [m for m in new.messages if not _already_saved(m, ids)]
    if not exists:
        conn.execute("INSERT INTO conversations (id, title, created_at, updated_at, pinned, archived, model, "
                     "system_prompt, memory_enabled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (new.id, new.title, new.created_at, new.updated_at, int(new.pinned), int(new.archived), new.model,
                      new.system_prompt, int(new.memory_enabled)))
    for message in missing:
        ids[message.key] = message.id or uuid.uuid4().hex
    for message in missing:
        _insert_message(conn, new.id, message, ids, place)
    if missing and new.current_key is not None:
        conn.execute("UPDATE conversations SET current_leaf_id = ?, updated_at = max(updated_at, ?) WHERE id = ?",
                     (ids[new.current_key], new.updated_at, new.id))
    report.messages_added += len(missing)
    if not exists:
        report.conversations_added += 1
    elif missing:
        report.conversations_updated += 1
    else:
        report.conversations_skipped += 1


def _saved_message_ids(conn: Any, conversation_id: str) -> dict[str, str]:
    """Cleo id and ChatGPT id (`source_id`) → Cleo id, for the messages of the conversation already saved."""
    rows = conn.execute("SELECT id, source_id FROM messages WHERE conversation_id = ?", (conversation_id,)).fetchall()
    return {key: row[0] for row in rows for key in (row[0], row[1]) if key is not None}


def _already_saved(message: _NewMessage, ids: dict[str, str]) -> bool:
    """Whether `message` is saved, by its key or by its ChatGPT id; if so `ids` learns its Cleo id.

    Matching the ChatGPT id too means a chat imported from ChatGPT on two computers is one chat
    when one computer's Cleo export is imported on the other, although Cleo's ids differ.
    """
    saved = ids.get(message.key) or (ids.get(message.source_id) if message.source_id is not None else None)
    if saved is not None:
        ids[message.key] = saved
    return saved is not None


def _insert_message(conn: Any, conversation_id: str, message: _NewMessage, ids: dict[str, str], place: _Place) -> None:
    message_id = ids[message.key]
    owner = conn.execute("SELECT conversation_id FROM messages WHERE id = ?", (message_id,)).fetchone() \
        if message.id is not None else None  # a new id is unique; a kept one may be taken
    if owner is not None:
        raise place.inner(f"message {message.key!r}").error(
            f"Cleo already has a message with this id in another conversation ({owner[0]!r})")
    parent_id = ids[message.parent_key] if message.parent_key is not None else None
    conn.execute(
        "INSERT INTO messages (id, conversation_id, parent_id, role, content, created_at, updated_at, model, "
        "finish_reason, source_id, prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (message_id, conversation_id, parent_id, message.role, message.content, message.created_at,
         message.updated_at, message.model, message.finish_reason, message.source_id, message.prompt_tokens,
         message.completion_tokens))


# --- checking records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    """Where a record is, for error messages: the file, and e.g. "conversation 3 ('Trip'), node 'ab1'"."""

    file: str
    hint: str
    record: str = ""

    def inner(self, record: str) -> _Place:
        return replace(self, record=f"{self.record}, {record}" if self.record else record)

    def error(self, problem: str) -> ImportFileInvalid:
        where = f"{self.file}, {self.record}" if self.record else self.file
        return ImportFileInvalid(f"Cleo cannot import {where}: {problem}. Nothing from {self.file} was saved.",
                                 hint=self.hint)


def _object(value: Any, place: _Place) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise place.error(f"it is {_kind(value)}, not an object")
    return value


def _get(record: dict[str, Any], name: str, kinds: tuple[type, ...], place: _Place, *, default: Any = None,
         required: bool = False) -> Any:
    """`record[name]` if it has one of `kinds`; missing or null gives `default` unless it is required."""
    value = record.get(name)
    if value is None:
        if required:
            raise place.error(f"{name!r} is missing")
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(dict.fromkeys(_KIND_NAMES[k] for k in kinds))
        raise place.error(f"{name!r} is {_kind(value)}, not {expected}")
    return value


_KIND_NAMES = {str: "text", int: "a number", float: "a number", bool: "true or false", list: "a list",
               dict: "an object"}
_NUMBER = (int, float)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return _KIND_NAMES.get(type(value), type(value).__name__)


def _parents_first(parents: dict[str, str | None], place: _Place, what: str) -> list[str]:
    """The keys of a tree given by parent links, each after its parent; a link to nowhere or a loop is an error."""
    children: dict[str | None, list[str]] = {}
    for key, parent in parents.items():
        if parent is not None and parent not in parents:
            raise place.inner(f"{what} {key!r}").error(f"its parent {parent!r} is not in the file")
        children.setdefault(parent, []).append(key)
    order: list[str] = []
    stack = list(reversed(children.get(None, [])))
    while stack:  # not recursive: a long chat is thousands of messages deep
        key = stack.pop()
        order.append(key)
        stack.extend(reversed(children.get(key, [])))
    if len(order) < len(parents):
        looped = next(key for key in parents if key not in set(order))
        raise place.inner(f"{what} {looped!r}").error("its parent links form a loop")
    return order


# --- Cleo's JSON ---------------------------------------------------------------------------------


def import_cleo_json(database: Database, data: Any, *, source: str = "the Cleo export") -> ImportReport:
    """Import what `export_json` or `export_everything` wrote; `source` names the file in errors."""
    place = _Place(source, _CLEO_HINT)
    document = _object(data, place)
    if document.get("format") != CLEO_FORMAT:
        raise place.error(f"it is not a Cleo export ('format' is not {CLEO_FORMAT!r})")
    version = _get(document, "version", (int,), place, required=True)
    if version > CLEO_FORMAT_VERSION:
        raise ImportFileInvalid(f"{source} was exported by a newer Cleo (format version {version}).",
                                hint="Update Cleo, then import it again.")
    records = _get(document, "conversations", (list,), place, required=True)
    conversations = [_cleo_conversation(record, place.inner(f"conversation {n}"))
                     for n, record in enumerate(records, 1)]
    return _save(database, conversations, place)


def _cleo_conversation(value: Any, place: _Place) -> _NewConversation:
    record = _object(value, place)
    title = _get(record, "title", (str,), place, default="")
    place = replace(place, record=f"{place.record} ({title!r})")
    created_at = float(_get(record, "created_at", _NUMBER, place, required=True))
    records = _get(record, "messages", (list,), place, required=True)
    messages = [_cleo_message(m, place.inner(f"message {n}")) for n, m in enumerate(records, 1)]
    keys = [m.key for m in messages]
    _check_unique(keys, place, "message")
    _parents_first({m.key: m.parent_key for m in messages}, place, "message")
    current = _get(record, "current_leaf_id", (str,), place)
    if current is not None and current not in keys:
        raise place.error(f"'current_leaf_id' {current!r} is not one of its messages")
    return _NewConversation(
        id=_get(record, "id", (str,), place, required=True), title=title, created_at=created_at,
        updated_at=float(_get(record, "updated_at", _NUMBER, place, default=created_at)), messages=messages,
        current_key=current, pinned=_get(record, "pinned", (bool,), place, default=False),
        archived=_get(record, "archived", (bool,), place, default=False),
        model=_get(record, "model", (str,), place, default=""),
        system_prompt=_get(record, "system_prompt", (str,), place),
        memory_enabled=_get(record, "memory_enabled", (bool,), place, default=True))


def _cleo_message(value: Any, place: _Place) -> _NewMessage:
    record = _object(value, place)
    message_id = _get(record, "id", (str,), place, required=True)
    place = replace(place, record=f"{place.record} ({message_id!r})")
    role = _get(record, "role", (str,), place, required=True)
    if role not in _ROLES:
        raise place.error(f"'role' is {role!r}, not one of {', '.join(map(repr, _ROLES))}")
    created_at = float(_get(record, "created_at", _NUMBER, place, required=True))
    return _NewMessage(
        key=message_id, id=message_id, parent_key=_get(record, "parent_id", (str,), place), role=role,
        content=_get(record, "content", (str,), place, required=True), created_at=created_at,
        updated_at=float(_get(record, "updated_at", _NUMBER, place, default=created_at)),
        source_id=_get(record, "source_id", (str,), place), model=_get(record, "model", (str,), place, default=""),
        finish_reason=_get(record, "finish_reason", (str,), place, default=""),
        prompt_tokens=_get(record, "prompt_tokens", (int,), place),
        completion_tokens=_get(record, "completion_tokens", (int,), place))


def _check_unique(keys: Iterable[str], place: _Place, what: str) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise place.inner(f"{what} {key!r}").error("the id appears twice")
        seen.add(key)


# --- ChatGPT's data export -----------------------------------------------------------------------


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
    """Import `conversations.json` from a ChatGPT data export (or the export's .zip), every branch."""
    place = _Place(str(path), _CHATGPT_HINT)
    data = _read_json(path, place, _chatgpt_member)
    if not isinstance(data, list):
        raise place.error(f"it holds {_kind(data)}, not the list of conversations of a ChatGPT export")
    conversations = [_chatgpt_conversation(record, n, place) for n, record in enumerate(data, 1)]
    return _save(database, conversations, place)


def import_cleo_file(database: Database, path: Path) -> ImportReport:
    """Import a file written by `cleo export` (JSON)."""
    return import_cleo_json(database, _read_json(path, _Place(str(path), _CLEO_HINT), None), source=str(path))


def _read_json(path: Path, place: _Place, member: Callable[[zipfile.ZipFile], str] | None) -> Any:
    try:
        if member is not None and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                raw = archive.read(member(archive))
        else:
            raw = path.read_bytes()
        return json.loads(raw.decode("utf-8"))
    except KeyError:
        raise place.error("it is a .zip without a conversations.json") from None
    except FileNotFoundError:
        raise ImportFileInvalid(f"There is no file {path}.", hint="Check the name and folder.") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise ImportFileInvalid(f"Cleo cannot read {path} ({exc}).", hint="Check that the file is readable.") from exc
    except UnicodeDecodeError:
        raise place.error("it is not a UTF-8 text file") from None
    except json.JSONDecodeError as exc:
        raise place.error(f"it is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def _chatgpt_member(archive: zipfile.ZipFile) -> str:
    for name in archive.namelist():
        if name.rsplit("/", 1)[-1] == "conversations.json":
            return name
    raise KeyError("conversations.json")


def _chatgpt_conversation(value: Any, number: int, file: _Place) -> _NewConversation:
    place = file.inner(f"conversation {number}")
    record = _object(value, place)
    title = _get(record, "title", (str,), place, default="")
    place = file.inner(f"conversation {number} ({title!r})")
    mapping = _get(record, "mapping", (dict,), place, required=True)
    nodes = {key: _chatgpt_node(key, node, place.inner(f"node {key!r}")) for key, node in mapping.items()}
    _check_unique((n.message.id for n in nodes.values() if n.message), place, "message")
    order = _parents_first({key: node.parent for key, node in nodes.items()}, place, "node")
    times = [n.message.created_at for n in nodes.values() if n.message and n.message.created_at is not None]
    created_at = float(_get(record, "create_time", _NUMBER, place, default=min(times, default=time.time())))
    tree = _Tree()
    messages = [m for key in order if (m := _chatgpt_message(key, nodes, tree, created_at)) is not None]
    updated_at = float(_get(record, "update_time", _NUMBER, place, default=max(times, default=created_at)))
    return _NewConversation(
        id=CHATGPT_ID_PREFIX + _chatgpt_id(record, mapping, place),
        title=title or _title_from(next((m.content for m in messages if m.role == "user"), "")),
        created_at=created_at, updated_at=updated_at, messages=messages,
        current_key=_chatgpt_current(record, nodes, tree, messages, place))


def _chatgpt_id(record: dict[str, Any], mapping: dict[str, Any], place: _Place) -> str:
    given = _get(record, "conversation_id", (str,), place) or _get(record, "id", (str,), place)
    if given:
        return str(given)
    # Old exports may lack an id; the same conversation must still get the same one every time.
    fingerprint = json.dumps([record.get("create_time"), sorted(mapping)])
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:32]


def _chatgpt_node(key: str, value: Any, place: _Place) -> _ChatGPTNode:
    node = _object(value, place)
    parent = _get(node, "parent", (str,), place)
    message = _get(node, "message", (dict,), place)
    return _ChatGPTNode(parent, _chatgpt_node_message(key, message, place) if message is not None else None)


def _chatgpt_node_message(key: str, message: dict[str, Any], place: _Place) -> _ChatGPTMessage | None:
    author = _get(message, "author", (dict,), place, required=True)
    role = _get(author, "role", (str,), place.inner("author"), required=True)
    content = _get(message, "content", (dict,), place, required=True)
    text = _chatgpt_text(content, place.inner("content"))
    metadata = _get(message, "metadata", (dict,), place, default={})
    created_at = _get(message, "create_time", _NUMBER, place)
    if role not in ("user", "assistant") or not text.strip() or metadata.get("is_visually_hidden_from_conversation"):
        return None
    finish = metadata.get("finish_details")
    finish_type = finish.get("type") if isinstance(finish, dict) else None
    return _ChatGPTMessage(
        id=_get(message, "id", (str,), place, default=key), role=role, content=text,
        created_at=float(created_at) if created_at is not None else None,
        model=str(metadata.get("model_slug") or "") if role == "assistant" else "",
        finish_reason=_CHATGPT_FINISH.get(str(finish_type), "stop") if role == "assistant" else "")


def _chatgpt_text(content: dict[str, Any], place: _Place) -> str:
    """The text a person sees: string parts of text and multimodal text, code as a fenced block; nothing else."""
    content_type = _get(content, "content_type", (str,), place, required=True)
    if content_type in ("text", "multimodal_text"):
        parts = _get(content, "parts", (list,), place, default=[])
        return "\n".join(part for part in parts if isinstance(part, str))  # dict parts are images and files
    if content_type == "code":
        code = _get(content, "text", (str,), place, default="")
        language = _get(content, "language", (str,), place, default="")
        return f"```{'' if language == 'unknown' else language}\n{code}\n```" if code.strip() else ""
    return ""  # browsing results, reasoning, custom instructions, memory: not the conversation itself


def _chatgpt_message(key: str, nodes: dict[str, _ChatGPTNode], tree: _Tree, start: float) -> _NewMessage | None:
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
    return _NewMessage(key=message.id, parent_key=inherited, role=message.role, content=message.content,
                       created_at=created_at, updated_at=created_at, source_id=message.id, model=message.model,
                       finish_reason=message.finish_reason)


def _chatgpt_current(record: dict[str, Any], nodes: dict[str, _ChatGPTNode], tree: _Tree,
                     messages: list[_NewMessage], place: _Place) -> str | None:
    """The imported message nearest ChatGPT's `current_node`; without one, the newest message."""
    current = _get(record, "current_node", (str,), place)
    if current in nodes and tree.nearest.get(current) is not None:
        return tree.nearest[current]
    newest = max(messages, key=lambda m: m.created_at, default=None)
    return newest.key if newest else None


def _title_from(text: str) -> str:
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first_line[:60] + ("…" if len(first_line) > 60 else "")
