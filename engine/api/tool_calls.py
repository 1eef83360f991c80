"""Tools in a chat: OpenAI's `tools` and tool messages in the shape chat templates read, and the
model's tool calls parsed back into OpenAI `tool_calls`.

A model learns one way of writing a call, and its chat template shows which (`tool_style`):

- HERMES (Hermes, Qwen 2.5 and 3, Granite 4 ...): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`;
- MISTRAL: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (Nemo), or
  `[TOOL_CALLS]name[ARGS]{...}` with an optional `[CALL_ID]id` (Small 3.2, Devstral, Ministral);
- LLAMA3 (Llama 3.1, 3.2, 3.3): the reply is `{"name": ..., "parameters": {...}}`, possibly after
  `<|python_tag|>`.

A template in another style (XML arguments, `functools[...]`, ...) gets None: the model may well
take tools, but Cleo could not read its calls, so a request with tools is refused rather than
answered with calls left in the text. Parsing never raises: what is not a well-formed call stays
in the content, and every call's arguments are a JSON object.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import secrets
import string
from dataclasses import dataclass
from typing import Any

_ALPHANUMERIC = string.ascii_letters + string.digits


class ToolStyle(enum.Enum):
    HERMES = "hermes"
    MISTRAL = "mistral"
    LLAMA3 = "llama3"


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: `arguments` is the text of a JSON object, as OpenAI sends it."""

    id: str
    name: str
    arguments: str

    def openai(self) -> dict[str, Any]:
        """The call as an item of an OpenAI message's `tool_calls`."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class MessageInvalid(ValueError):
    """A message or tool a client sent that Cleo cannot give a template; `param` names the field."""

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"{param} {problem}")
        self.param = param


def new_call_id() -> str:
    # Nine alphanumerics after the prefix: the id Mistral's templates insist on is then this one, unchanged.
    return "call_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(9))


def template_call_id(call_id: str) -> str:
    """The id a template is given for `call_id`: nine alphanumerics, because Mistral's templates
    refuse any other. The same id always maps to the same one, so a call and its result still match
    and a conversation renders the same way on every turn (which keeps the cached prefix valid)."""
    for candidate in (call_id, call_id.removeprefix("call_")):
        if len(candidate) == 9 and candidate.isascii() and candidate.isalnum():
            return candidate
    digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).digest()
    return "".join(_ALPHANUMERIC[byte % len(_ALPHANUMERIC)] for byte in digest[:9])


# --- which style a template uses --------------------------------------------------------------------

# Templates that wrap calls in `<tool_call>` but write arguments as XML, not JSON.
_XML_CALLS = ("<function=", "<arg_key>", "<invoke", "<tool_calls>", "<parameter=")
_JSON_KEY = r'\\?"{}\\?"\s*:'  # a key as the template writes it, in a string literal or not


def tool_style(template_source: str) -> ToolStyle | None:
    """How a model with this chat template writes tool calls; None when the template takes no tools
    or writes them in a form Cleo does not read."""
    if not re.search(r"\btools\b", template_source):
        return None
    if "[TOOL_CALLS]" in template_source:
        return ToolStyle.MISTRAL
    if any(marker in template_source for marker in _XML_CALLS):
        return None
    if "<tool_call>" in template_source:
        return ToolStyle.HERMES if re.search(_JSON_KEY.format("arguments"), template_source) else None
    if "<|start_header_id|>" in template_source and re.search(_JSON_KEY.format("parameters"), template_source):
        return ToolStyle.LLAMA3
    return None


# --- messages and tools as templates read them ---------------------------------------------------------

_ROLES = ("system", "developer", "user", "assistant", "tool")


def _text(content: Any, where: str, *, parts: tuple[str, ...] = ("text",)) -> str:
    """A message's content as one string: a string, or a list of text parts joined by new lines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise MessageInvalid(where, "must be a string or a list of text parts")
    texts = []
    for n, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in parts:
            shown = f"{kind!r} is not supported" if isinstance(kind, str) else "is missing"
            raise MessageInvalid(f"{where}[{n}].type", f"{shown}: this model reads {' and '.join(parts)} parts only")
        value = part.get(kind)
        if not isinstance(value, str):
            raise MessageInvalid(f"{where}[{n}].{kind}", "must be a string")
        texts.append(value)
    return "\n".join(texts)


def _arguments_object(arguments: Any, where: str) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        value = _json_object(arguments)
        if value is not None:
            return value
    raise MessageInvalid(where, "must be a JSON object (as a string)")


def _template_call(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise MessageInvalid(where, "must be an object")
    if call.get("type", "function") != "function":
        raise MessageInvalid(f"{where}.type", "must be 'function'")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise MessageInvalid(f"{where}.id", "must be a non-empty string")
    function = call.get("function")
    if not isinstance(function, dict):
        raise MessageInvalid(f"{where}.function", "must be an object with a name and arguments")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise MessageInvalid(f"{where}.function.name", "must be a non-empty string")
    # As a dict: templates write the arguments with `tojson`, which would quote a string a second time.
    arguments = _arguments_object(function.get("arguments", "{}"), f"{where}.function.arguments")
    return {"id": template_call_id(call_id), "type": "function", "function": {"name": name, "arguments": arguments}}


def template_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages as chat templates expect them; raises `MessageInvalid` naming the field.

    Content becomes a string (text parts joined); an assistant's `tool_calls` get their arguments
    as objects and appear only when there are some (templates test whether the key exists); a tool
    result carries its call's id and, where the call is in the conversation, the function's name.
    """
    if not isinstance(messages, list) or not messages:
        raise MessageInvalid("messages", "must be a non-empty list")
    names: dict[str, str] = {}
    converted = []
    for n, message in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(message, dict):
            raise MessageInvalid(where, "must be an object")
        role = message.get("role")
        if role not in _ROLES:
            raise MessageInvalid(f"{where}.role", f"must be one of {', '.join(_ROLES)}")
        content = message.get("content")
        calls = message.get("tool_calls") if role == "assistant" else None
        if content is None and not (role == "assistant" and calls):
            raise MessageInvalid(f"{where}.content", "is required")
        parts = ("text", "refusal") if role == "assistant" else ("text",)
        out: dict[str, Any] = {"role": "system" if role == "developer" else role,
                               "content": "" if content is None else _text(content, f"{where}.content", parts=parts)}
        if calls is not None:
            if not isinstance(calls, list):
                raise MessageInvalid(f"{where}.tool_calls", "must be a list")
            if calls:
                out["tool_calls"] = [_template_call(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(calls)]
                names.update({c["id"]: c["function"]["name"] for c in calls})
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise MessageInvalid(f"{where}.tool_call_id", "must be the id of the call this answers")
            out["tool_call_id"] = template_call_id(call_id)
            if call_id in names:
                out["name"] = names[call_id]
        converted.append(out)
    return converted


def template_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI `tools` as templates read them; raises `MessageInvalid` naming the field.

    Every tool gets a description and a parameters schema (empty when the client sent none):
    templates write both, and fail on a missing one.
    """
    if not isinstance(tools, list):
        raise MessageInvalid("tools", "must be a list")
    converted = []
    for n, tool in enumerate(tools):
        where = f"tools[{n}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise MessageInvalid(f"{where}.type", "must be 'function'")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise MessageInvalid(f"{where}.function", "must be an object with a name")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise MessageInvalid(f"{where}.function.name", "must be a non-empty string")
        description = function.get("description", "")
        if not isinstance(description, str):
            raise MessageInvalid(f"{where}.function.description", "must be a string")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise MessageInvalid(f"{where}.function.parameters", "must be a JSON schema object")
        converted.append({"type": "function",
                          "function": {"name": name, "description": description, "parameters": parameters}})
    return converted


# --- the model's calls --------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: Python reads them, clients' JSON does not


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _decode(text: str, start: int) -> tuple[Any, int] | None:
    """The JSON value at `start` (after spaces) and where it ends, or None."""
    while start < len(text) and text[start].isspace():
        start += 1
    try:
        return _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        return None


def _json_object(text: str) -> dict[str, Any] | None:
    decoded = _decode(text, 0)
    if decoded is None or not isinstance(decoded[0], dict) or text[decoded[1]:].strip():
        return None
    return decoded[0]


_CALL_KEYS = {"name", "arguments", "parameters", "type", "id"}


def _call(value: Any, keys: tuple[str, ...] = ("arguments", "parameters"), *, bare: bool = False) -> ToolCall | None:
    """A call from a decoded `{"name": ..., "arguments": {...}}`, or None when it is not one.

    `bare`: the object stands in the text with no marker around it, so it counts as a call only
    with its arguments and nothing but a call's keys (a JSON answer with a "name" is not a call).
    """
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"].strip():
        return None
    if value.get("type", "function") != "function":
        return None
    present = [key for key in keys if key in value]
    if bare and (not present or not value.keys() <= _CALL_KEYS):
        return None
    arguments = value[present[0]] if present else {}
    if isinstance(arguments, str):
        arguments = _json_object(arguments)
    if not isinstance(arguments, dict):
        return None
    try:
        text = json.dumps(arguments, ensure_ascii=False)
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a `\ud800` escape: kept escaped, so it can be sent
        text = json.dumps(arguments)
    except (ValueError, RecursionError):
        return None
    return ToolCall(new_call_id(), value["name"].strip(), text)


def _calls_filling(text: str, keys: tuple[str, ...], separators: str = "", *, bare: bool = False
                   ) -> list[ToolCall] | None:
    """The calls when `text` is nothing but one or more call objects (or one array of them)."""
    calls: list[ToolCall] = []
    position = 0
    while True:
        while position < len(text) and (text[position].isspace() or text[position] in separators):
            position += 1
        if position == len(text):
            return calls or None
        decoded = _decode(text, position)
        if decoded is None:
            return None
        value, position = decoded
        items = value if isinstance(value, list) and not calls else [value]
        for item in items:
            call = _call(item, keys, bare=bare)
            if call is None:
                return None
            calls.append(call)


def _removed(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` without the calls at `spans`: the content around them."""
    ends = [0, *(end for _, end in spans)]
    pieces = [text[ends[n]:start] for n, (start, _) in enumerate(spans)]
    return ("".join(pieces) + text[ends[-1]:]).strip()


_HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)


def _hermes(text: str) -> tuple[str, list[ToolCall]]:
    calls, spans = [], []
    for match in _HERMES_BLOCK.finditer(text):
        found = _calls_filling(match.group(1), ("arguments", "parameters"))
        if found:
            calls += found
            spans.append(match.span())
    if not calls and "<tool_call>" not in text:
        # A model whose `<tool_call>` is a control token: the text shown without such tokens is bare JSON.
        bare = _calls_filling(text, ("arguments",), bare=True)
        if bare:
            return "", bare
    return (_removed(text, spans), calls) if calls else (text, [])


_MISTRAL_NAMED = re.compile(r"\s*([^\s\[\]{}\"]+)\s*(?:\[CALL_ID\]\s*[A-Za-z0-9_-]*\s*)?\[ARGS\]")


def _mistral_segment(segment: str) -> tuple[list[ToolCall], int]:
    """The calls at the start of `segment` (what follows one `[TOOL_CALLS]`) and where they end; what
    follows them is content."""
    named = _MISTRAL_NAMED.match(segment)
    decoded = _decode(segment, named.end() if named else 0)
    if decoded is None:
        return [], 0
    value, end = decoded
    if named:
        call = _call({"name": named.group(1), "arguments": value}) if isinstance(value, dict) else None
        return ([call], end) if call else ([], 0)
    calls = [_call(item, ("arguments",)) for item in (value if isinstance(value, list) else [value])]
    if not calls or None in calls:
        return [], 0
    return [c for c in calls if c is not None], end


def _mistral(text: str) -> tuple[str, list[ToolCall]]:
    marker = "[TOOL_CALLS]"
    marks = [m.start() for m in re.finditer(re.escape(marker), text)]
    if not marks:
        bare = _calls_filling(text, ("arguments",), bare=True)  # `[TOOL_CALLS]` is a control token, perhaps not shown
        return ("", bare) if bare and text.lstrip().startswith("[") else (text, [])
    calls, spans = [], []
    for n, start in enumerate(marks):
        end = marks[n + 1] if n + 1 < len(marks) else len(text)
        found, used = _mistral_segment(text[start + len(marker):end])
        if found:
            calls += found
            spans.append((start, start + len(marker) + used))
    return (_removed(text, spans), calls) if calls else (text, [])


_LLAMA_START = re.compile(r'\{\s*"(?:type|name)"\s*:')


def _llama3(text: str) -> tuple[str, list[ToolCall]]:
    tag = text.find("<|python_tag|>")
    if tag >= 0:
        after = tag + len("<|python_tag|>")
        found = _calls_filling(text[after:], ("parameters", "arguments"), separators=";")
        return (text[:tag].strip(), found) if found else (text, [])
    calls, spans = [], []
    position = 0
    while (match := _LLAMA_START.search(text, position)) is not None:
        decoded = _decode(text, match.start())
        call = _call(decoded[0], ("parameters", "arguments"), bare=True) if decoded else None
        if call is None or decoded is None:
            position = match.start() + 1
            continue
        calls.append(call)
        end = decoded[1]
        while end < len(text) and (text[end].isspace() or text[end] == ";"):  # calls are joined by `;`
            end += 1
        spans.append((match.start(), end))
        position = end
    return (_removed(text, spans), calls) if calls else (text, [])


def parse_tool_calls(text: str, style: ToolStyle) -> tuple[str, list[ToolCall]]:
    """The content left when the calls are taken out of `text`, and the calls.

    Without a well-formed call the text comes back unchanged; a malformed call stays in it.
    """
    if style is ToolStyle.HERMES:
        return _hermes(text)
    if style is ToolStyle.MISTRAL:
        return _mistral(text)
    return _llama3(text)
