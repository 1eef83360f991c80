"""A model's Jinja chat template, compiled and rendered in a strict sandbox, bounded in time and memory.

Used by the runtime (to build prompts) and by training (to build the same text it learns from),
so both render a conversation identically. Templates come from model files, i.e. from strangers:
the sandbox (`template_sandbox`) fails at the first attempt to reach Python internals instead of
rendering it as empty and refuses to build huge values, and the render process
(`template_process`) stops whatever still runs too long or allocates too much. Every failure of a
template, whatever its kind, is reported as `ChatTemplateInvalid` naming the model file.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jinja2

from engine.errors import ChatTemplateInvalid
from engine.runtime import template_process, template_sandbox
from engine.runtime.template_process import RENDER_SECONDS, RenderFailed

_HINT = "Choose another model, or one converted with a working chat template."
_DO_NOT_USE = "Do not use this file; get the model from a source you trust."


class ChatTemplate:
    """Rendered as llama.cpp's Python bindings render it: `trim_blocks`, `lstrip_blocks`,
    `bos_token`/`eos_token`, `raise_exception`, `strftime_now`. `origin` names the model file in errors.

    A template renders in the render process, within `RENDER_SECONDS` and its memory limit.
    `isolated=False` renders in this process instead (still sandboxed and size-guarded, but with no
    deadline or memory limit): only for a template Cleo wrote itself, never one from a file.
    """

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "", origin: str = "the model",
                 isolated: bool = True) -> None:
        self.source = source
        self.origin = origin
        self._tokens = (bos_token, eos_token)
        self._process = template_process.shared() if isolated else None
        self._local: jinja2.Template | None = None
        # Compiled now, so a template that does not compile fails when the model loads, not mid-chat.
        if self._process is not None:
            self._call(("compile", source), time.monotonic() + RENDER_SECONDS)
            return
        try:
            self._local = template_sandbox.compile_template(source)
        except Exception as exc:  # syntax errors, and anything else compiling a stranger's template raises
            raise self._invalid("compile", str(exc)) from exc

    def render(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = False,
               tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The text of `messages`; with `add_generation_prompt`, followed by the start of an assistant reply.

        `tools` are the functions the model may call (OpenAI's `tools`), which the template writes
        into the prompt its own way. A template that refuses a system message gets it folded into
        the first user message. Both tries together finish within `RENDER_SECONDS`.
        """
        deadline = time.monotonic() + RENDER_SECONDS
        try:
            return self._render(messages, add_generation_prompt, tools, deadline)
        except ChatTemplateInvalid as exc:
            refused = isinstance(exc.__cause__, RenderFailed) and exc.__cause__.kind == "failed"
            if not refused or len(messages) < 2 or messages[0]["role"] != "system":
                raise
            first = {**messages[1], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
            return self._render([first, *messages[2:]], add_generation_prompt, tools, deadline)

    def _render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool,
                tools: Sequence[dict[str, Any]] | None, deadline: float) -> str:
        plain = [dict(m) for m in messages]
        offered = [dict(t) for t in tools] if tools else None
        if self._process is not None:
            return self._call(("render", self.source, plain, add_generation_prompt, *self._tokens, offered), deadline)
        assert self._local is not None
        try:
            return template_sandbox.render(self._local, plain, add_generation_prompt=add_generation_prompt,
                                           bos_token=self._tokens[0], eos_token=self._tokens[1], tools=offered)
        except template_sandbox.TemplateTooCostly as exc:
            raise self._invalid("limit", str(exc)) from RenderFailed("limit", str(exc))
        except jinja2.exceptions.SecurityError as exc:
            raise self._invalid("unsafe", str(exc)) from RenderFailed("unsafe", str(exc))
        except Exception as exc:  # the template is code from the model file: its failures are the file's
            detail = f"{type(exc).__name__}: {exc}"
            raise self._invalid("failed", detail) from RenderFailed("failed", detail)

    def _call(self, request: tuple[object, ...], deadline: float) -> str:
        assert self._process is not None
        try:
            return self._process.request(request, deadline - time.monotonic())
        except RenderFailed as exc:
            raise self._invalid(exc.kind, exc.detail) from exc

    def _invalid(self, kind: str, detail: str) -> ChatTemplateInvalid:
        """The error for a template that failed in the way `kind` says (see `template_process._answer`)."""
        where = f"The chat template in {self.origin}"
        if kind == "compile":
            return ChatTemplateInvalid(f"{where} is not a valid template: it does not compile ({detail}).", hint=_HINT)
        if kind == "unsafe":
            return ChatTemplateInvalid(f"{where} tried to reach Python internals, which a template must not "
                                       f"touch ({detail}); Cleo refused to run it.", hint=_DO_NOT_USE)
        if kind == "limit":
            return ChatTemplateInvalid(f"{where} tried to build far more than any prompt needs ({detail}); "
                                       "Cleo stopped it.", hint=_DO_NOT_USE)
        if kind == "memory":
            return ChatTemplateInvalid(f"{where} needed more than {template_process.MEMORY_BYTES // 2**20} MB of "
                                       "memory for this conversation; Cleo stopped it.", hint=_DO_NOT_USE)
        if kind == "time":
            return ChatTemplateInvalid(f"{where} did not finish within {RENDER_SECONDS} s on this conversation "
                                       "(a prompt takes milliseconds); Cleo stopped it.", hint=_DO_NOT_USE)
        if kind == "crashed":
            return ChatTemplateInvalid(f"{where} crashed the process that renders templates ({detail}); Cleo "
                                       "started a new one.", hint=_DO_NOT_USE)
        return ChatTemplateInvalid(f"{where} failed on this conversation ({detail}).", hint=_HINT)

