"""What a turn reports while it runs: small frozen events, in this order.

`Started`, then any `Notice`s, `MemoryUpdated`s and one `Recalled`, the reply as `Token`s,
`Usage`, and `Done`; or `Failed` at any point after which nothing follows. The GUI's worker
re-emits them as Qt signals; the CLI prints them. They carry plain values only, so they can
cross threads.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import InternalError, KnownError


@dataclass(frozen=True)
class Started:
    conversation_id: str
    user_message_id: str
    reply_message_id: str


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Notice:
    """Something the user should see in the chat, e.g. a CPU fallback or a shortened message."""

    kind: str  # "device", "truncated", "evicted"
    text: str


@dataclass(frozen=True)
class RecalledItem:
    """One remembered thing put in front of the model, with where it came from."""

    kind: str  # "memory" or "message"
    text: str
    score: float
    created_at: float
    conversation_id: str | None  # where it was said (None for a memory typed in by hand)
    message_id: str | None
    memory_id: str | None = None
    role: str = ""  # for a message: who said it
    source_id: str | None = None  # for an imported message: its id in the export it came from


@dataclass(frozen=True)
class Recollection:
    """What memory adds to one turn: the text for the prompt and the items it came from."""

    text: str = ""
    items: tuple[RecalledItem, ...] = ()


@dataclass(frozen=True)
class Recalled:
    """Exactly what memory added to this turn's prompt: the window's "why this answer"."""

    items: tuple[RecalledItem, ...]


@dataclass(frozen=True)
class MemoryUpdated:
    """Cleo saved, changed, proposed or forgot a memory during this turn."""

    action: str  # "added", "proposed", "bumped", "superseded", "forgotten"
    memory_id: str
    text: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    cached_tokens: int  # prompt tokens reused from the cache rather than computed
    completion_tokens: int
    tokens_per_s: float  # generation speed, first token to last
    context_used: int
    context_size: int


@dataclass(frozen=True)
class Done:
    message_id: str
    finish_reason: str  # "stop" (the model finished), "length" (token limit), "stopped" (the user)


@dataclass(frozen=True)
class Failed:
    error: KnownError | InternalError  # InternalError: a bug, logged with its traceback


Event = Started | Token | Notice | Recalled | MemoryUpdated | Usage | Done | Failed
