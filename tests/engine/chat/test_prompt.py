"""Prompt order and the context policy, with the default model's real template and tokenizer."""

from __future__ import annotations

from engine.chat.conversation import Message
from engine.chat.prompt import build_prompt
from engine.runtime.chat_model import LlamaChatModel


def _history(n_turns: int) -> list[Message]:
    messages = []
    for i in range(n_turns):
        messages.append(Message(f"u{i}", "c", "user", f"Question {i}: tell me about topic {i}.", None, 0.0))
        messages.append(Message(f"a{i}", "c", "assistant", f"Answer {i}: topic {i} is interesting. " * 3, None, 0.0))
    return messages


def test_instructions_first_and_recalled_context_next_to_the_new_message(moe_model: LlamaChatModel) -> None:
    plan = build_prompt(moe_model, instructions="Be kind.\n\nThe user is Ada.", history=_history(2),
                        newest="What now?", context="Ada likes tea (remembered 3 May).", budget=900)
    text = moe_model.detokenize(plan.tokens)
    assert text.index("Be kind.") < text.index("The user is Ada.") < text.index("Question 0")
    assert text.index("Answer 1") < text.index("Ada likes tea") < text.index("What now?")
    assert plan.tokens == moe_model.chat_tokens(plan.messages) and not plan.evicted and not plan.notices


def test_new_turn_keeps_the_previous_prompt_as_its_prefix(moe_model: LlamaChatModel) -> None:
    history = _history(3)
    before = build_prompt(moe_model, instructions="Be kind.", history=history[:4], newest=history[4].content,
                          context="Recalled: something.", budget=900)
    after = build_prompt(moe_model, instructions="Be kind.", history=history, newest="Next?", budget=900)
    # Everything up to the previous user message is shared; recalled context never sits in front of it.
    shared = moe_model.chat_tokens(before.messages[:-1])[:-3]  # minus the trailing generation prompt
    assert after.tokens[: len(shared)] == shared


def test_overflow_drops_whole_old_turns_and_the_cut_stays_put(moe_model: LlamaChatModel) -> None:
    history = _history(12)
    plan = build_prompt(moe_model, instructions="Be kind.", history=history, newest="Next?", budget=400)
    assert len(plan.tokens) <= 400 * 0.75
    assert plan.evicted and plan.evicted[0].id == "u0" and plan.evicted[-1].role == "assistant"
    kept = plan.messages[1]
    assert plan.messages[0] == {"role": "system", "content": "Be kind."} and kept["role"] == "user"
    assert any(n.kind == "evicted" for n in plan.notices)
    # Next turn: the same start, nothing evicted again while it fits.
    evicted = {m.id for m in plan.evicted}
    later = build_prompt(moe_model, instructions="Be kind.", history=history, newest="And then?", budget=400,
                         evicted_before=evicted)
    assert later.messages[1] == kept and not later.evicted


def test_overlong_instructions_are_shortened_with_a_notice(moe_model: LlamaChatModel) -> None:
    instructions = "Always answer in French. " + "Remember this detail. " * 200
    plan = build_prompt(moe_model, instructions=instructions, history=[], newest="Hello!", budget=300)
    assert len(plan.tokens) <= 300
    assert plan.messages[0]["content"].startswith("Always answer in French.")
    assert plan.messages[-1]["content"] == "Hello!"
    assert any("instructions" in n.text for n in plan.notices)
