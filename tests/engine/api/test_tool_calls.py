"""Tools through real models' chat templates, and the calls such models write read back as OpenAI `tool_calls`.

The templates are the real ones of the llama.cpp sources llama-cpp-python vendors (fetched at test
time, see `tests/helpers/vendored_templates.py`), rendered in Cleo's sandboxed render process.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.api.tool_calls import (
    MessageInvalid,
    ToolCall,
    ToolStyle,
    new_call_id,
    parse_tool_calls,
    template_messages,
    template_tools,
    tool_style,
)
from engine.api.work import generate
from engine.errors import ChatTemplateInvalid
from engine.events import Token
from engine.runtime.chat_model import LlamaChatModel, ReplyStats
from engine.runtime.chat_template import ChatTemplate
from engine.runtime.sampling import Sampling
from tests.helpers.vendored_templates import all_templates, template

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "Name of the city"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "local_time"}}  # no description, no parameters: both optional
QUESTION = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Is it raining in Oslo?"}]
RESULT = '{"sky": "drizzle", "celsius": 7}'
EXPECTED = {
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": ToolStyle.HERMES,
    "Qwen-Qwen2.5-7B-Instruct": ToolStyle.HERMES,
    "Qwen-Qwen3-0.6B": ToolStyle.HERMES,
    "mistralai-Mistral-Nemo-Instruct-2407": ToolStyle.MISTRAL,
    "Mistral-Small-3.2-24B-Instruct-2506": ToolStyle.MISTRAL,
    "meta-llama-Llama-3.1-8B-Instruct": ToolStyle.LLAMA3,
    "meta-llama-Llama-3.2-3B-Instruct": ToolStyle.LLAMA3,
    "meta-llama-Llama-3.3-70B-Instruct": ToolStyle.LLAMA3,
}


def _render(source: str, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None,
            add_generation_prompt: bool) -> str:
    chat = ChatTemplate(source, bos_token="<s>", eos_token="</s>", origin="model.gguf")
    return chat.render(template_messages(messages), add_generation_prompt=add_generation_prompt,
                       tools=template_tools(tools) if tools else None)


def _assistant_turn(source: str, call: ToolCall) -> str:
    """What the template writes after the question when the assistant answers it with `call`."""
    prompt = _render(source, [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [call.openai()]}],
                     tools=[WEATHER], add_generation_prompt=False)
    asked = QUESTION[-1]["content"]
    return prompt[prompt.rindex(asked) + len(asked):]


# --- which templates take tools -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tool_style_recognises_each_models_template(name: str) -> None:
    assert tool_style(template(name)) is EXPECTED[name]


def test_templates_that_never_mention_tools_and_the_default_models_take_none(moe_model: LlamaChatModel) -> None:
    without = {name: source for name, source in all_templates().items() if "tools" not in source}
    assert len(without) >= 3  # Phi-3.5, Gemma 2, the DeepSeek distills ...
    assert {name: tool_style(source) for name, source in without.items()} == dict.fromkeys(without)
    assert tool_style(moe_model.chat_template) is None


def test_every_template_given_a_style_renders_tools_calls_and_results_in_it() -> None:
    """Each vendored template Cleo says it can serve with tools: tools, a call and its result reach the
    prompt, and the call the template writes reads back as the same call."""
    styled = {name: (source, style) for name, source in all_templates().items() if (style := tool_style(source))}
    assert set(EXPECTED) <= set(styled)
    for name, (source, style) in styled.items():
        call = ToolCall(new_call_id(), "get_weather", json.dumps({"city": "Oslo"}))
        prompt = _render(source, [*QUESTION, {"role": "assistant", "content": "", "tool_calls": [call.openai()]},
                                  {"role": "tool", "tool_call_id": call.id, "content": RESULT},
                                  {"role": "assistant", "content": "Light drizzle, 7 °C."},
                                  {"role": "user", "content": "And what time is it there?"}],
                         tools=[WEATHER, TIME], add_generation_prompt=True)
        for seen in ("get_weather", "Current weather in a city", "Name of the city", "local_time", "drizzle",
                     "And what time is it there?"):
            assert seen in prompt, f"{name}: {seen!r} is not in the prompt"
        content, calls = parse_tool_calls(_assistant_turn(source, call), style)
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"})], name
        assert "get_weather" not in content, name
        assert calls[0].id != call.id and calls[0].id.startswith("call_")


def test_mistral_templates_get_ids_they_accept_and_a_result_is_matched_to_its_call() -> None:
    for name in ("mistralai-Mistral-Nemo-Instruct-2407", "Mistral-Small-3.2-24B-Instruct-2506"):
        calls = [{"id": "call_3f9a0c2e7b1d4e5fa6b7c8d9", "type": "function",  # an id the way OpenAI makes them
                  "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
        prompt = _render(template(name), [*QUESTION, {"role": "assistant", "content": None, "tool_calls": calls},
                                          {"role": "tool", "tool_call_id": calls[0]["id"], "content": RESULT}],
                         tools=[WEATHER], add_generation_prompt=True)
        shown = template_messages([{"role": "tool", "tool_call_id": calls[0]["id"], "content": ""}])[0]["tool_call_id"]
        assert prompt.count(shown) == 2, name  # the call's id and its result's


def test_a_template_stuck_on_the_tools_is_stopped_within_two_seconds() -> None:
    stuck = ("{% for t in tools %}{% for a in 'x' * 50000 %}{% for b in 'x' * 50000 %}{% endfor %}{% endfor %}"
             "{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}")
    started = time.monotonic()
    with pytest.raises(ChatTemplateInvalid, match="did not finish"):
        _render(stuck, QUESTION, tools=[WEATHER], add_generation_prompt=True)
    assert time.monotonic() - started < 2.0
    assert "Oslo" in _render(stuck, QUESTION, tools=None, add_generation_prompt=True)  # no tools, no loop


def test_the_loaded_model_renders_a_chat_with_tools(moe_model: LlamaChatModel) -> None:
    """The default model's template takes no tools; a tool conversation still renders, as text."""
    messages = template_messages([*QUESTION, {"role": "assistant", "content": "Let me look.", "tool_calls": [
        ToolCall(new_call_id(), "get_weather", '{"city": "Oslo"}').openai()]}])
    assert moe_model.render_chat(messages, tools=template_tools([WEATHER])) == moe_model.render_chat(messages)
    assert moe_model.chat_tokens(messages, tools=template_tools([WEATHER])) == moe_model.chat_tokens(messages)


def test_control_tokens_reach_the_reply_only_when_asked_and_end_of_generation_never(
        moe_model: LlamaChatModel) -> None:
    """A tool call starts with a control token (`[TOOL_CALLS]`, `<|python_tag|>`) that llama.cpp
    leaves out of text unless asked, as requests with tools do. The default model's template is
    ChatML, whose turns open with a control token: after a user's finished turn, the model opens the
    next one."""
    opener = "<|im_start|>"
    assert opener in moe_model.chat_template
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Thanks"}]
    prompt = moe_model.tokenize(ChatTemplate(moe_model.chat_template).render(chat))
    greedy = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=4)
    moe_model.forget()
    plain = "".join(moe_model.stream(prompt, greedy))
    moe_model.forget()
    shown = "".join(moe_model.stream(prompt, greedy, special=True))
    assert opener not in plain and shown == opener + plain
    moe_model.forget()
    served = generate(moe_model, prompt, greedy, [], threading.Event(), control_tokens=True)  # as the API asks
    assert "".join(e.text for e in served if isinstance(e, Token)) == shown

    # After the assistant's finished turn, the model ends: its end-of-generation token is not text.
    stats = ReplyStats()
    ended = moe_model.tokenize(ChatTemplate(moe_model.chat_template).render(chat[:2]))
    moe_model.forget()
    assert "".join(moe_model.stream(ended, greedy, stats=stats, special=True)) == ""
    assert stats.finish_reason == "stop"


# --- reading the calls a model writes --------------------------------------------------------------------


def _calls(text: str, style: ToolStyle) -> tuple[str, list[tuple[str, Any]]]:
    content, calls = parse_tool_calls(text, style)
    assert len({c.id for c in calls}) == len(calls) and all(c.id.startswith("call_") for c in calls)
    return content, [(c.name, json.loads(c.arguments)) for c in calls]


OSLO, BERGEN = ("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Bergen"})


@pytest.mark.parametrize(("style", "text", "content", "calls"), [
    (ToolStyle.HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', "", [OSLO]),
    (ToolStyle.HERMES, 'Checking both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
                       '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Bergen\\"}"}'
                       "\n</tool_call>", "Checking both.", [OSLO, BERGEN]),
    (ToolStyle.HERMES, '<tool_call>{"name": "local_time"}</tool_call> One moment.', "One moment.",
     [("local_time", {})]),
    (ToolStyle.HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}', "", [OSLO]),  # cut off
    (ToolStyle.HERMES, '\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n', "", [OSLO]),  # tags not shown
    (ToolStyle.MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "a1b2c3d4e"}, '
                        '{"name": "get_weather", "arguments": {"city": "Bergen"}}]', "", [OSLO, BERGEN]),
    (ToolStyle.MISTRAL, 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e'
                        '[ARGS]{"city": "Bergen"}', "Sure.", [OSLO, BERGEN]),
    (ToolStyle.MISTRAL, '[{"name": "get_weather", "arguments": {"city": "Oslo"}}]', "", [OSLO]),  # marker not shown
    (ToolStyle.LLAMA3, '{"name": "get_weather", "parameters": {"city": "Oslo"}}', "", [OSLO]),
    (ToolStyle.LLAMA3, '<|python_tag|>{"type": "function", "name": "get_weather", "parameters": {"city": "Oslo"}}; '
                       '{"name": "get_weather", "parameters": {"city": "Bergen"}}', "", [OSLO, BERGEN]),
    (ToolStyle.LLAMA3, 'I will check.\n{"name": "get_weather", "parameters": {"city": "Oslo"}}', "I will check.",
     [OSLO]),
])
def test_calls_in_each_format_become_openai_tool_calls(style: ToolStyle, text: str, content: str,
                                                       calls: list[tuple[str, Any]]) -> None:
    assert _calls(text, style) == (content, calls)


@pytest.mark.parametrize(("style", "text"), [
    (ToolStyle.HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"</tool_call>'),
    (ToolStyle.HERMES, '<tool_call>{"name": "get_weather", "arguments": [1, 2]}</tool_call>'),
    (ToolStyle.HERMES, '<tool_call>{"arguments": {"city": "Oslo"}}</tool_call>'),
    (ToolStyle.HERMES, '{"city": "Oslo", "sky": "clear"}'),  # a JSON answer is not a call
    (ToolStyle.MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}'),
    (ToolStyle.MISTRAL, '[TOOL_CALLS]get_weather[ARGS]{"city": NaN}'),
    (ToolStyle.MISTRAL, '[1, 2, 3]'),
    (ToolStyle.LLAMA3, '{"name": "get_weather", "parameters": {"city": "Oslo"'),
    (ToolStyle.LLAMA3, '<|python_tag|>weather.call(city="Oslo")'),
    (ToolStyle.LLAMA3, 'The JSON is {"name": "Ada", "age": 36}.'),
])
def test_malformed_calls_stay_in_the_content(style: ToolStyle, text: str) -> None:
    assert parse_tool_calls(text, style) == (text, [])


def test_a_malformed_call_stays_while_a_good_one_beside_it_is_read() -> None:
    bad = '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'
    content, calls = _calls(f'{bad}\n<tool_call>{{"name": "get_weather", "arguments": {{"city": "Oslo"}}}}</tool_call>',
                            ToolStyle.HERMES)
    assert (content, calls) == (bad, [OSLO])


def test_a_parsed_call_rendered_back_through_the_template_shows_the_call() -> None:
    for name, style in EXPECTED.items():
        _, calls = parse_tool_calls(_written(style, [OSLO]), style)
        turn = _assistant_turn(template(name), calls[0])
        assert "get_weather" in turn and '"Oslo"' in turn, name
        assert _calls(turn, style)[1] == [OSLO], name


def _written(style: ToolStyle, calls: list[tuple[str, Any]]) -> str:
    """`calls` as a model of `style` writes them."""
    if style is ToolStyle.HERMES:
        return "\n".join(f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls)
    if style is ToolStyle.MISTRAL:
        return "".join(f"[TOOL_CALLS]{n}[ARGS]{json.dumps(a)}" for n, a in calls)
    return "; ".join(json.dumps({"name": n, "parameters": a}) for n, a in calls)


LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=12)
CALLS = st.lists(st.tuples(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,30}", fullmatch=True),
                           st.dictionaries(st.text(), JSON, max_size=4)), min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(calls=CALLS, style=st.sampled_from(list(ToolStyle)), said=st.from_regex(r"[A-Za-z ,.!?']{0,40}", fullmatch=True))
def test_any_calls_a_model_writes_are_read_back_exactly(calls: list[tuple[str, Any]], style: ToolStyle,
                                                         said: str) -> None:
    text = f"{said}\n{_written(style, calls)}" if said.strip() else _written(style, calls)
    assert _calls(text, style) == (said.strip(), calls)


FRAGMENTS = st.sampled_from(["<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "<|python_tag|>",
                             '{"name": "f", "arguments": ', '{"name": "g", "parameters": ', '{"type": "function", ',
                             "{", "}", "[", "]", ",", ";", ":", '"', "\\", "NaN", "1e999", '"\\ud800"', "null", " ",
                             "\n", "[" * 50, '{"a":' * 40])
TEXTS = st.one_of(st.text(max_size=300), st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=40).map("".join))


@settings(max_examples=400, deadline=None)
@given(text=TEXTS, style=st.sampled_from(list(ToolStyle)))
def test_any_text_parses_without_error_into_calls_with_json_object_arguments(text: str, style: ToolStyle) -> None:
    content, calls = parse_tool_calls(text, style)
    assert isinstance(content, str)
    for call in calls:
        assert isinstance(json.loads(call.arguments), dict) and call.name
        call.arguments.encode("utf-8")  # sendable as it is
    if not calls:
        assert content == text


# --- messages and tools for a template ---------------------------------------------------------------------


def test_openai_messages_become_what_templates_read() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    converted = template_messages([
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}]},
        {"role": "user", "content": "Weather?", "name": "ada"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": RESULT}]},
        {"role": "assistant", "content": "Drizzle.", "tool_calls": []}])
    assert converted[0] == {"role": "system", "content": "Be brief.\nBe kind."}
    assert converted[2]["content"] == "" and converted[2]["tool_calls"][0]["function"] == {
        "name": "get_weather", "arguments": {"city": "Oslo"}}
    assert converted[3] == {"role": "tool", "content": RESULT, "name": "get_weather",
                            "tool_call_id": converted[2]["tool_calls"][0]["id"]}
    assert converted[4] == {"role": "assistant", "content": "Drizzle."}  # no `tool_calls` key: templates test for it


@pytest.mark.parametrize(("messages", "param"), [
    ([], "messages"),
    ([{"role": "robot", "content": "hi"}], "messages[0].role"),
    ([{"role": "user"}], "messages[0].content"),
    ([{"role": "user", "content": 5}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content[0].type"),
    ([{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
      "function": {"name": "f", "arguments": "[1]"}}]}], "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "f"}}]}],
     "messages[0].tool_calls[0].id"),
    ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}], "messages[1].tool_call_id"),
])
def test_bad_messages_are_refused_naming_the_field(messages: list[dict[str, Any]], param: str) -> None:
    with pytest.raises(MessageInvalid) as caught:
        template_messages(messages)
    assert caught.value.param == param and str(caught.value).startswith(param)


@pytest.mark.parametrize(("tools", "param"), [
    ({"type": "function"}, "tools"),
    ([{"type": "retrieval"}], "tools[0].type"),
    ([{"type": "function", "function": {"description": "no name"}}], "tools[0].function.name"),
    ([WEATHER, {"type": "function", "function": {"name": "f", "parameters": "none"}}], "tools[1].function.parameters"),
])
def test_bad_tools_are_refused_naming_the_field(tools: Any, param: str) -> None:
    with pytest.raises(MessageInvalid) as caught:
        template_tools(tools)
    assert caught.value.param == param
