"""The assistant facade on the real default MoE: events, branches, context overflow, cache reuse."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest

from engine.chat.assistant import Assistant, NoMemory, TurnOptions
from engine.chat.conversation import Message
from engine.chat.model import load_llama_model
from engine.errors import InternalError, KnownError
from engine.events import Done, Event, Failed, Notice, Recollection, Started, Token, Usage
from engine.runtime.chat_model import LlamaChatModel
from engine.runtime.sampling import Sampling
from engine.settings import Settings
from tests.helpers.bad_models import bad_models
from tests.helpers.models import DefaultModels

GREEDY = Settings(temperature=0.0, max_tokens=32, kv_cache_budget_mb=256)


@pytest.fixture
def assistant(moe_model: LlamaChatModel) -> Iterator[Assistant]:
    moe_model.forget()
    yield Assistant(moe_model, GREEDY)


def _reply(events: Iterable[Event]) -> tuple[str, list[Event]]:
    seen = list(events)
    return "".join(e.text for e in seen if isinstance(e, Token)), seen


def _usage(events: list[Event]) -> Usage:
    return next(e for e in events if isinstance(e, Usage))


def test_a_turn_streams_events_in_order_and_stores_both_messages(assistant: Assistant) -> None:
    chat = assistant.new_conversation()
    text, events = _reply(assistant.turn(chat, "What is the capital of France?"))
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "Started" and kinds[-2:] == ["Usage", "Done"]
    assert set(kinds[1:-2]) == {"Token"} and len(kinds) > 5
    assert "Paris" in text
    started, done = events[0], events[-1]
    assert isinstance(started, Started) and isinstance(done, Done) and done.finish_reason == "stop"
    branch = assistant.store.branch(assistant.store.conversation(chat).current_leaf_id)
    assert [(m.role, m.content) for m in branch] == [("user", "What is the capital of France?"), ("assistant", text)]
    usage = _usage(events)
    assert usage.completion_tokens > 3 and usage.tokens_per_s > 0
    assert usage.context_used == usage.prompt_tokens + usage.completion_tokens and usage.context_size == 1024


def test_follow_up_reuses_the_cache(assistant: Assistant) -> None:
    chat = assistant.new_conversation()
    _reply(assistant.turn(chat, "What is the capital of France?"))
    text, events = _reply(assistant.turn(chat, "And of Italy?"))
    usage = _usage(events)
    assert usage.cached_tokens > 0 and usage.prompt_tokens - usage.cached_tokens < 20
    assert "Rome" in text


def test_switching_back_restores_the_conversations_cache(assistant: Assistant) -> None:
    first = assistant.new_conversation(system_prompt="You answer questions about geography.")
    other = assistant.new_conversation(system_prompt="You are a poet who writes about the sea.")
    _reply(assistant.turn(first, "What is the capital of France?"))
    _reply(assistant.turn(first, "And of Italy?"))
    _reply(assistant.turn(other, "Write one line about waves."))
    text, events = _reply(assistant.turn(first, "And of Spain?"))
    usage = _usage(events)
    # Without the snapshot only a few shared template tokens would be reused.
    assert usage.prompt_tokens - usage.cached_tokens < 20
    assert "Madrid" in text


def test_regenerate_keeps_the_old_reply_as_an_alternative(assistant: Assistant) -> None:
    chat = assistant.new_conversation()
    first, _ = _reply(assistant.turn(chat, "Name a colour.", TurnOptions(sampling=Sampling(seed=1, max_tokens=24))))
    old_leaf = assistant.store.conversation(chat).current_leaf_id
    assert old_leaf is not None
    second, events = _reply(assistant.regenerate(chat, options=TurnOptions(sampling=Sampling(seed=2, max_tokens=24))))
    new_leaf = assistant.store.conversation(chat).current_leaf_id
    assert new_leaf != old_leaf
    alternatives = assistant.store.alternatives(new_leaf or "")
    assert [m.id for m in alternatives] == [old_leaf, new_leaf]
    assert [m.content for m in alternatives] == [first, second]
    assert isinstance(events[0], Started) and events[0].user_message_id == alternatives[0].parent_id


def test_editing_a_message_starts_a_branch_and_keeps_the_old_one(assistant: Assistant) -> None:
    chat = assistant.new_conversation()
    _reply(assistant.turn(chat, "What is the capital of France?"))
    old_branch = assistant.store.branch(assistant.store.conversation(chat).current_leaf_id)
    text, _ = _reply(assistant.edit(chat, old_branch[0].id, "What is the capital of Italy?"))
    new_branch = assistant.store.branch(assistant.store.conversation(chat).current_leaf_id)
    assert new_branch[0].content == "What is the capital of Italy?" and "Rome" in text
    assert [m.id for m in assistant.store.alternatives(new_branch[0].id)] == [old_branch[0].id, new_branch[0].id]
    assert assistant.store.branch(old_branch[1].id) == old_branch  # the old branch is intact


class RecordingMemory(NoMemory):
    """Memory that pins one fact and records what was evicted: the assistant is the subject here."""

    def __init__(self) -> None:
        self.evicted: list[Message] = []

    def pinned_block(self, conversation_id: str) -> str:
        return "The user's name is Ada."

    def on_evict(self, conversation_id: str, messages: Sequence[Message]) -> None:
        self.evicted.extend(messages)


def test_overflow_keeps_the_instructions_and_hands_over_the_oldest_turns(
    default_models: DefaultModels,
) -> None:
    model = LlamaChatModel(default_models.chat, context_size=512, threads=1)
    memory = RecordingMemory()
    assistant = Assistant(model, GREEDY, memory=memory)
    chat = assistant.new_conversation(system_prompt="You are Cleo. Always be polite.")
    notices: list[Notice] = []
    try:
        for i in range(14):
            _, events = _reply(assistant.turn(chat, f"Here is fact number {i}: the sky has {i} clouds today."))
            assert not any(isinstance(e, Failed) for e in events)
            notices += [e for e in events if isinstance(e, Notice)]
            usage = _usage(events)
            assert usage.prompt_tokens <= 512 - 32
        assert memory.evicted and memory.evicted[0].content.startswith("Here is fact number 0")
        assert len({m.id for m in memory.evicted}) == len(memory.evicted)  # each turn handed over once
        assert any(n.kind == "evicted" for n in notices)
        rendered = model.detokenize(model.cached_tokens)
        assert "You are Cleo. Always be polite." in rendered and "The user's name is Ada." in rendered
        assert "fact number 0:" not in rendered and "fact number 13:" in rendered
    finally:
        model.close()


def test_a_message_bigger_than_the_context_is_cut_with_a_notice(assistant: Assistant) -> None:
    chat = assistant.new_conversation()
    huge = "Please summarise this. " + "The quick brown fox jumps over the lazy dog. " * 400
    _, events = _reply(assistant.turn(chat, huge))
    assert not any(isinstance(e, Failed) for e in events)
    truncated = [e for e in events if isinstance(e, Notice) and e.kind == "truncated"]
    assert truncated and "read only its first" in truncated[0].text
    assert _usage(events).prompt_tokens <= 1024 - 32
    assert isinstance(events[-1], Done)
    stored = assistant.store.branch(assistant.store.conversation(chat).current_leaf_id)[0]
    assert stored.content == huge  # the user's words are kept whole


def test_stop_from_another_thread_ends_the_reply_quickly(assistant: Assistant) -> None:
    chat = assistant.new_conversation()
    options = TurnOptions(sampling=Sampling(max_tokens=400, seed=5))
    tokens = 0
    asked = 0.0
    events = []
    for event in assistant.turn(chat, "Write a long story about a lighthouse keeper.", options):
        events.append(event)
        if isinstance(event, Token):
            tokens += 1
            if tokens == 3:
                threading.Thread(target=assistant.stop).start()
                asked = time.perf_counter()
    assert time.perf_counter() - asked < 0.1
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "stopped"
    reply = assistant.store.message(events[-1].message_id)
    assert reply.finish_reason == "stopped" and reply.content
    text, _ = _reply(assistant.turn(chat, "What is the capital of France?"))
    assert "Paris" in text


def test_empty_message_fails_clearly(assistant: Assistant) -> None:
    chat = assistant.new_conversation()
    events = list(assistant.turn(chat, "   "))
    assert len(events) == 1 and isinstance(events[0], Failed) and "empty" in events[0].error.message


def test_bad_model_files_are_refused_and_the_current_model_keeps_serving(
    default_models: DefaultModels, tmp_path: Path
) -> None:
    model = LlamaChatModel(default_models.chat, context_size=512, threads=1)
    assistant = Assistant(model, GREEDY)
    chat = assistant.new_conversation()
    try:
        files = bad_models(tmp_path)
        assert len(files) >= 30
        for case, path, words in files:
            with pytest.raises(KnownError) as caught:
                assistant.use_model(load_llama_model(path, GREEDY), GREEDY)
            assert path.name in caught.value.message, case
            assert words in caught.value.message, f"{case}: {caught.value.message}"
            assert assistant.model is model
        text, _ = _reply(assistant.turn(chat, "What is the capital of France?"))
        assert "Paris" in text
    finally:
        model.close()


class BrokenMemory(RecordingMemory):
    """Memory with a bug in it, to check the assistant contains it."""

    def context_for(self, conversation_id: str, user_text: str) -> Recollection:
        raise RuntimeError("bug in recall")


def test_a_bug_during_a_turn_is_logged_reported_and_survived(
    moe_model: LlamaChatModel, caplog: pytest.LogCaptureFixture
) -> None:
    moe_model.forget()
    assistant = Assistant(moe_model, GREEDY, memory=BrokenMemory())
    chat = assistant.new_conversation()
    events = list(assistant.turn(chat, "Hello"))
    assert isinstance(events[0], Started) and isinstance(events[-1], Failed)
    assert isinstance(events[-1].error, InternalError) and not isinstance(events[-1].error, KnownError)
    assert "log" in events[-1].error.user_text()
    assert any("bug in recall" in (r.exc_text or "") for r in caplog.records)
    assert assistant.store.message(events[0].reply_message_id).finish_reason == "error"
    assistant.memory = RecordingMemory()
    assert "Paris" in _reply(assistant.turn(chat, "What is the capital of France?"))[0]


def test_a_reply_abandoned_mid_stream_is_kept_as_stopped(assistant: Assistant) -> None:
    chat = assistant.new_conversation()
    events = assistant.turn(chat, "Write a long story about a lighthouse.",
                            TurnOptions(sampling=Sampling(max_tokens=200, seed=4)))
    started = next(events)
    assert isinstance(started, Started)
    pieces = [e.text for e in (next(events) for _ in range(6)) if isinstance(e, Token)]
    events.close()  # e.g. the window closed the chat
    reply = assistant.store.message(started.reply_message_id)
    assert reply.finish_reason == "stopped" and reply.content == "".join(pieces) and pieces
