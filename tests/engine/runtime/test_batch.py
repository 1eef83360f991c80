"""Replies written side by side in one llama.cpp context (continuous batching), on the real default MoE:
each reads as it does alone, joins and leaves while others write, stops alone, and leaves the chat's cache."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from engine.runtime import batch
from engine.runtime.chat_model import LlamaChatModel, ReplyStats
from engine.runtime.sampling import Sampling
from tests.helpers.models import DefaultModels

GREEDY = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=24)
QUESTIONS = ["What is the capital of France?", "Tell me a story about a dragon.", "Name three colours.",
             "Why is the sky blue?"]


@pytest.fixture(scope="module")
def model(default_models: DefaultModels) -> Iterator[LlamaChatModel]:
    loaded = LlamaChatModel(default_models.chat, context_size=1024, threads=1, parallel=3)
    yield loaded
    loaded.close()


def ask(model: LlamaChatModel, question: str, system: str = "") -> list[int]:
    messages = [{"role": "system", "content": system}] if system else []
    return model.chat_tokens([*messages, {"role": "user", "content": question}])


def alone(model: LlamaChatModel, prompt: list[int]) -> str:
    """The reply to `prompt` written with nothing beside it, its prompt read from the start."""
    forget_all(model)
    return "".join(model.stream(prompt, GREEDY, alongside=True))


def forget_all(model: LlamaChatModel) -> None:
    """Empty every sequence, so replies compared read their prompts the same way (the numbers of
    llama.cpp's arithmetic depend on how a prompt is cut into batches)."""
    for sequence in range(model.parallel + 1):
        model._forget_from(sequence, 0)


def side_by_side(streams: list[Iterator[str]], joins_at: list[int]) -> list[str]:
    """Read the streams one piece each in turn, stream i taking part from round `joins_at[i]` on."""
    texts = ["" for _ in streams]
    live = set(range(len(streams)))
    rounds = 0
    while live:
        for i in sorted(live):
            if joins_at[i] > rounds:
                continue
            try:
                texts[i] += next(streams[i])
            except StopIteration:
                live.discard(i)
        rounds += 1
    return texts


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of tokens of every llama.cpp batch decoded."""
    sizes: list[int] = []
    real = batch.llama_cpp.llama_decode

    def counted(ctx: Any, one: Any) -> int:
        sizes.append(int(one.n_tokens))
        return int(real(ctx, one))
    monkeypatch.setattr(batch.llama_cpp, "llama_decode", counted)
    return sizes


def test_replies_written_together_read_as_they_do_alone_even_joining_midway(
        model: LlamaChatModel, decodes: list[int]) -> None:
    prompts = [ask(model, q) for q in QUESTIONS]
    expected = [alone(model, p) for p in prompts]
    steps_alone = len(decodes)
    forget_all(model)
    decodes.clear()
    # The chat's reply and three others; they join after 0, 3, 7 and 12 rounds of the first.
    streams = [model.stream(prompts[0], GREEDY), *(model.stream(p, GREEDY, alongside=True) for p in prompts[1:])]
    together = side_by_side(streams, [0, 3, 7, 12])
    assert together == expected
    assert all(len(text) > 20 for text in together)
    # One llama.cpp step serves every reply that is writing: far fewer steps than one reply at a time.
    assert len(decodes) < 0.6 * steps_alone, (len(decodes), steps_alone)
    assert max(decodes) > 1


def test_a_stopped_reply_ends_alone_and_the_others_go_on(model: LlamaChatModel) -> None:
    prompts = [ask(model, q) for q in QUESTIONS[:3]]
    expected = [alone(model, p) for p in prompts]
    forget_all(model)
    stop = threading.Event()
    stats = ReplyStats()
    streams = [model.stream(prompts[0], GREEDY, alongside=True),
               model.stream(prompts[1], GREEDY, stop, stats, alongside=True),
               model.stream(prompts[2], GREEDY, alongside=True)]
    first = [next(s) for s in streams]
    stop.set()
    rest = side_by_side(streams, [0, 0, 0])
    texts = [a + b for a, b in zip(first, rest, strict=True)]
    assert texts[0] == expected[0] and texts[2] == expected[2]
    assert stats.finish_reason == "stopped" and expected[1].startswith(texts[1]) and texts[1] != expected[1]


def test_replies_beside_the_chat_leave_its_cache_for_its_next_turn(model: LlamaChatModel) -> None:
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    model.forget()
    first = "".join(model.stream(model.chat_tokens(chat), GREEDY))
    cached = model.cached_tokens
    others = [model.stream(ask(model, q), GREEDY, alongside=True) for q in QUESTIONS[1:]]
    next(others[0])
    kept = model.snapshot()  # set aside while other replies are being written, as a chat switch does
    side_by_side(others, [0, 0, 0])
    assert model.cached_tokens == cached
    follow_up = model.chat_tokens([*chat, {"role": "assistant", "content": first},
                                   {"role": "user", "content": "And of Italy?"}])
    stats = ReplyStats()
    answer = "".join(model.stream(follow_up, GREEDY, None, stats))
    assert stats.cached_tokens >= len(cached) - 1 and answer
    assert model.restore(kept) and model.cached_tokens == cached


def test_a_request_starting_as_a_running_one_does_reads_only_what_differs(model: LlamaChatModel) -> None:
    system = "You are a careful assistant for a library. " * 12  # the instructions every request sends
    prompts = [ask(model, "Which book should I read?", system), ask(model, "How late are you open?", system)]
    # One after the other, the second reuses the instructions the first left in its sequence.
    expected = [alone(model, prompts[0]), "".join(model.stream(prompts[1], GREEDY, alongside=True))]
    forget_all(model)
    running = model.stream(prompts[0], GREEDY, alongside=True)
    text = next(running)
    stats = ReplyStats()
    joining = model.stream(prompts[1], GREEDY, None, stats, alongside=True)
    texts = side_by_side([running, joining], [0, 0])
    assert [text + texts[0], texts[1]] == expected
    shared = next(i for i, (a, b) in enumerate(zip(*prompts, strict=False)) if a != b)
    assert shared > 100 and stats.cached_tokens == shared  # the instructions were copied, not read again


def test_stopping_a_long_prompt_being_read_leaves_the_reply_beside_it_whole(model: LlamaChatModel) -> None:
    prompt = ask(model, QUESTIONS[0])
    expected = alone(model, prompt)
    forget_all(model)
    writing = model.stream(prompt, GREEDY, alongside=True)
    text = next(writing)
    stop = threading.Event()
    stats = ReplyStats()
    reading = model.stream(ask(model, "word " * 900), GREEDY, stop, stats, alongside=True)
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    pieces = list(reading)  # its first chunk shares a step with the writing reply, then it is stopped
    timer.join()
    assert pieces == [] and stats.finish_reason == "stopped"
    assert text + "".join(writing) == expected


def test_replies_continuing_cached_prompts_read_as_they_do_alone(model: LlamaChatModel) -> None:
    """Two prompts of different lengths joining at once, each after a prefix its sequence holds."""
    prompts = [ask(model, "Tell me about the number 0."), ask(model, "Describe the number 1.")]
    expected = [alone(model, p) for p in prompts]
    forget_all(model)
    side_by_side([model.stream(ask(model, "Hello."), GREEDY, alongside=True) for _ in range(2)], [0, 0])
    stats = [ReplyStats(), ReplyStats()]
    together = side_by_side([model.stream(p, GREEDY, None, s, alongside=True) for p, s in zip(prompts, stats,
                                                                                                strict=True)], [0, 0])
    assert all(s.cached_tokens > 0 for s in stats)  # the chat template's start, kept from the greetings
    assert together == expected
