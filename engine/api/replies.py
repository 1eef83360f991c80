"""A request's turn as the HTTP side sees it: its events read without blocking the server, the
client's disconnect turned into a stop, and replies in OpenAI's shapes (whole or as SSE chunks).
"""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from engine.api.errors import ApiError, api_error_from
from engine.api.tool_calls import ToolCall, parse_tool_calls
from engine.api.work import Outcome
from engine.chat.requests import TurnTicket
from engine.events import Done, Event, Failed, Started, Token, Usage

_POLL_S = 0.2  # how often a reader waiting for the model looks at its deadline
_WAITING = object()


class TicketReader:
    """The events of one ticket, read on a worker thread; past `deadline` the turn is stopped."""

    def __init__(self, ticket: TurnTicket, timeout_s: float) -> None:
        self.ticket = ticket
        self.deadline = time.monotonic() + timeout_s
        self.timed_out = False

    async def next(self) -> Event | None:
        """The next event, or None once the turn has ended."""
        while True:
            if not self.timed_out and time.monotonic() > self.deadline:
                self.timed_out = True
                self.ticket.stop()
            event = await anyio.to_thread.run_sync(self._get)
            if event is not _WAITING:
                return event  # type: ignore[return-value]

    def _get(self) -> object:
        try:
            return next(self.ticket.events(timeout=_POLL_S), None)
        except queue.Empty:
            return _WAITING

    async def accepted(self) -> None:
        """Wait until the model has accepted the request (`Started`); its refusal as an `ApiError`."""
        event = await self.next()
        if isinstance(event, Started):
            return
        if isinstance(event, Failed):
            raise api_error_from(event.error)
        if self.timed_out:
            raise ApiError(504, "The request waited longer than the setting api_request_timeout_s allows.",
                           code="timeout")
        raise ApiError(503, "Cleo stopped before this request could be answered.", code="shutting_down")


async def until_disconnect(receive: Receive, ticket: TurnTicket) -> None:
    """Stop `ticket` when the client goes away (the body has been read: what comes next is the disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    ticket.stop()


@dataclass
class Reply:
    """A generated reply as it accumulates."""

    text: str = ""
    finish_reason: str = "stop"
    usage: Usage | None = None
    calls: list[ToolCall] = field(default_factory=list)

    def openai_usage(self) -> dict[str, Any]:
        u = self.usage
        prompt, completion, cached = (u.prompt_tokens, u.completion_tokens, u.cached_tokens) if u else (0, 0, 0)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached}}

    def take(self, event: Event, timed_out: bool) -> str:
        """Add `event`; the new text it brings."""
        if isinstance(event, Token):
            self.text += event.text
            return event.text
        if isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Done):
            stopped = event.finish_reason == "stopped"
            self.finish_reason = "length" if event.finish_reason == "length" or (stopped and timed_out) else "stop"
        elif isinstance(event, Failed):
            raise api_error_from(event.error)
        return ""

    def split_calls(self, outcome: Outcome) -> None:
        """Take the model's tool calls out of the text, when the request offered tools."""
        if outcome.tool_style is None:
            return
        self.text, self.calls = parse_tool_calls(self.text, outcome.tool_style)
        if self.calls:
            self.finish_reason = "tool_calls"


async def collect(reader: TicketReader, outcome: Outcome, receive: Receive) -> Reply:
    """The whole reply, stopping the turn if the client leaves meanwhile."""
    reply = Reply()
    async with anyio.create_task_group() as group:
        group.start_soon(until_disconnect, receive, reader.ticket)
        try:
            while (event := await reader.next()) is not None:
                reply.take(event, reader.timed_out)
        finally:
            group.cancel_scope.cancel()
    reply.split_calls(outcome)
    return reply


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class EventStream(Response):
    """Server-sent events from `chunks`, stopping the ticket's turn as soon as the client goes away."""

    def __init__(self, chunks: Callable[[], AsyncIterator[bytes]], ticket: TurnTicket) -> None:
        self.status_code = 200
        self.background = None
        # No Content-Length: the stream's length is known only at its end.
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        self.chunks = chunks
        self.ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            async with anyio.create_task_group() as group:
                async def watch() -> None:
                    await until_disconnect(receive, self.ticket)
                    group.cancel_scope.cancel()
                group.start_soon(watch)
                async for chunk in self.chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        except OSError:
            pass  # the client went away while a chunk was on its way
        finally:
            self.ticket.stop()  # harmless once the turn ended; ends it within a token if it has not


async def chunks_with_errors(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """An error after the first chunk can only be told in the stream: as an event with OpenAI's error body."""
    try:
        async for chunk in chunks:
            yield chunk
    except ApiError as exc:
        yield sse(exc.body())
    yield sse("[DONE]")
