"""What a turn reports while it runs: small frozen events, in this order.

`Started`, then any `Notice`s, the reply as `Token`s, `Usage`, and `Done`; or `Failed` at any
point after which nothing follows. The GUI's worker re-emits them as Qt signals; the CLI prints
them. They carry plain values only, so they can cross threads.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import KnownError


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
    error: KnownError


Event = Started | Token | Notice | Usage | Done | Failed
