"""The prompt for one turn, built for prefix reuse and kept inside the model's context.

Order (docs/ARCHITECTURE.md decision 3): the instructions (system prompt, then the pinned block about the
user) first, because they rarely change; then the conversation; then per-turn context just
before the newest user message, so the tokens before it stay the same from turn to turn and
llama.cpp reuses them.

When the conversation outgrows the budget, the oldest turns leave from the front. They leave a
few at a time (down to `_REFILL` of the budget) so that the start of the prompt then stays put
for several turns instead of shifting, and re-reading, on every one. Evicted turns are handed to
the caller, which passes them to memory. A single message too big for the budget is cut, with
a notice; nothing here raises a context error.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.chat.conversation import Message
from engine.events import Notice

_REFILL = 0.75  # after an eviction the prompt uses at most this share of the budget
_CUT_MARK = "\n[…]"


class PromptModel(Protocol):
    """What prompt building needs from a model: its chat template and tokenizer."""

    def chat_tokens(self, messages: Sequence[dict[str, str]]) -> list[int]: ...
    def tokenize(self, text: str, *, add_start: bool = True) -> list[int]: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class PromptPlan:
    tokens: list[int]
    messages: list[dict[str, str]]  # what the template rendered
    evicted: tuple[Message, ...]  # turns that left the context on this turn
    notices: tuple[Notice, ...]


def build_prompt(
    model: PromptModel,
    *,
    instructions: str,
    history: Sequence[Message],
    newest: str,
    context: str = "",
    budget: int,
    evicted_before: Collection[str] = (),
) -> PromptPlan:
    """The prompt for replying to `newest` after `history`, at most `budget` tokens long.

    `evicted_before` holds ids of messages evicted on earlier turns; they stay out, so the start
    of the prompt does not move back and forth.
    """
    start = 0
    while start < len(history) and history[start].id in evicted_before:
        start += 1
    user = f"{context}\n\n{newest}" if context else newest

    def render(first: int, user_text: str = user, system: str = instructions) -> tuple[list[dict[str, str]], list[int]]:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": m.role, "content": m.content} for m in history[first:]
        ] + [{"role": "user", "content": user_text}]
        return messages, model.chat_tokens(messages)

    messages, tokens = render(start)
    if len(tokens) <= budget:
        return PromptPlan(tokens, messages, (), ())

    # Cut points: where a user message begins a turn, and after the whole history.
    cuts = [i for i in range(start + 1, len(history)) if history[i].role == "user"] + [len(history)]
    first = _first_fitting(cuts, lambda k: len(render(k)[1]) <= int(budget * _REFILL))
    if first is None:
        first = len(history)
    evicted = tuple(history[start:first])
    notices = [Notice("evicted", f"{len(evicted)} older messages no longer fit in the model's context; "
                                 "Cleo no longer sees them in this chat.")] if evicted else []
    messages, tokens = render(first)
    if len(tokens) <= budget:
        return PromptPlan(tokens, messages, evicted, tuple(notices))

    # Nothing old is left to drop: shorten what is too big, injected context first.
    if context:
        user = newest
        notices.append(Notice("truncated", "Recalled memories were left out of this reply: the message alone "
                                           "fills the model's context."))
        messages, tokens = render(first)
    system = instructions
    if len(tokens) > budget and system:
        # The instructions may take at most half the budget; the rest is for the message.
        excess = len(render(first, user_text="")[1]) - budget // 2
        if excess > 0:
            system = _cut(model, system, _length(model, system) - excess)
            notices.append(Notice("truncated", "The instructions (system prompt and what Cleo knows about you) "
                                               "were too long for the model's context and were shortened."))
            messages, tokens = render(first, system=system)
    if len(tokens) > budget:
        keep = budget - len(render(first, user_text="", system=system)[1])
        while True:
            messages, tokens = render(first, user_text=_cut(model, user, keep), system=system)
            if len(tokens) <= budget or keep <= 0:
                break
            keep -= len(tokens) - budget
        notices.append(Notice("truncated", f"Your message is about {_length(model, user)} tokens, too long for "
                                           "the model's context with room for a reply; Cleo read only its first "
                                           f"{max(keep, 0)} tokens."))
    return PromptPlan(tokens, messages, evicted, tuple(notices))


def _length(model: PromptModel, text: str) -> int:
    return len(model.tokenize(text, add_start=False))


def _first_fitting(cuts: Sequence[int], fits: Callable[[int], bool]) -> int | None:
    """The smallest cut for which `fits(cut)`; fewer messages never need more tokens, so bisect."""
    lo, hi = 0, len(cuts)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(cuts[mid]):
            hi = mid
        else:
            lo = mid + 1
    return cuts[lo] if lo < len(cuts) else None


def _cut(model: PromptModel, text: str, tokens: int) -> str:
    """The start of `text`, about `tokens` tokens long, marked as cut."""
    ids = model.tokenize(text, add_start=False)
    if len(ids) <= tokens:
        return text
    return model.detokenize(ids[: max(0, tokens - 3)]) + _CUT_MARK if tokens > 3 else ""
