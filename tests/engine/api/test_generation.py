"""The local API on the real default model (llama.cpp), through the official `openai` client:
chat and text completions, streaming, stops, JSON output, embeddings, and parallel requests."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.events import Usage
from engine.session import open_session
from engine.settings import Settings
from tests.engine.api.serving import Served
from tests.helpers.models import DefaultModels

# As `cleo serve` runs: the API on, with sequences of its own for four requests at once.
SETTINGS = Settings(threads=1, context_size=2048, api_enabled=True, api_parallel=4)
GREEDY: dict[str, Any] = {"model": "cleo", "temperature": 0}
ASK = [{"role": "user", "content": "Name three colours of the rainbow."}]
# The openai client, typed loosely: its typed overloads take no `**GREEDY` and no plain dict messages.
Client = Any


@pytest.fixture(scope="module")
def served(default_models: DefaultModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("api-home")
    default_models.copy_home_to(home)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLEO_HOME", str(home))
        with Served(lambda: open_session(SETTINGS, model_path=default_models.chat), SETTINGS) as running:
            yield running


@pytest.fixture
def client(served: Served) -> Client:
    return served.openai()


def test_chat_streams_the_same_reply_it_gives_whole_with_usage_last(client: Client) -> None:
    whole = client.chat.completions.create(messages=ASK, max_tokens=24, **GREEDY)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 24

    chunks = list(client.chat.completions.create(messages=ASK, max_tokens=24, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    finished = [n for n, c in enumerate(chunks) if c.choices and c.choices[0].finish_reason]
    assert finished == [len(chunks) - 2]  # the finish reason once, after all the text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert len({c.id for c in chunks}) == 1


def test_text_completion_whole_and_streamed(client: Client) -> None:
    whole = client.completions.create(prompt="The capital of France is", max_tokens=8, **GREEDY)
    assert whole.choices[0].text.strip()
    assert whole.usage is not None and whole.usage.prompt_tokens > 0
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        prompt="The capital of France is", max_tokens=8, stream=True, **GREEDY) if c.choices)
    assert streamed == whole.choices[0].text


def test_a_stop_string_cuts_the_reply_even_across_pieces(client: Client) -> None:
    free = client.completions.create(prompt="Count: 1, 2, 3,", max_tokens=24, **GREEDY).choices[0].text
    middle = len(free) // 2
    stop = free[middle - 2: middle + 2]  # most likely spans two tokens
    assert stop.strip()
    expected = free[:free.find(stop)]
    cut = client.completions.create(prompt="Count: 1, 2, 3,", max_tokens=24, stop=[stop], **GREEDY)
    assert cut.choices[0].text == expected
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        prompt="Count: 1, 2, 3,", max_tokens=24, stop=stop, stream=True, **GREEDY) if c.choices)
    assert streamed == expected


def test_the_same_seed_gives_the_same_sampled_reply(client: Client) -> None:
    replies = {client.chat.completions.create(model="cleo", messages=ASK, max_tokens=16, temperature=1.0, seed=7
                                              ).choices[0].message.content for _ in range(2)}
    assert len(replies) == 1


def test_frequency_penalty_makes_repeating_less_likely(client: Client) -> None:
    def apples(**penalty: float) -> int:
        return client.completions.create(prompt="The list: apple, apple, apple, apple,", max_tokens=24, **penalty,
                                         **GREEDY).choices[0].text.count("apple")
    assert apples(frequency_penalty=2.0) < apples() / 2
    assert apples(presence_penalty=2.0) < apples()


SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["city", "country", "population"],
    "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30},
                   "population": {"type": "integer"}}}


def test_json_schema_output_parses_and_matches(client: Client) -> None:
    reply = client.chat.completions.create(
        messages=[{"role": "user", "content": "Describe Paris as JSON."}], max_tokens=96,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}, **GREEDY)
    value = json.loads(reply.choices[0].message.content or "")
    assert set(value) == set(SCHEMA["required"])
    assert isinstance(value["city"], str) and len(value["city"]) <= 30
    assert isinstance(value["country"], str) and len(value["country"]) <= 30
    assert isinstance(value["population"], int)

    anything = client.chat.completions.create(messages=[{"role": "user", "content": "Reply in JSON."}],
                                              max_tokens=64, response_format={"type": "json_object"}, **GREEDY)
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(anything.choices[0].message.content or ""), dict)


def test_embeddings_put_related_sentences_closer(client: Client) -> None:
    texts = ["The cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."]
    result = client.embeddings.create(model="cleo", input=texts)
    vectors = np.array([item.embedding for item in result.data])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.1
    assert result.usage.prompt_tokens > 0

    one = client.embeddings.create(model="cleo", input=texts[0], encoding_format="base64")
    raw = one.data[0].embedding
    decoded = np.frombuffer(base64.b64decode(raw), dtype="<f4") if isinstance(raw, str) else np.array(raw)
    assert np.allclose(decoded, vectors[0], atol=1e-4)


def test_eight_parallel_requests_each_get_what_they_get_alone_written_side_by_side(client: Client) -> None:
    # Each begins with a word of its own, so a request reuses no more of a sequence's cache than the
    # chat template's start, whichever sequence it gets: alone and together read the same tokens of
    # their prompts (llama.cpp's rounding, and so a greedy reply, depends on how a prompt is cut).
    questions = ["Tell me about the number 0.", "Describe the number 1.", "Explain the number 2.",
                 "Write about the number 3.", "Say something about the number 4.", "Give a fact about the number 5.",
                 "What is special about the number 6?", "Why do people like the number 7?"]
    warm_up = ["Hello.", "Good morning.", "Hi there.", "Greetings!"] * 2  # words none of them begins with

    def ask(question: str, start: threading.Barrier | None = None) -> tuple[str, float, float]:
        """The streamed reply, when its first piece came and when it ended."""
        if start is not None:
            start.wait()
        pieces, first = [], 0.0
        for chunk in client.chat.completions.create(messages=[{"role": "user", "content": question}],
                                                    max_tokens=32, stream=True, **GREEDY):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.monotonic()
                pieces.append(chunk.choices[0].delta.content)
        return "".join(pieces), first, time.monotonic()
    def all_at_once(asked: list[str]) -> list[tuple[str, float, float]]:
        start = threading.Barrier(8)
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda q: ask(q, start), asked))
    all_at_once(warm_up)  # every sequence now holds a chat that starts as these do
    alone = [ask(q)[0] for q in questions]
    together = all_at_once(questions)
    assert [text for text, _, _ in together] == alone
    assert all(alone)
    # Four sequences: at some moment four replies were being written at once, not one after another.
    most = max(sum(first <= moment < end for _, first, end in together) for _, moment, _ in together)
    assert most >= 4, together


def chat_turn(served: Served, chat: str, text: str) -> tuple[str, Usage]:
    """A turn in the window's chat (a new one when `chat` is ""), as the window sends it; its usage."""
    ticket = served.on_session_thread(lambda session: session.send(chat, text, show=True))
    events = list(ticket.events(timeout=300))
    return ticket.conversation_id, next(e for e in events if isinstance(e, Usage))


def test_a_request_between_two_turns_of_the_open_chat_leaves_the_chat_its_cache(
        default_models: DefaultModels, cleo_home: Path) -> None:
    """The window's chat and the API share one model: a request must not make the chat read its whole
    prompt again on its next turn."""
    default_models.copy_home_to(cleo_home)
    settings = Settings(threads=1, context_size=2048, temperature=0.0, max_tokens=24)
    with Served(lambda: open_session(settings, model_path=default_models.chat), settings) as served:
        assert served.session is not None

        chat, _ = chat_turn(served, "", "What is the capital of France?")
        served.openai().chat.completions.create(messages=[{"role": "user", "content": "Write a line about the sea."}],
                                                max_tokens=8, **GREEDY)
        _, usage = chat_turn(served, chat, "And of Italy?")
        assert usage.prompt_tokens - usage.cached_tokens < 20, usage  # only the new message is read


def test_the_chat_is_written_beside_a_long_request_and_keeps_its_cache(
        default_models: DefaultModels, cleo_home: Path) -> None:
    """With the API on, the window's chat does not wait for a request to end, and neither the request
    nor the chat's turn makes the chat read its whole prompt again."""
    default_models.copy_home_to(cleo_home)
    settings = Settings(threads=1, context_size=2048, temperature=0.0, max_tokens=24, api_enabled=True,
                        api_parallel=2)
    with Served(lambda: open_session(settings, model_path=default_models.chat), settings) as served:
        assert served.session is not None

        chat, _ = chat_turn(served, "", "What is the capital of France?")
        stream = served.openai().chat.completions.create(
            messages=[{"role": "user", "content": "Write a long story about the sea."}], max_tokens=400,
            stream=True, stream_options={"include_usage": True}, **GREEDY)
        chunks = iter(stream)
        next(chunks)  # the request is being written
        _, usage = chat_turn(served, chat, "And of Italy?")
        assert served.session.turns.busy("api")  # the chat's reply ended while the request is being written
        rest = list(chunks)
        assert rest[-1].usage is not None and rest[-1].usage.completion_tokens == 400
        assert sum(1 for c in rest if c.choices and c.choices[0].delta.content) > 100
        assert usage.prompt_tokens - usage.cached_tokens < 20, usage  # only the new message is read
