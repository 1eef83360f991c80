"""Chat data files read into conversations: FastChat/ShareGPT and GPTeacher JSON, chatterbot YAML, Cleo's export.

Each format becomes `Example`s whose messages are `[{"role": "system"|"user"|"assistant",
"content": str}]`: an optional system message, then user and assistant taking turns. A malformed
record raises `DataError` naming the file, the record and (for JSON arrays and YAML) its line; with
`skip_bad=True` it is skipped and counted in the `ReadReport` instead. Plain-text files for
pretraining are read here too (`read_text_files`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML (installed with gguf) has no type hints

from engine.errors import KnownError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Conversation = list[Message]
ROLES = ("system", "user", "assistant")


class DataError(KnownError):
    """A data file, or one of its records, is not what its format says it should be."""


@dataclass(frozen=True)
class Example:
    """One conversation ready for training; `id` ("file:record") says where it came from."""

    id: str
    messages: Conversation


@dataclass
class ReadReport:
    """What reading one file produced, skipped and changed."""

    path: Path
    examples: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per malformed record skipped
    identity_rewritten: int = 0  # assistant answers replaced by Cleo's identity answer
    identity_cut: int = 0  # conversations cut before an answer claiming another identity
    identity_dropped: int = 0  # conversations left with no answer after that cut

    def summary(self) -> str:
        parts = [f"{self.path.name}: {self.examples} conversation(s)"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} malformed record(s) skipped")
        if self.identity_rewritten or self.identity_cut or self.identity_dropped:
            parts.append(f"identity: {self.identity_rewritten} answer(s) rewritten, {self.identity_cut} "
                         f"conversation(s) cut, {self.identity_dropped} dropped")
        return ", ".join(parts)


class _BadRecord(Exception):
    """A record's problem, before the reader adds the file and the record's place."""


# FastChat/ShareGPT speaker names -> roles (ShareGPT dumps also use the names of the model that answered).
_SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
             "bing": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}


def read_fastchat(path: Path | str, *, skip_bad: bool = False) -> tuple[list[Example], ReadReport]:
    """`[{"id", "conversations": [{"from": "human"|"gpt"|"system", "value"}]}]` (FastChat, ShareGPT)."""
    path = Path(path)

    def convert(record: Any) -> tuple[str | None, Conversation]:
        turns = _field(record, "conversations", list)
        messages = []
        for n, turn in enumerate(turns, 1):
            if not isinstance(turn, dict):
                raise _BadRecord(f"turn {n} is a {type(turn).__name__}, not an object")
            speaker = _field(turn, "from", str, f"turn {n}")
            if speaker not in _SPEAKERS:
                raise _BadRecord(f"turn {n} is from '{speaker}' (expected one of {', '.join(sorted(_SPEAKERS))})")
            messages.append({"role": _SPEAKERS[speaker], "content": _field(turn, "value", str, f"turn {n}")})
        record_id = record.get("id")
        return (str(record_id) if record_id is not None else None), messages

    return _read_json_array(path, convert, skip_bad)


def read_gpteacher(path: Path | str, *, skip_bad: bool = False) -> tuple[list[Example], ReadReport]:
    """`[{"instruction", "input", "response"}]` (GPTeacher, Alpaca): one question, one answer."""
    path = Path(path)

    def convert(record: Any) -> tuple[str | None, Conversation]:
        instruction = _field(record, "instruction", str).strip()
        extra = record.get("input", "") if isinstance(record, dict) else ""
        if not isinstance(extra, str):
            raise _BadRecord(f"'input' is a {type(extra).__name__}, not text")
        question = f"{instruction}\n\n{extra.strip()}" if extra.strip() else instruction
        return None, [{"role": "user", "content": question},
                      {"role": "assistant", "content": _field(record, "response", str)}]

    return _read_json_array(path, convert, skip_bad)


def read_chatterbot(path: Path | str, *, skip_bad: bool = False) -> tuple[list[Example], ReadReport]:
    """A chatterbot-corpus YAML file (`conversations: [[question, answer, ...]]`) or a folder of them.

    Statements alternate between the user and the assistant, starting with the user. Every
    scalar is read as text (YAML's BaseLoader), so answers such as `yes` or `42` stay words.
    """
    path = Path(path)
    if path.is_dir():
        report = ReadReport(path)
        examples: list[Example] = []
        for file in sorted(path.glob("*.yml")) + sorted(path.glob("*.yaml")):
            found, part = read_chatterbot(file, skip_bad=skip_bad)
            examples += found
            report.skipped += part.skipped
        report.examples = len(examples)
        return examples, report
    report = ReadReport(path)
    try:
        root = yaml.compose(_read_text(path), Loader=yaml.BaseLoader)
    except yaml.YAMLError as exc:
        raise DataError(f"{path} is not valid YAML ({exc}).", hint=_FIX_HINT) from exc
    conversations = _yaml_key(root, "conversations") if isinstance(root, yaml.MappingNode) else None
    if not isinstance(conversations, yaml.SequenceNode):
        raise DataError(f"{path} has no 'conversations' list, so it is not a chatterbot corpus file.", hint=_FIX_HINT)
    examples = []
    for n, node in enumerate(conversations.value, 1):
        where = f"{path}, conversation {n} (line {node.start_mark.line + 1})"
        try:
            if not isinstance(node, yaml.SequenceNode):
                raise _BadRecord("it is not a list of statements")
            if not all(isinstance(item, yaml.ScalarNode) for item in node.value):
                raise _BadRecord("a statement is not plain text")
            statements = [str(item.value) for item in node.value]
            roles = ["user", "assistant"] * (len(statements) // 2 + 1)
            messages = _checked([{"role": r, "content": s} for r, s in zip(roles, statements, strict=False)])
        except _BadRecord as exc:
            _bad(report, where, str(exc), skip_bad)
            continue
        examples.append(Example(f"{path.name}:{n}", messages))
    report.examples = len(examples)
    return examples, report


CLEO_EXPORT_FORMAT = "cleo-conversations"


def read_cleo_export(path: Path | str, *, skip_bad: bool = False) -> tuple[list[Example], ReadReport]:
    """Cleo's JSON export: each conversation's current branch, root to `current_leaf_id`.

    The conversation's `system_prompt`, when set, comes first as a system message. Without a
    `current_leaf_id` the branch ends at the conversation's last message.
    """
    path = Path(path)
    document = _load_json(path)
    if not isinstance(document, dict) or document.get("format") != CLEO_EXPORT_FORMAT:
        raise DataError(f"{path} is not a Cleo export (no \"format\": \"{CLEO_EXPORT_FORMAT}\").", hint=_FIX_HINT)
    if document.get("version") != 1:
        raise DataError(f"{path} is a Cleo export of version {document.get('version')!r}; this reader knows version 1.",
                        hint="Export the conversations again with this version of Cleo.")
    conversations = document.get("conversations")
    if not isinstance(conversations, list):
        raise DataError(f"{path} has no 'conversations' list.", hint=_FIX_HINT)
    report = ReadReport(path)
    examples = []
    for n, record in enumerate(conversations, 1):
        record_id = record.get("id") if isinstance(record, dict) else None
        where = f"{path}, conversation {n}" + (f" (id {record_id})" if record_id is not None else "")
        try:
            messages = _cleo_branch(record)
        except _BadRecord as exc:
            _bad(report, where, str(exc), skip_bad)
            continue
        examples.append(Example(f"{path.name}:{record_id if record_id is not None else n}", messages))
    report.examples = len(examples)
    return examples, report


def _cleo_branch(record: Any) -> Conversation:
    messages = _field(record, "messages", list)
    by_id: dict[str, dict[str, Any]] = {}
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise _BadRecord(f"message {n} is a {type(message).__name__}, not an object")
        by_id[str(_field(message, "id", str, f"message {n}"))] = message
    if not by_id:
        raise _BadRecord("it has no messages")
    leaf = record.get("current_leaf_id") or messages[-1]["id"]
    branch: list[dict[str, Any]] = []
    seen: set[str] = set()
    current: str | None = leaf
    while current is not None:
        if current in seen:
            raise _BadRecord(f"its messages' parent_id links form a loop at message {current}")
        if current not in by_id:
            raise _BadRecord(f"message {current} is referenced but not in the file")
        seen.add(current)
        branch.append(by_id[current])
        parent = by_id[current].get("parent_id")
        current = str(parent) if parent is not None else None
    branch.reverse()
    out: Conversation = []
    system_prompt = record.get("system_prompt")
    if isinstance(system_prompt, str) and system_prompt.strip():
        out.append({"role": "system", "content": system_prompt})
    for message in branch:
        where = f"message {message['id']}"
        role = _field(message, "role", str, where)
        if role not in ROLES:
            raise _BadRecord(f"{where} has role '{role}' (expected one of {', '.join(ROLES)})")
        out.append({"role": role, "content": _field(message, "content", str, where)})
    return _checked(out)


def read_chat_file(path: Path | str, *, skip_bad: bool = False) -> tuple[list[Example], ReadReport]:
    """Any of the formats above, recognised by the file's extension and shape."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() in (".yml", ".yaml"):
        return read_chatterbot(path, skip_bad=skip_bad)
    document = _load_json(path)  # parsed twice for JSON arrays; these files are a few MB at most
    if isinstance(document, dict) and document.get("format") == CLEO_EXPORT_FORMAT:
        return read_cleo_export(path, skip_bad=skip_bad)
    first = document[0] if isinstance(document, list) and document else None
    if isinstance(first, dict) and "conversations" in first:
        return read_fastchat(path, skip_bad=skip_bad)
    if isinstance(first, dict) and "instruction" in first:
        return read_gpteacher(path, skip_bad=skip_bad)
    raise DataError(f"{path} is not in a chat format Cleo reads.",
                    hint="Use FastChat/ShareGPT JSON, GPTeacher/Alpaca JSON, chatterbot YAML or a Cleo JSON export.")


_FIX_HINT = "Fix or remove the record, or pass skip_bad=True to skip malformed records."


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"The data file {path} does not exist.", hint="Check the path.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"The data file {path} cannot be read as UTF-8 text ({exc}).") from exc


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).",
                        hint="The file is damaged or truncated; get it again.") from exc


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":  # JSON's four whitespace characters
        pos += 1
    return pos


def _json_array_records(path: Path) -> Iterator[tuple[int, int, Any]]:
    """(record number from 1, line, value) of each element of the JSON array in `path`.

    Decoding element by element keeps each record's line, so that an error can point at it.
    """
    text = _read_text(path)
    decoder = json.JSONDecoder()
    pos = _skip_space(text, 0)
    if not text.startswith("[", pos):
        raise DataError(f"{path} does not hold a JSON list of records.", hint=_FIX_HINT)
    pos = _skip_space(text, pos + 1)
    line, counted = 1, 0
    n = 0
    while not text.startswith("]", pos):
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).",
                            hint="The file is damaged or truncated; get it again.") from exc
        n += 1
        yield n, line, value
        pos = _skip_space(text, end)
        if text.startswith(",", pos):
            pos = _skip_space(text, pos + 1)
        elif not text.startswith("]", pos):
            raise DataError(f"{path} is not valid JSON: expected ',' or ']' after record {n}.",
                            hint="The file is damaged or truncated; get it again.")


def _read_json_array(path: Path, convert: Callable[[Any], tuple[str | None, Conversation]],
                     skip_bad: bool) -> tuple[list[Example], ReadReport]:
    report = ReadReport(path)
    examples = []
    for n, line, record in _json_array_records(path):
        record_id = record.get("id") if isinstance(record, dict) else None
        where = f"{path}, record {n}" + (f" (id {record_id})" if record_id is not None else "") + f" at line {line}"
        try:
            if not isinstance(record, dict):
                raise _BadRecord(f"it is a {type(record).__name__}, not an object")
            found_id, messages = convert(record)
            messages = _checked(messages)
        except _BadRecord as exc:
            _bad(report, where, str(exc), skip_bad)
            continue
        examples.append(Example(f"{path.name}:{found_id if found_id is not None else n}", messages))
    report.examples = len(examples)
    return examples, report


def _field(record: Any, key: str, kind: type, where: str = "") -> Any:
    place = f"{where} " if where else ""
    if not isinstance(record, dict) or key not in record:
        raise _BadRecord(f"{place}has no '{key}'")
    value = record[key]
    if not isinstance(value, kind):
        raise _BadRecord(f"{place}'{key}' is {type(value).__name__}, not {'text' if kind is str else kind.__name__}")
    return value


def _yaml_key(mapping: yaml.MappingNode, key: str) -> yaml.Node | None:
    for key_node, value_node in mapping.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return value_node
    return None


def _checked(messages: Conversation) -> Conversation:
    """`messages` if they make a conversation to learn from: an optional system message, then user
    and assistant taking turns, with text in every turn. A last question without an answer is dropped."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for n, message in enumerate(body):
        expected = "user" if n % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise _BadRecord(f"message {n + 1} is from the {message['role']} where the {expected} should speak "
                             "(turns must alternate, starting with the user)")
        if not message["content"].strip():
            raise _BadRecord(f"message {n + 1} ({message['role']}) is empty")
    if len(body) % 2:
        messages = messages[:-1]
    if not any(m["role"] == "assistant" for m in messages):
        raise _BadRecord("it has no assistant answer")
    return messages


def _bad(report: ReadReport, where: str, problem: str, skip_bad: bool) -> None:
    if not skip_bad:
        raise DataError(f"{where}: {problem}.", hint=_FIX_HINT)
    report.skipped.append(f"{where}: {problem}")


def read_text_files(paths: Iterable[Path | str]) -> list[str]:
    """Plain-text documents: each `.txt` file is one document; each line of a `.jsonl` file is `{"text": ...}`."""
    documents = []
    for path in map(Path, paths):
        if path.suffix.lower() == ".jsonl":
            for n, line in enumerate(_read_text(path).splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {n}: not valid JSON ({exc.msg}).") from exc
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise DataError(f"{path}, line {n}: expected an object with a \"text\" string.")
                documents.append(record["text"])
        else:
            documents.append(_read_text(path))
    return documents
