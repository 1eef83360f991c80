"""What every import shares: checking a file's records, reporting, and saving.

An import is all-or-nothing per file: the records stream from the file (`reading`) into the
conversation store, which saves them in one transaction, and each is checked as it comes, so a
damaged record anywhere in the file, even the last, leaves the database as it was, and the error
(`ImportFileInvalid`) names the file, the record and the field (`Place`).

A file to import is untrusted (docs/ARCHITECTURE.md, decision 12): every value Cleo keeps is
checked for what the rest of Cleo assumes of it. Times are finite and between 1970 and 3000
(the sidebar and exports turn them into dates, which fails outside that on some systems), ids are
short and plain (the window puts them into links), text is valid Unicode (SQLite stores UTF-8).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, cast

from engine.errors import KnownError
from engine.storage.conversations import SqliteConversationStore
from engine.storage.database import Database
from engine.storage.records import ConversationRecord, MessageIdTaken

NUMBER = (int, float)
_KIND_NAMES = {str: "text", int: "a number", float: "a number", bool: "true or false", list: "a list",
               dict: "an object"}
# From 1970-01-01 to 3000-01-01: every system Cleo runs on can turn these into a local date.
EARLIEST_TIME = 0.0
LATEST_TIME = 32_503_680_000.0
# What an id may be: Cleo's own (hex), ChatGPT's (UUIDs) and Cleo's "chatgpt-<uuid>" all fit.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
ID_RULE = "an id (1 to 64 letters, digits, '-' or '_')"
LARGEST_COUNT = 2**31 - 1  # token counts; SQLite stores up to 2**63 - 1 and Python's ints have no end
# The most text one imported message keeps: about 250k tokens, more than any model here reads at
# once. What a message costs to save grows with its text (the search index holds each of its
# words in memory until the row is written), so this, not the file's size, bounds an import.
MAX_MESSAGE_CHARS = 1_000_000
_SHOWN_LENGTH = 60


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
    # Where each message longer than `MAX_MESSAGE_CHARS` is ("conversation 3 ('Logs'), message 'ab1'"):
    # its text was cut to that length, with a note at the cut.
    messages_cut: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.conversations_added} conversation(s) added", f"{self.messages_added} message(s) added"]
        if self.conversations_updated:
            parts.append(f"{self.conversations_updated} conversation(s) brought up to date")
        if self.conversations_skipped:
            parts.append(f"{self.conversations_skipped} already imported")
        if self.conversations_empty:
            parts.append(f"{self.conversations_empty} with nothing to import")
        if self.messages_cut:
            where = "; ".join(self.messages_cut[:3]) + ("; …" if len(self.messages_cut) > 3 else "")
            parts.append(f"{len(self.messages_cut)} message(s) longer than {MAX_MESSAGE_CHARS:,} characters "
                         f"cut to that length ({where})")
        return ", ".join(parts)


@dataclass(frozen=True)
class Place:
    """Where a record is, for error messages: the file, and e.g. "conversation 3 ('Trip'), node 'ab1'"."""

    file: str
    hint: str
    record: str = ""
    # Messages cut to `MAX_MESSAGE_CHARS` so far, shared by every Place of one file (`message_text`).
    cut: list[str] = field(default_factory=list, compare=False)

    def inner(self, record: str) -> Place:
        return replace(self, record=f"{self.record}, {record}" if self.record else record)

    def named(self, name: str) -> Place:
        """The same record, with its name after it: "conversation 3 ('Trip')"."""
        return replace(self, record=f"{self.record} ({name})")

    def error(self, problem: str) -> ImportFileInvalid:
        where = f"{self.file}, {self.record}" if self.record else self.file
        return ImportFileInvalid(f"Cleo cannot import {where}: {problem}. Nothing from {self.file} was saved.",
                                 hint=self.hint)


def shown(value: Any) -> str:
    """`value` as an error message quotes it: short, and safe for any value a file can hold."""
    if isinstance(value, str):
        text = repr(value[:_SHOWN_LENGTH])
        return f"{text[:-1]}…{text[-1]}" if len(value) > _SHOWN_LENGTH else text
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int) and value.bit_length() > 64:  # repr() of a huge int raises ValueError
        return f"a number of {value.bit_length()} bits"
    if isinstance(value, int | float):
        return repr(value)
    return kind_of(value)


def save(database: Database, conversations: Iterable[ConversationRecord], place: Place) -> ImportReport:
    """Save every conversation of the file through the conversation store, or none of them.

    `conversations` may be a stream: it is read inside the store's transaction, so an error in
    any record (raised while it is read) rolls back the ones before it.
    """
    records = _each_id_once(conversations, place)
    try:
        outcomes = SqliteConversationStore(database).save_records(records)
    except MessageIdTaken as taken:
        raise place.inner(f"message {shown(taken.key)}").error(
            f"Cleo already has a message with this id in another conversation ({shown(taken.owner)})") from None
    report = ImportReport(messages_cut=list(place.cut))
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


def _each_id_once(conversations: Iterable[ConversationRecord], place: Place) -> Iterator[ConversationRecord]:
    """The conversations, refused when two of them have one id (the second would be merged into the first)."""
    numbers: dict[str, int] = {}
    for number, conversation in enumerate(conversations, 1):
        first = numbers.setdefault(conversation.id, number)
        if first != number:
            raise place.inner(f"conversation {number} ({shown(conversation.title)})").error(
                f"its id {shown(conversation.id)} is also the id of conversation {first}")
        yield conversation


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


def timestamp(record: dict[str, Any], name: str, place: Place, *, default: float | None = None) -> float:
    """`record[name]` as a time (seconds since 1970) from 1970 to 3000; missing: `default`, else an error."""
    value = optional_timestamp(record, name, place)
    if value is not None:
        return value
    if default is None:
        raise place.error(f"{name!r} is missing")
    return default


def optional_timestamp(record: dict[str, Any], name: str, place: Place) -> float | None:
    """`record[name]` as a time (seconds since 1970) from 1970 to 3000, or None when missing."""
    value = field_value(record, name, NUMBER, place)
    if value is None:
        return None
    # Compared before float(): float() of a huge int raises, and NaN fails every comparison.
    if not EARLIEST_TIME <= value <= LATEST_TIME:
        raise place.error(f"{name!r} is {shown(value)}, not a time between 1970 and 3000 (seconds since 1970)")
    return float(value)


def count(record: dict[str, Any], name: str, place: Place) -> int | None:
    """`record[name]` as a count (of tokens), or None; refused when negative or absurdly large."""
    value = field_value(record, name, (int,), place)
    if value is not None and not 0 <= value <= LARGEST_COUNT:
        raise place.error(f"{name!r} is {shown(value)}, not a count from 0 to {LARGEST_COUNT}")
    return cast("int | None", value)


def text(record: dict[str, Any], name: str, place: Place, *, default: str | None = None,
         required: bool = False) -> Any:
    """`record[name]` as text Cleo can store (see `clean_text`)."""
    value = field_value(record, name, (str,), place, default=default, required=required)
    return clean_text(value) if isinstance(value, str) else value


def message_text(value: str, place: Place) -> str:
    """A message's text as Cleo keeps it: cut to `MAX_MESSAGE_CHARS`, with a note at the cut, and
    `place` noted for the import's report.

    Cut rather than refused: imports are all or nothing, and one pasted log in years of chats
    should not keep the rest out; the note says in the chat itself what happened."""
    if len(value) <= MAX_MESSAGE_CHARS:
        return value
    place.cut.append(place.record or place.file)
    return (f"{value[:MAX_MESSAGE_CHARS]}\n\n[… cut by Cleo's import: this message had {len(value):,} "
            f"characters, Cleo keeps {MAX_MESSAGE_CHARS:,}]")


def clean_text(value: str) -> str:
    """`value` with any lone UTF-16 surrogate (which JSON allows and UTF-8 cannot hold) made U+FFFD."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Through UTF-16, a pair of surrogates becomes its character and a lone one U+FFFD.
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def identifier(record: dict[str, Any], name: str, place: Place, *, required: bool = False) -> Any:
    """`record[name]` if it is an id Cleo can keep (`ID_PATTERN`), or None when missing and not required."""
    value = field_value(record, name, (str,), place, required=required)
    if value is not None and not is_identifier(value):
        raise place.error(f"{name!r} is {shown(value)}, not {ID_RULE}")
    return value


def is_identifier(value: str) -> bool:
    return ID_PATTERN.fullmatch(value) is not None


def kind_of(value: Any) -> str:
    """What `value` is, in words: "text", "a list", "null", ..."""
    if value is None:
        return "null"
    return _KIND_NAMES.get(type(value), type(value).__name__)


def check_unique(keys: Iterable[str], place: Place, what: str) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise place.inner(f"{what} {shown(key)}").error("the id appears twice")
        seen.add(key)


def parents_first(parents: dict[str, str | None], place: Place, what: str) -> list[str]:
    """The keys of a tree given by parent links, each after its parent; a link to nowhere or a loop is an error.

    Linear in the number of keys, loop or not: a long chat is thousands of messages deep.
    """
    children: dict[str | None, list[str]] = {}
    for key, parent in parents.items():
        if parent is not None and parent not in parents:
            raise place.inner(f"{what} {shown(key)}").error(f"its parent {shown(parent)} is not in the file")
        children.setdefault(parent, []).append(key)
    order: list[str] = []
    stack = list(reversed(children.get(None, [])))
    while stack:  # not recursive: a long chat is thousands of messages deep
        key = stack.pop()
        order.append(key)
        stack.extend(reversed(children.get(key, [])))
    if len(order) < len(parents):
        # Every key not reached from a root is on a loop or below one; the set is built once.
        reached = set(order)
        looped = next(key for key in parents if key not in reached)
        raise place.inner(f"{what} {shown(looped)}").error("its parent links form a loop")
    return order
