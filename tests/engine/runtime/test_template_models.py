"""A model file with a hostile chat template, loaded as a user loads one: refused quickly; what ran before runs on."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from engine.chat.assistant import Assistant
from engine.chat.model import load_llama_model
from engine.errors import ChatTemplateInvalid
from engine.events import Done, Event, Failed, Token
from engine.profile import open_profile
from engine.runtime.chat_model import LlamaChatModel
from engine.session import Session
from engine.settings import Settings
from tests.helpers.bad_models import ENDLESS, HOSTILE_TEMPLATES, LOOPS_ON_LONGER_CHATS, with_chat_template
from tests.helpers.models import DefaultModels, write_tiny_gguf

GREEDY = Settings(temperature=0.0, max_tokens=24, threads=1, context_size=1024, ask_before_remembering=False)
QUESTION = "What is the capital of France?"
# Renders the four-message chat a model is tried with when it loads, and never ends on a longer one.
LOOPS_PAST_FOUR = ("{% set s = 'x' * 50000 %}{% if messages|length > 4 %}{% for a in s %}{% for b in s %}{% endfor %}"
                   "{% endfor %}{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                   "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _text(events: Iterable[Event]) -> tuple[str, list[Event]]:
    seen = list(events)
    return "".join(e.text for e in seen if isinstance(e, Token)), seen


@pytest.mark.parametrize("template", [ENDLESS, LOOPS_ON_LONGER_CHATS, HOSTILE_TEMPLATES["concatenation chain"],
                                      HOSTILE_TEMPLATES["lipsum"]], ids=["endless", "longer chats", "memory", "lipsum"])
def test_loading_a_model_with_a_hostile_template_fails_within_two_seconds_and_the_loaded_model_answers(
        moe_model: LlamaChatModel, tmp_path: Path, template: str) -> None:
    bomb = write_tiny_gguf(tmp_path / "bomb.gguf", chat_template=template)
    started = time.monotonic()
    with pytest.raises(ChatTemplateInvalid) as caught:
        LlamaChatModel(bomb, context_size=512, threads=1)
    assert time.monotonic() - started < 2.0
    assert f"The chat template in {bomb}" in caught.value.message
    moe_model.forget()
    assistant = Assistant(moe_model, GREEDY)
    assert "Paris" in _text(assistant.turn(assistant.new_conversation(), QUESTION))[0]


def test_use_model_refuses_a_template_bomb_quickly_and_keeps_the_current_model(
        default_models: DefaultModels, tmp_path: Path) -> None:
    model = load_llama_model(default_models.chat, GREEDY)
    session = Session(open_profile(embedder_path=Path("no-embedder.gguf")), model,
                      GREEDY.updated(chat_model=str(default_models.chat)), load_model=load_llama_model)
    try:
        bomb = write_tiny_gguf(tmp_path / "bomb.gguf", chat_template=LOOPS_ON_LONGER_CHATS)
        started = time.monotonic()
        with pytest.raises(ChatTemplateInvalid, match="did not finish"):
            session.use_model(str(bomb))
        assert time.monotonic() - started < 2.0
        assert session.model_state().path == str(default_models.chat)
        text, events = _text(session.run(session.send("", QUESTION)))
        assert "Paris" in text and isinstance(events[-1], Done)
    finally:
        session.close()


def test_a_template_that_loops_only_in_longer_chats_fails_that_turn_within_two_seconds_and_chatting_goes_on(
        default_models: DefaultModels, tmp_path: Path) -> None:
    model = LlamaChatModel(with_chat_template(default_models.chat, tmp_path / "late-bomb.gguf", LOOPS_PAST_FOUR),
                           context_size=1024, threads=1)  # its template behaved on the four-message sample
    assistant = Assistant(model, GREEDY)
    try:
        chat = assistant.new_conversation()
        assert "Paris" in _text(assistant.turn(chat, QUESTION))[0]  # two messages with the system prompt
        _text(assistant.turn(chat, "And of Italy?"))  # four
        started = time.monotonic()
        _, events = _text(assistant.turn(chat, "And of Spain?"))  # six: the template never ends
        assert time.monotonic() - started < 2.0
        failed = events[-1]
        assert isinstance(failed, Failed) and isinstance(failed.error, ChatTemplateInvalid)
        assert "late-bomb.gguf" in failed.error.message and "did not finish" in failed.error.message
        assert "Paris" in _text(assistant.turn(assistant.new_conversation(), QUESTION))[0]
    finally:
        model.close()
