"""The local API's requests as the Session's thread runs them: prompts, generation, embeddings.

Everything here runs in a queued turn on the thread that owns the model (llama.cpp contexts are
single-threaded, docs/ARCHITECTURE.md decision 2) and talks to the HTTP side through the turn's
events: `Started` once the prompt is accepted, `Token`s, `Usage`, `Done`; or `Failed` with an
`ApiError`. What is not an event (the tool style, embeddings) goes in the request's `Outcome`,
written before the event that announces it.

`generate` is the one seam between a request and the model. Requests run as turns side by side
(engine.chat.requests), each in a sequence of its own, and the model writes them all in shared
llama.cpp steps (engine.runtime.batch).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from engine.api.errors import ApiError
from engine.api.stops import StopScanner
from engine.api.tool_calls import MessageInvalid, ToolStyle, template_messages, template_tools, tool_style
from engine.chat.assistant import Turn
from engine.chat.model import ChatModel
from engine.events import Done, Event, Failed, Started, Token, Usage
from engine.memory.turn_memory import LongTermMemory
from engine.runtime.chat_model import ReplyStats
from engine.runtime.sampling import Sampling

if TYPE_CHECKING:
    from engine.session import Session

EMBEDDER_MAX_TOKENS = 512  # the embedder's context (engine/runtime/embedder.py): longer input cannot be read
_EMBED_AT_ONCE = 16  # inputs per llama.cpp call; a stop is checked between calls


@dataclass
class Outcome:
    """What a request's turn hands back besides its events."""

    tool_style: ToolStyle | None = None
    vectors: list[list[float]] = field(default_factory=list)
    input_tokens: int = 0


@dataclass(frozen=True)
class TextRequest:
    """A chat (`messages`) or text (`prompt`) completion, as validated by the HTTP side."""

    messages: list[dict[str, Any]] | None
    prompt: str
    tools: list[dict[str, Any]] | None
    sampling: Sampling
    max_tokens: int | None  # None: the settings' longest reply; either way capped by the context
    stops: tuple[str, ...]
    memory: bool  # Cleo's instructions and memories (the model id `cleo`, when the user allowed it)
    save_chat: bool


def text_work(session: Session, request: TextRequest, outcome: Outcome) -> Callable[[ChatModel, threading.Event], Turn]:
    def work(model: ChatModel, stop: threading.Event) -> Turn:
        try:
            tokens, messages = _prompt(session, model, request, outcome)
        except ApiError as exc:
            yield Failed(exc)
            return
        room = model.context_size - len(tokens)
        if room <= 0:
            where = "messages" if request.messages is not None else "prompt"
            yield Failed(ApiError(400, f"The {where} take {len(tokens)} tokens; the model reads at most "
                                       f"{model.context_size}, with room for a reply.", param=where,
                                  code="context_length_exceeded"))
            return
        limit = min(request.max_tokens or session.settings.max_tokens, room)
        alongside = model.parallel > 0  # in a sequence of its own, beside the chat's and other requests
        if not alongside:
            # The open chat's next turn restores its cache instead of reading it all.
            session.assistant.set_cache_aside()
        yield Started("", "", "")
        parts: list[str] = []
        finish = ""
        sampling = replace(request.sampling, max_tokens=limit)
        tools = outcome.tool_style is not None  # a call starts with a control token the parser must see
        for event in generate(model, tokens, sampling, request.stops, stop, control_tokens=tools, alongside=alongside):
            if isinstance(event, Token):
                parts.append(event.text)
            elif isinstance(event, Done):
                finish = event.finish_reason
            yield event
        if request.save_chat and messages is not None:
            _save_chat(session, model, messages, "".join(parts), finish)
    return work


def generate(model: ChatModel, prompt: Sequence[int], sampling: Sampling, stops: Sequence[str],
             stop: threading.Event, *, control_tokens: bool = False, alongside: bool = False) -> Iterator[Event]:
    """The reply to `prompt` as `Token`s, then `Usage` and `Done`; it ends at a stop string, at the
    token limit, or within one token of `stop` being set. With `control_tokens`, the model's control
    tokens (but end-of-generation) are part of the text, as tool calls need. With `alongside`, it is
    written in a sequence of its own, sharing llama.cpp's steps with the others (continuous batching)."""
    stats = ReplyStats()
    scanner = StopScanner(stops)
    started = time.perf_counter()
    pieces = model.stream(prompt, sampling, stop, stats, special=control_tokens, alongside=alongside)
    try:
        for piece in pieces:
            if text := scanner.feed(piece):
                yield Token(text)
            if scanner.hit:
                break
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # frees llama.cpp's sampler now, not when the generator is collected
    if tail := scanner.flush():
        yield Token(tail)
    elapsed = time.perf_counter() - started
    yield Usage(prompt_tokens=stats.prompt_tokens, cached_tokens=stats.cached_tokens,
                completion_tokens=stats.completion_tokens,
                tokens_per_s=stats.completion_tokens / elapsed if elapsed > 0 else 0.0,
                context_used=stats.prompt_tokens + stats.completion_tokens, context_size=model.context_size)
    yield Done("", "stop" if scanner.hit else stats.finish_reason)


def embedding_work(session: Session, texts: list[str], outcome: Outcome
                   ) -> Callable[[ChatModel, threading.Event], Turn]:
    def work(_model: ChatModel, stop: threading.Event) -> Turn:
        embedder = session.profile.embedder
        if embedder is None:
            yield Failed(ApiError(503, "Cleo's embedding model is not available (its file is missing or damaged).",
                                  code="model_not_loaded"))
            return
        counts = [len(embedder.tokenize(text)) for text in texts]
        for n, count in enumerate(counts):
            if count > EMBEDDER_MAX_TOKENS:
                yield Failed(ApiError(400, f"Input {n} has {count} tokens; the embedding model reads at most "
                                           f"{EMBEDDER_MAX_TOKENS}.", param=f"input[{n}]",
                                      code="context_length_exceeded"))
                return
        vectors: list[list[float]] = []
        for start in range(0, len(texts), _EMBED_AT_ONCE):
            if stop.is_set():
                return
            vectors += embedder.embed(texts[start:start + _EMBED_AT_ONCE]).tolist()
        outcome.vectors, outcome.input_tokens = vectors, sum(counts)
        yield Done("", "stop")
    return work


def _prompt(session: Session, model: ChatModel, request: TextRequest, outcome: Outcome
            ) -> tuple[list[int], list[dict[str, Any]] | None]:
    if request.messages is None:
        return model.tokenize(request.prompt), None
    try:
        messages = template_messages(request.messages)
        tools = template_tools(request.tools) if request.tools else None
    except MessageInvalid as exc:
        raise ApiError(400, f"Invalid '{exc.param}': {exc}.", param=exc.param, code="invalid_value") from None
    if tools:
        outcome.tool_style = tool_style(model.chat_template)
        if outcome.tool_style is None:
            raise ApiError(400, f"The model {model.name} does not take tools in a form Cleo can read.",
                           param="tools", code="tools_not_supported")
    prompted = _with_memory(session, messages) if request.memory else messages
    return model.chat_tokens(prompted, tools=tools), messages  # saved as the client sent them


def _with_memory(session: Session, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cleo's instructions and what it knows about the user first; what it recalls for the last
    message just before that message, as in a chat (docs/ARCHITECTURE.md decision 3)."""
    profile = session.profile
    memory = LongTermMemory(profile.book, profile.recall, profile.store)  # no chat's: on, as the user allowed
    own = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    system = "\n\n".join(part for part in (session.settings.system_prompt, memory.pinned_block(None), *own) if part)
    rest = [dict(m) for m in messages if m["role"] != "system"]
    last_user = next((m for m in reversed(rest) if m["role"] == "user"), None)
    if last_user is not None:
        recollection = memory.context_for(None, last_user["content"])
        if recollection.text:
            last_user["content"] = f"{recollection.text}\n\n{last_user['content']}"
    return [{"role": "system", "content": system}, *rest]


def _save_chat(session: Session, model: ChatModel, messages: list[dict[str, Any]], reply: str, finish: str) -> None:
    """The request and its reply as a chat in the user's history (the setting api_save_chats)."""
    store = session.profile.store
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
    conversation = store.create_conversation(system_prompt=system).id
    parent: str | None = None
    for message in messages:
        if message["role"] in ("user", "assistant") and message["content"]:
            parent = store.add_message(conversation, message["role"], message["content"], parent).id
    saved = store.add_message(conversation, "assistant", reply, parent, model=model.name, finish_reason=finish)
    store.set_current_leaf(conversation, saved.id)
