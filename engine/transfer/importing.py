"""What every import shares: reading a JSON file, checking its records, reporting, and saving.

An import is all-or-nothing per file: every record is checked before anything is written, and the
conversation store saves everything in one transaction, so a damaged record leaves the database
as it was and the error (`ImportFileInvalid`) names the file and the record (`Place`).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.errors import KnownError
from engine.storage.conversations import SqliteConversationStore
from engine.storage.database import Database
from engine.storage.records import ConversationRecord, MessageIdTaken

NUMBER = (int, float)
_KIND_NAMES = {str: "text", int: "a number", float: "a number", bool: "true or false", list: "a list",
               dict: "an object"}


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


@dataclass(frozen=True)
class Place:
    """Where a record is, for error messages: the file, and e.g. "conversation 3 ('Trip'), node 'ab1'"."""

    file: str
    hint: str
    record: str = ""

    def inner(self, record: str) -> Place:
        return replace(self, record=f"{self.record}, {record}" if self.record else record)

    def named(self, name: str) -> Place:
        """The same record, with its name after it: "conversation 3 ('Trip')"."""
        return replace(self, record=f"{self.record} ({name})")

    def error(self, problem: str) -> ImportFileInvalid:
        where = f"{self.file}, {self.record}" if self.record else self.file
        return ImportFileInvalid(f"Cleo cannot import {where}: {problem}. Nothing from {self.file} was saved.",
                                 hint=self.hint)


def save(database: Database, conversations: Sequence[ConversationRecord], place: Place) -> ImportReport:
    """Save every conversation of the file through the conversation store, or none of them."""
    try:
        outcomes = SqliteConversationStore(database).save_records(conversations)
    except MessageIdTaken as taken:
        raise place.inner(f"message {taken.key!r}").error(
            f"Cleo already has a message with this id in another conversation ({taken.owner!r})") from None
    report = ImportReport()
    for outcome, added in outcomes:
        report.messages_added += added
        if outcome == "added":
            report.conversations_added += 1
        elif outcome == "updated":
            report.conversations_updated += 1
        elif outcome == "skipped":
            report.conversations_skipped += 1
        else:
            report.conversations_empty += 1
    return report


def read_json(path: Path, place: Place, member: Callable[[zipfile.ZipFile], str] | None) -> Any:
    """The JSON in `path`, or in the member of a .zip that `member` picks (it raises KeyError if none)."""
    try:
        if member is not None and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                raw = archive.read(member(archive))
        else:
            raw = path.read_bytes()
        return json.loads(raw.decode("utf-8"))
    except KeyError as missing:
        raise place.error(f"it is a .zip without a {missing.args[0]}") from None
    except FileNotFoundError:
        raise ImportFileInvalid(f"There is no file {path}.", hint="Check the name and folder.") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise ImportFileInvalid(f"Cleo cannot read {path} ({exc}).", hint="Check that the file is readable.") from exc
    except UnicodeDecodeError:
        raise place.error("it is not a UTF-8 text file") from None
    except json.JSONDecodeError as exc:
        raise place.error(f"it is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def as_object(value: Any, place: Place) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise place.error(f"it is {kind_of(value)}, not an object")
    return value


def field_value(record: dict[str, Any], name: str, kinds: tuple[type, ...], place: Place, *, default: Any = None,
                required: bool = False) -> Any:
    """`record[name]` if it has one of `kinds`; missing or null gives `default` unless it is required."""
    value = record.get(name)
    if value is None:
        if required:
            raise place.error(f"{name!r} is missing")
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(dict.fromkeys(_KIND_NAMES[k] for k in kinds))
        raise place.error(f"{name!r} is {kind_of(value)}, not {expected}")
    return value


def kind_of(value: Any) -> str:
    """What `value` is, in words: "text", "a list", "null", ..."""
    if value is None:
        return "null"
    return _KIND_NAMES.get(type(value), type(value).__name__)


def check_unique(keys: Iterable[str], place: Place, what: str) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise place.inner(f"{what} {key!r}").error("the id appears twice")
        seen.add(key)


def parents_first(parents: dict[str, str | None], place: Place, what: str) -> list[str]:
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
