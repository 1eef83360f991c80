"""Conversations out of Cleo: the branch on screen as Markdown, or every branch as Cleo's JSON.

An export holds the user's chats, so its file is private (0600 on POSIX) and written whole or
not at all (`write_export`): a failed export leaves the file that was there before.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from engine.chat.conversation import Message
from engine.errors import KnownError
from engine.paths import sync_folder
from engine.storage.conversations import SqliteConversationStore
from engine.storage.database import Database
from engine.transfer.cleo_json import cleo_document

log = logging.getLogger(__name__)

_SPEAKERS = {"user": "You", "assistant": "Assistant", "system": "System"}


def export_markdown(store: SqliteConversationStore, conversation_id: str) -> str:
    """The branch the user is looking at, root to current leaf, as a Markdown document."""
    conversation = store.conversation(conversation_id)
    lines = [f"# {conversation.title or 'Untitled conversation'}", "", f"Started {_when(conversation.created_at)}", ""]
    if conversation.system_prompt:
        lines += [f"> System prompt: {conversation.system_prompt}", ""]
    for message in store.branch(conversation.current_leaf_id or store.latest_message_id(conversation_id)):
        lines += [f"## {_speaker(message)}", "", message.content.rstrip(), ""]
    return "\n".join(lines)


def export_json(store: SqliteConversationStore, conversation_id: str) -> dict[str, Any]:
    """One conversation with every branch, in the format `import_cleo_json` reads."""
    return cleo_document([store.record(conversation_id)])


def export_everything(database: Database) -> dict[str, Any]:
    """Every conversation except temporary chats, with every branch, in the format `import_cleo_json` reads."""
    store = SqliteConversationStore(database)
    return cleo_document([store.record(conversation_id) for conversation_id in store.saved_conversation_ids()])


def write_export(path: Path, export: str | dict[str, Any]) -> None:
    """Write `export` (Markdown text, or a JSON document) to `path` whole or not at all.

    It goes to a private temporary file beside the file `path` names (through any symlink),
    streamed (a JSON document is never one big string), flushed to disk, and renamed over it; on
    any error the temporary file is removed and whatever was there is left as it was. A `path`
    that is not a regular file (a pipe, a terminal, `/dev/stdout` that is one) is written to
    directly: there is no file to replace, and a rename would put a file in its place.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            _write_to(path, export)
            return
    except FileNotFoundError:
        pass  # a new file
    except OSError as exc:
        raise _not_written(path, exc) from exc
    target = path.resolve()  # `/dev/stdout` sent to a file, or a link to one: that file is replaced
    try:
        descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise _not_written(path, exc) from exc
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as out:  # mkstemp makes it 0600
            _dump(out, export)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _not_written(path, exc) from exc
        raise
    try:
        sync_folder(target.parent)
    except OSError as exc:  # the export is written and named; only a power cut now could lose the name
        log.warning("wrote %s but could not flush its folder to disk (%s)", target, exc)


def _write_to(path: Path, export: str | dict[str, Any]) -> None:
    try:
        with path.open("w", encoding="utf-8", newline="\n") as out:
            _dump(out, export)
    except OSError as exc:
        raise KnownError(f"Cleo cannot write to {path} ({exc.strerror or exc}).",
                         hint="Check that what reads from it is still there.") from exc


def _dump(out: IO[str], export: str | dict[str, Any]) -> None:
    if isinstance(export, str):
        out.write(export)
    else:
        json.dump(export, out, ensure_ascii=False, indent=2)
        out.write("\n")


def _not_written(path: Path, exc: OSError) -> KnownError:
    return KnownError(f"Cleo cannot write {path} ({exc.strerror or exc}); nothing was changed there.",
                      hint="Choose a folder that exists, that you can write to, and with free space.")


def _speaker(message: Message) -> str:
    name = _SPEAKERS.get(message.role, message.role.capitalize())
    return f"{name} ({message.model})" if message.role == "assistant" and message.model else name


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
