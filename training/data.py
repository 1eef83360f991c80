"""Training data: chat files and plain text turned into fixed, resumable batches of token ids.

    examples, reports = read_chat_data(paths)              # files -> Example(id, messages), cleaned
    train, held_out = split_examples(examples, seed=0)     # fixed by content and seed
    template = ChatTemplate.for_tokenizer(tokenizer)
    rows = pack_examples(encode_chats([e.messages for e in train], tokenizer, template), T, pad_id=pad)
    batches = Batches(rows, batch_size=B, seed=0)
    batch = batches.batch(step, rank, world_size)          # dict of [B, T] tensors

Readers. FastChat/ShareGPT JSON, GPTeacher JSON, chatterbot YAML and Cleo's own JSON export
become `Example`s whose messages are `[{"role": "system"|"user"|"assistant", "content": str}]`.
A malformed record raises `DataError` naming the file, the record and (for JSON arrays and YAML)
its line; with `skip_bad=True` it is skipped and counted in the `ReadReport` instead.

Identity. Cleo must not learn to call itself another assistant; see `clean_identity` for what is
rewritten and what is cut.

Loss mask. A conversation is rendered with the model's own chat template (Jinja in a sandbox, as
llama.cpp's chat formatting does) and tokenized as llama.cpp would tokenize the prompt. A token is
a target (counted in the loss) only if it belongs to an assistant message: its content and the
end-of-turn token that closes it, never system, user or template text. The spans are found by
rendering the conversation's prefixes and comparing their tokens with the whole conversation's.

Packing and batches. Examples are packed whole into rows of T + 1 tokens (plain text is
concatenated and cut). A batch holds, for rank r at step s, the rows s*B*W + r*B ... + B - 1 of
an endless sequence of epochs, each a permutation fixed by (seed, epoch): resuming needs only the
step, and the same step gives the same rows on any machine. `labels[b, t]` is the token that must
follow `input_ids[b, t]` (already shifted), or -100 where nothing is learnt.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml  # type: ignore[import-untyped]  # PyYAML (installed with gguf) has no type hints

from engine.chat_template import ChatTemplate as SandboxedChatTemplate
from engine.errors import ChatTemplateInvalid, KnownError
from engine.kv_cache import common_prefix
from training.tokenizer import CHATML_TEMPLATE, Tokenizer

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Conversation = list[Message]
ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # label of a position that is not learnt (torch's cross_entropy default)
ASSISTANT_NAME = "Cleo"


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


# --- readers ----------------------------------------------------------------------------------------------------

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


def read_chat_data(paths: Iterable[Path | str], *, skip_bad: bool = False, identity: bool = True,
                   assistant_name: str = ASSISTANT_NAME) -> tuple[list[Example], list[ReadReport]]:
    """Every conversation in `paths` (see `read_chat_file`), with `clean_identity` applied unless told not to."""
    examples: list[Example] = []
    reports = []
    for path in paths:
        found, report = read_chat_file(path, skip_bad=skip_bad)
        if identity:
            found = _clean_all(found, report, assistant_name)
        examples += found
        reports.append(report)
    return examples, reports


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


# --- identity ---------------------------------------------------------------------------------------------------

# Assistants and the organisations behind them. Words that are also ordinary words or names in
# role-play (bard, gemini, llama, claude, curie) are left out: they would flag innocent answers.
_OTHER_ASSISTANT = re.compile(
    r"\b(?:vicuna|chat\s?gpt|gpt-?\d(?:\.\d)?(?:-turbo)?|open\s?ai|lmsys|large model systems organi[sz]ation|"
    r"anthropic|hugging\s?face|smol\s?lm\d?|google bard|bing chat|meta ai|llama[- ]?\d|mistral ai|qwen)\b",
    re.IGNORECASE)
# The speaker talking about itself.
_SELF = re.compile(r"\bI(?:'m|'ve)?\b|\b(?i:me|my|myself)\b")  # "I" only in capitals: "i" is a loop variable
# ChatGPT's signature disclaimer claims that identity even without a name.
_LANGUAGE_MODEL_DISCLAIMER = re.compile(r"\bas an AI language model\b", re.IGNORECASE)
_CODE = re.compile(r"[{};=]")  # prose claiming an identity has none of these; code lines usually do
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_REWRITE_CHARS = 300  # FastChat's identity answers are under 150 characters
_NO = re.compile(r"^\s*no\b[\s,.!]*", re.IGNORECASE)
_CLEO_ANSWERS = (
    "I'm {name}, a private AI assistant that runs entirely on your own computer.",
    "My name is {name}. I'm an AI assistant that lives on your computer, so our conversations stay with you.",
    "I am {name}, a local AI assistant: I run on your machine, and nothing you tell me leaves it.",
)


def claims_other_identity(text: str) -> bool:
    """Whether an answer says it is (or was made by) another assistant or AI company."""
    return any(_sentence_claims(sentence) for sentence in _SENTENCE_END.split(text))


def _sentence_claims(sentence: str) -> bool:
    return _names_other(sentence) or (not _CODE.search(sentence) and bool(_LANGUAGE_MODEL_DISCLAIMER.search(sentence)))


def _names_other(sentence: str) -> bool:
    if _CODE.search(sentence):
        return False  # `const s = 'I am a GPT-3 AI model!';` is a code sample's string, not the speaker
    return bool(_OTHER_ASSISTANT.search(sentence) and _SELF.search(sentence))


def cleo_identity_answer(original: str, *, name: str = ASSISTANT_NAME) -> str | None:
    """Cleo's answer in place of an answer that only states another identity, or None if it says more.

    Rewritten: short answers (at most `_REWRITE_CHARS`) whose every sentence has the speaker name
    another assistant or its maker, as FastChat's identity answers do. "No, I'm a language model
    trained by researchers from LMSYS." (to "Are you ChatGPT?") becomes "No, I'm Cleo, ...": a
    leading "No" is kept. Not rewritten: an answer starting with "Yes" (the rewrite would contradict
    the question it answers), the "As an AI language model, ..." disclaimer (it prefaces an answer
    to something else), and anything longer or saying more.
    """
    sentences = [s for s in _SENTENCE_END.split(original.strip()) if s.strip()]
    if (not sentences or len(original) > _REWRITE_CHARS or not all(_names_other(s) for s in sentences)
            or _LANGUAGE_MODEL_DISCLAIMER.search(original) or re.match(r"^\s*yes\b", original, re.IGNORECASE)):
        return None
    if _NO.match(original):
        return f"No, I'm {name}, a private AI assistant that runs entirely on your own computer."
    # The phrasing is picked by a hash of the original, so the data varies but never between runs.
    return _CLEO_ANSWERS[_stable_hash(original) % len(_CLEO_ANSWERS)].format(name=name)


def clean_identity(messages: Conversation, *, name: str = ASSISTANT_NAME) -> tuple[Conversation | None, str]:
    """The conversation with no answer claiming another assistant's identity, and what was done.

    Policy, per assistant answer that claims another identity (`claims_other_identity`):
    - rewritten: the answer only states that identity (FastChat's "I am Vicuna, a language model
      trained by researchers from LMSYS.") and is replaced by Cleo's (`cleo_identity_answer`);
    - cut: any other such answer (a long answer that begins "As an AI language model developed by
      OpenAI, ..."): the conversation ends before the question it answers, since removing only
      the sentence could leave an answer that no longer makes sense;
    - dropped: nothing with an answer is left after the cut; the result is None.
    Mentions that are not about the speaker ("GPT-3 is a model by OpenAI" in a code sample) are kept.
    Returns (messages, action) with action one of "kept", "rewritten", "cut", "dropped".
    """
    out: Conversation = []
    action = "kept"
    for n, message in enumerate(messages):
        if message["role"] != "assistant" or not claims_other_identity(message["content"]):
            out.append(message)
            continue
        replacement = cleo_identity_answer(message["content"], name=name)
        if replacement is not None:
            out.append({**message, "content": replacement})
            action = "rewritten"
            continue
        # Cut before the question this answer replies to (the message before it).
        kept = out[: max(0, n - 1)]
        if not any(m["role"] == "assistant" for m in kept):
            return None, "dropped"
        return kept, "cut"
    return out, action


def _clean_all(examples: list[Example], report: ReadReport, name: str) -> list[Example]:
    cleaned = []
    for example in examples:
        messages, action = clean_identity(example.messages, name=name)
        if action == "rewritten":
            report.identity_rewritten += sum(
                a["content"] != b["content"] for a, b in zip(example.messages, messages or [], strict=False))
        elif action == "cut":
            report.identity_cut += 1
        elif action == "dropped":
            report.identity_dropped += 1
        if messages is not None:
            cleaned.append(Example(example.id, messages))
    report.examples = len(cleaned)
    return cleaned


# --- chat templates ---------------------------------------------------------------------------------------------


class ChatTemplate(SandboxedChatTemplate):
    """The engine's sandboxed chat template (so training renders exactly what the app will), built
    from a tokenizer's own template and special tokens."""

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer) -> ChatTemplate:
        """The tokenizer's own template (ChatML when it has none, as llama-cpp-python falls back to)."""
        def text(token_id: int | None) -> str:
            return "" if token_id is None else tokenizer.token_bytes(token_id).decode("utf-8", "replace")
        return cls(tokenizer.chat_template or CHATML_TEMPLATE, bos_token=text(tokenizer.bos_id),
                   eos_token=text(tokenizer.eos_id))


# --- tokenizing with a loss mask -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids and, for each, whether the model learns to produce it (a target of the loss)."""

    ids: list[int]
    targets: list[bool]

    def __len__(self) -> int:
        return len(self.ids)


def encode_chat(messages: Conversation, tokenizer: Tokenizer, template: ChatTemplate) -> TokenizedExample:
    """`messages` rendered with `template` and tokenized as llama.cpp tokenizes a prompt, with
    targets on exactly the assistant messages' tokens: their content and the end-of-turn token.

    For assistant message i, the text before it is the render of messages[:i] with a generation
    prompt, and its end is where the render of messages[:i+1] ends, or, when that text holds an
    end-of-turn token (ChatML's `<|im_end|>`), right after the last one (ChatML's newline after it
    is template text). Both must be prefixes of the whole render, which holds for templates that
    render turns in order (ChatML, Llama, Mistral...); others raise `ChatTemplateInvalid`.
    Token boundaries come from tokenizing each prefix: where a token straddles the boundary, the
    first tokens that differ from the whole conversation's belong to the assistant.
    """
    return encode_chats([messages], tokenizer, template)[0]


def encode_chats(conversations: Sequence[Conversation], tokenizer: Tokenizer, template: ChatTemplate, *,
                 chunk: int = 512) -> list[TokenizedExample]:
    """`encode_chat` for many conversations, tokenizing `chunk` conversations' texts in one call
    (`tokenizers` pays a fixed cost per call that dwarfs a short conversation)."""
    eot_texts = [tokenizer.token_bytes(i).decode("utf-8", "replace") for i in tokenizer.end_of_turn_ids]
    out = []
    for lo in range(0, len(conversations), chunk):
        plans = [_assistant_spans(messages, template, eot_texts) for messages in conversations[lo:lo + chunk]]
        texts = [text for full, cuts, _ in plans for text in (full, *(full[:c] for c in cuts))]
        encoded = iter(tokenizer.encode_batch(texts))
        for full, cuts, spans in plans:
            ids = next(encoded)
            token_at = {c: common_prefix(ids, next(encoded)) for c in cuts}
            out.append(_with_targets(full, ids, [(token_at[a], token_at[b]) for a, b in spans], tokenizer))
    return out


def _assistant_spans(messages: Conversation, template: ChatTemplate,
                     eot_texts: list[str]) -> tuple[str, list[int], list[tuple[int, int]]]:
    """(whole render, the character positions to tokenize up to, the assistant messages' character spans)."""
    full = template.render(messages)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True)
        after = template.render(messages[: i + 1])
        if not (full.startswith(before) and full.startswith(after) and len(before) <= len(after)):
            raise ChatTemplateInvalid("The chat template does not render a conversation as its earlier turns "
                                      "followed by the new one, so the assistant's tokens cannot be found.")
        eot_ends = [found + len(t) for t in eot_texts if (found := after.rfind(t, len(before))) >= 0]
        spans.append((len(before), max(eot_ends) if eot_ends else len(after)))
    return full, sorted({c for span in spans for c in span}), spans


def _with_targets(full: str, ids: list[int], spans: list[tuple[int, int]], tokenizer: Tokenizer) -> TokenizedExample:
    targets = [False] * len(ids)
    for start, end in spans:  # token spans
        targets[start:end] = [True] * (end - start)
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        bos_text = tokenizer.token_bytes(tokenizer.bos_id).decode("utf-8", "replace")
        if not (bos_text and full.startswith(bos_text)):  # llama.cpp adds none when the text has it already
            ids, targets = [tokenizer.bos_id, *ids], [False, *targets]
    # What follows the last answer teaches nothing and only takes room in a packed row.
    last = max((t for t, target in enumerate(targets) if target), default=-1)
    return TokenizedExample(ids[: last + 1], targets[: last + 1])


def document_end_id(tokenizer: Tokenizer) -> int:
    """The token that closes a plain-text document: `<|endoftext|>` when the vocabulary has it, else eos."""
    try:
        return tokenizer.token_id("<|endoftext|>")
    except KeyError:
        if tokenizer.eos_id is None:
            raise ValueError("the tokenizer has neither <|endoftext|> nor an eos token to end documents") from None
        return tokenizer.eos_id


def encode_text(document: str, tokenizer: Tokenizer) -> TokenizedExample:
    """A plain-text document for pretraining: its tokens (special-token spellings stay text), then the
    document-end token; every token is a target except the first, which nothing in the document predicts."""
    return _text_example(tokenizer.encode(document, special=False), tokenizer)


def _text_example(tokens: list[int], tokenizer: Tokenizer) -> TokenizedExample:
    ids = [*tokens, document_end_id(tokenizer)]
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id, *ids]
    return TokenizedExample(ids, [False] + [True] * (len(ids) - 1))


# --- held-out split ---------------------------------------------------------------------------------------------


def _stable_hash(text: str, salt: str = "") -> int:
    """A 64-bit hash that is the same in every process and on every machine (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=b"cleo-data",
                                          salt=salt.encode()[:16]).digest(), "little")


def content_key(messages: Conversation) -> str:
    """The conversation's content as one canonical string (what the split hashes)."""
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))


def is_held_out(messages: Conversation, *, fraction: float, seed: int = 0) -> bool:
    """Whether the conversation belongs to the held-out split; fixed by its content and `seed`.

    Hashing the content, not the position or id, keeps the split when files are reordered or
    grow, and puts identical conversations (FastChat repeats many) on the same side.
    """
    return _held_out_key(content_key(messages), fraction, seed)


def _held_out_key(key: str, fraction: float, seed: int) -> bool:
    return _stable_hash(key, salt=f"split{seed}") < fraction * 2**64


def split_examples(examples: Iterable[Example], *, fraction: float = 0.05,
                   seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(training, held-out) examples; see `is_held_out`."""
    train: list[Example] = []
    held_out: list[Example] = []
    for example in examples:
        (held_out if is_held_out(example.messages, fraction=fraction, seed=seed) else train).append(example)
    return train, held_out


# --- packing ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedRows:
    """Examples laid out in N rows of T + 1 tokens; a row gives T inputs and their T next-token labels."""

    tokens: np.ndarray  # int32 [N, T+1]
    targets: np.ndarray  # bool [N, T+1]: the token is learnt (predicted from the tokens before it)
    segments: np.ndarray  # int32 [N, T+1]: 1, 2, ... for the documents in the row, 0 for padding
    positions: np.ndarray  # int32 [N, T+1]: position within its document (restarting at each row)
    truncated: int = 0  # examples longer than a row, cut to fit
    dropped: int = 0  # examples with no target left after the cut

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1]) - 1


def _empty_rows(n: int, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.full((n, width), pad_id, np.int32), np.zeros((n, width), bool), np.zeros((n, width), np.int32),
            np.zeros((n, width), np.int32))


def pack_examples(examples: Sequence[TokenizedExample], seq_len: int, *, pad_id: int, seed: int = 0,
                  open_rows: int = 64) -> PackedRows:
    """Whole examples packed into rows of `seq_len` + 1 tokens (for chat: no answer loses its question).

    The examples are taken in an order fixed by `seed` and put in the first of the last
    `open_rows` rows with room (first fit over a window, so packing stays fast on large sets);
    the rest of a row is padding. An example longer than a row keeps its first `seq_len` + 1 tokens.
    """
    width = seq_len + 1
    order = _permutation(len(examples), seed, salt=1)
    rows: list[list[int]] = []  # example indices per row
    free: list[int] = []
    window: list[int] = []  # rows still open, oldest first
    truncated = dropped = 0
    for i in order:
        length = len(examples[i])
        if length > width:
            truncated += 1
            if not any(examples[i].targets[:width]):
                dropped += 1
                continue
            length = width
        target = next((r for r in window if free[r] >= length), None)
        if target is None:
            target = len(rows)
            rows.append([])
            free.append(width)
            window.append(target)
            if len(window) > open_rows:
                window.pop(0)
        rows[target].append(int(i))
        free[target] -= length
    tokens, targets, segments, positions = _empty_rows(len(rows), width, pad_id)
    for r, members in enumerate(rows):
        offset = 0
        for segment, i in enumerate(members, 1):
            example = examples[i]
            n = min(len(example), width)
            tokens[r, offset:offset + n] = example.ids[:n]
            targets[r, offset:offset + n] = example.targets[:n]
            targets[r, offset] = False  # nothing in the row before it belongs to its document
            segments[r, offset:offset + n] = segment
            positions[r, offset:offset + n] = np.arange(n)
            offset += n
    return PackedRows(tokens, targets, segments, positions, truncated, dropped)


def pack_stream(examples: Sequence[TokenizedExample], seq_len: int, *, pad_id: int, seed: int = 0) -> PackedRows:
    """Examples concatenated (in an order fixed by `seed`) and cut into rows of `seq_len` + 1 tokens.

    Row k holds tokens k*T ... k*T + T of the stream, so each row's last token starts the next row
    and every token but the first is a label exactly once. For pretraining on plain text.
    """
    order = _permutation(len(examples), seed, salt=2)
    if not len(order):
        return PackedRows(*_empty_rows(0, seq_len + 1, pad_id))
    ids = np.concatenate([np.asarray(examples[i].ids, np.int32) for i in order])  # [S]
    learn = np.concatenate([np.asarray(examples[i].targets, bool) for i in order])  # [S]
    lengths = np.array([len(examples[i]) for i in order])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # [D] where each document begins in the stream
    doc = np.repeat(np.arange(len(order)), lengths)  # [S] document of each stream position
    n_rows = max(1, -(-(len(ids) - 1) // seq_len))
    tokens, targets, segments, positions = _empty_rows(n_rows, seq_len + 1, pad_id)
    for r in range(n_rows):
        lo = r * seq_len
        hi = min(lo + seq_len + 1, len(ids))
        n = hi - lo
        tokens[r, :n] = ids[lo:hi]
        targets[r, :n] = learn[lo:hi]
        targets[r, 0] = False  # it was the previous row's last label
        row_docs = doc[lo:hi]
        segments[r, :n] = row_docs - row_docs[0] + 1
        # Positions count from the document's start, or from the row's start for a document already under way.
        positions[r, :n] = np.arange(lo, hi) - np.maximum(starts[row_docs], lo)
    return PackedRows(tokens, targets, segments, positions)


# --- batches ----------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays: a fixed, well-mixed function, the same on every platform."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _permutation(n: int, seed: int, salt: int) -> np.ndarray:
    """A permutation of range(n) that depends only on (n, seed, salt): indices sorted by a keyed hash.

    Written out rather than taken from numpy's generators, whose streams are not promised to stay
    the same across numpy versions.
    """
    key = _stable_hash(f"{seed}:{salt}") & _MASK64
    keys = _splitmix64(np.arange(n, dtype=np.uint64) ^ np.uint64(key))
    return np.argsort(keys, kind="stable")


class Batches:
    """Batches of packed rows fixed by (seed, step, rank, world_size).

    Global row position p = step*B*W + rank*B + i (i < B) is row `perm_e[p mod N]` of epoch
    e = p div N, where perm_e is a permutation fixed by (seed, e). Ranks of one step get disjoint
    rows (while B*W <= N); a job resumed at step s sees what it would have seen. Keeping B*W the
    same, a different number of processes reads the same rows at each step.
    """

    def __init__(self, rows: PackedRows, batch_size: int, *, seed: int = 0, shuffle: bool = True) -> None:
        if len(rows) == 0:
            raise ValueError("no packed rows: the data is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self._epoch_order: tuple[int, np.ndarray] | None = None  # the last epoch's permutation, reused

    def __len__(self) -> int:
        return len(self.rows)

    def steps_per_epoch(self, world_size: int = 1) -> int:
        return max(1, len(self.rows) // (self.batch_size * world_size))

    def row_indices(self, step: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Which rows the batch (step, rank) holds, in order: int64 [B]."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n = len(self.rows)
        positions = step * self.batch_size * world_size + rank * self.batch_size + np.arange(self.batch_size)
        epochs, within = np.divmod(positions, n)
        if not self.shuffle:
            return within
        out = np.empty(self.batch_size, np.int64)
        for epoch in np.unique(epochs):
            chosen = epochs == epoch
            out[chosen] = self._order(int(epoch))[within[chosen]]
        return out

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        """The batch for `rank` at `step`, as int64 tensors [B, T]:
        `input_ids`; `labels` (the next token, or -100 where it is not learnt); `position_ids`
        (restarting at each document); `segment_ids` (document number in the row, 0 = padding),
        from which a model may build a block-diagonal attention mask."""
        return self._tensors(self.row_indices(step, rank, world_size))

    def sequential(self, rank: int = 0, world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """Every row once, in order, split across ranks (for evaluation); the last batch may be shorter."""
        mine = np.arange(rank, len(self.rows), world_size)
        for lo in range(0, len(mine), self.batch_size):
            yield self._tensors(mine[lo:lo + self.batch_size])

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            self._epoch_order = (epoch, _permutation(len(self.rows), self.seed, salt=1000 + epoch))
        return self._epoch_order[1]

    def _tensors(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        tokens = self.rows.tokens[rows]  # [B, T+1]
        labels = np.where(self.rows.targets[rows, 1:], tokens[:, 1:], IGNORE_INDEX)  # [B, T]
        return {
            "input_ids": torch.from_numpy(tokens[:, :-1].astype(np.int64)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "position_ids": torch.from_numpy(self.rows.positions[rows, :-1].astype(np.int64)),
            "segment_ids": torch.from_numpy(self.rows.segments[rows, :-1].astype(np.int64)),
        }


# --- the whole pipeline -----------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """Training and held-out batches made from one set of sources, with what was read and dropped."""

    train: Batches
    held_out: Batches | None
    reports: list[ReadReport] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


def chat_data(paths: Iterable[Path | str], tokenizer: Tokenizer, *, seq_len: int, batch_size: int, seed: int = 0,
              held_out_fraction: float = 0.05, skip_bad: bool = False, identity: bool = True,
              system_prompt: str | None = None, limit: int | None = None) -> TrainingData:
    """Chat files -> cleaned conversations -> fixed split -> masked tokens -> packed rows -> batches.

    `system_prompt`, when given, is put first in conversations that have no system message (the
    template may otherwise insert the base model's own, such as SmolLM2's "You are ... SmolLM").
    `limit` keeps only the first conversations read (for quick runs). The split is made before the
    system prompt is added, so that it depends on the data and the seed only.
    """
    examples, reports = read_chat_data(paths, skip_bad=skip_bad, identity=identity)
    if limit is not None:
        examples = examples[:limit]
    train, held_out = split_examples(examples, fraction=held_out_fraction, seed=seed)
    if system_prompt:
        system = {"role": "system", "content": system_prompt}
        train, held_out = ([e if e.messages[0]["role"] == "system" else Example(e.id, [system, *e.messages])
                            for e in part] for part in (train, held_out))
    template = ChatTemplate.for_tokenizer(tokenizer)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else document_end_id(tokenizer)

    def batches(part: list[Example], shuffle: bool) -> tuple[Batches | None, PackedRows | None]:
        if not part:
            return None, None
        rows = pack_examples(encode_chats([e.messages for e in part], tokenizer, template), seq_len,
                             pad_id=pad, seed=seed)
        return Batches(rows, batch_size, seed=seed, shuffle=shuffle), rows

    train_batches, train_rows = batches(train, True)
    held_batches, _ = batches(held_out, False)
    if train_batches is None or train_rows is None:
        raise DataError("No training conversations are left after reading, cleaning and the held-out split.")
    stats = {"conversations": len(examples), "train": len(train), "held_out": len(held_out),
             "rows": len(train_rows), "truncated": train_rows.truncated, "dropped": train_rows.dropped,
             "target_tokens": int(train_rows.targets.sum())}
    return TrainingData(train_batches, held_batches, reports, stats)


def text_data(documents: Iterable[str], tokenizer: Tokenizer, *, seq_len: int, batch_size: int, seed: int = 0,
              held_out_fraction: float = 0.01) -> TrainingData:
    """Plain-text documents for pretraining -> tokens (loss everywhere) -> fixed split -> cut rows -> batches."""
    kept = [d for d in documents if d.strip()]
    held = [_held_out_key(d, held_out_fraction, seed) for d in kept]
    encoded = [_text_example(ids, tokenizer) for ids in tokenizer.encode_batch(kept, special=False)]
    train = [e for e, h in zip(encoded, held, strict=True) if not h]
    held_out = [e for e, h in zip(encoded, held, strict=True) if h]
    if not train:
        raise DataError("No training documents: every document was empty or held out.")
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else document_end_id(tokenizer)
    train_rows = pack_stream(train, seq_len, pad_id=pad, seed=seed)
    held_batches = (Batches(pack_stream(held_out, seq_len, pad_id=pad, seed=seed), batch_size, shuffle=False)
                    if held_out else None)
    stats = {"documents": len(train) + len(held_out), "train": len(train), "held_out": len(held_out),
             "rows": len(train_rows), "target_tokens": int(train_rows.targets.sum())}
    return TrainingData(Batches(train_rows, batch_size, seed=seed), held_batches, [], stats)


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
