"""A model's Jinja chat template, compiled and rendered in a strict sandbox.

Used by the runtime (to build prompts) and by training (to build the same text it learns from),
so both render a conversation identically. Templates come from model files, i.e. from strangers:
the sandbox fails at the first attempt to reach Python internals instead of rendering it as
empty, and any failure of the template is reported as `ChatTemplateInvalid`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import ChatTemplateInvalid

_HINT = "Choose another model, or one converted with a working chat template."


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, failing at the first unsafe attribute instead of rendering it as empty."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise jinja2.exceptions.SecurityError(f"access to {attribute!r} of a {type(obj).__name__} is unsafe")


class _GenerationTags(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (Hugging Face's marker for assistant text) renders its body."""

    tags = {"generation"}  # noqa: RUF012  # jinja2 declares it as a plain attribute

    def parse(self, parser: Any) -> Any:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> NoReturn:
    """`raise_exception(...)`, which Hugging Face chat templates call to refuse a conversation."""
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, indent: int | None = None, separators: tuple[str, str] | None = None,
            ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, separators=separators, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


class ChatTemplate:
    """Rendered as llama.cpp's Python bindings render it: `trim_blocks`, `lstrip_blocks`,
    `bos_token`/`eos_token`, `raise_exception`, `strftime_now`. `origin` names the model file in errors."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "", origin: str = "the model") -> None:
        environment = _StrictSandbox(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                                     extensions=[_GenerationTags, "jinja2.ext.loopcontrols"])
        environment.filters["tojson"] = _tojson
        self.origin = origin
        try:
            self._template = environment.from_string(source)
        except Exception as exc:  # syntax errors, and anything else compiling a stranger's template raises
            raise ChatTemplateInvalid(f"The chat template in {origin} is not a valid template: it does not compile "
                                      f"({exc}).", hint=_HINT) from exc
        self.source = source
        self._globals = {"bos_token": bos_token, "eos_token": eos_token, "raise_exception": _raise_exception,
                         "strftime_now": lambda fmt: datetime.now().strftime(fmt)}

    def render(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
        """The text of `messages`; with `add_generation_prompt`, followed by the start of an assistant reply.

        A template that refuses a system message gets it folded into the first user message.
        """
        try:
            return self._render(messages, add_generation_prompt)
        except ChatTemplateInvalid:
            if len(messages) < 2 or messages[0]["role"] != "system":
                raise
            first = {"role": messages[1]["role"], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
            return self._render([first, *messages[2:]], add_generation_prompt)

    def _render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        try:
            return str(self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                             **self._globals))
        except jinja2.exceptions.SecurityError as exc:
            raise ChatTemplateInvalid(
                f"The chat template in {self.origin} tried to reach Python internals, which a template must not "
                f"touch ({exc}); Cleo refused to run it.",
                hint="Do not use this file; get the model from a source you trust.",
            ) from exc
        except Exception as exc:  # the template is code from the model file: its failures are the file's
            raise ChatTemplateInvalid(f"The chat template in {self.origin} failed on this conversation "
                                      f"({type(exc).__name__}: {exc}).", hint=_HINT) from exc
