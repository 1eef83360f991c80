"""Tools through the local API: offered to a model whose template takes them, its calls returned as
OpenAI `tool_calls` (whole and streamed), results sent back; refused for a model without tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from engine.profile import open_profile
from engine.session import Session
from engine.settings import Settings
from tests.engine.api.serving import Served
from tests.helpers.scripted_model import ScriptedChatModel

# What decides the style is the template's source: Hermes-style calls with JSON arguments.
HERMES = '{% if tools %}<tool_call>{"name": <name>, "arguments": <args>}</tool_call>{% endif %}'
CALL = '<tool_call> {"name": "get_weather", "arguments": {"city": "Paris"}} </tool_call>'
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def serve(model: ScriptedChatModel) -> Served:
    settings = Settings()
    return Served(lambda: Session(open_profile(embedder_path=Path("none.gguf")), model, settings), settings)


def test_calls_come_back_as_tool_calls_and_results_reach_the_model(cleo_home: Path) -> None:
    model = ScriptedChatModel([CALL, CALL, "It is sunny."], chat_template=HERMES)
    with serve(model) as served:
        client: Any = served.openai()  # typed loosely: it takes plain dicts here
        whole = client.chat.completions.create(model="cleo", messages=ASK, tools=TOOLS)
        choice = whole.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls is not None
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        assert "<tools> get_weather" in model.prompts[0]
        assert model.asked_for_control_tokens[0], "a call may be marked with control tokens: they must be shown"

        chunks = list(client.chat.completions.create(model="cleo", messages=ASK, tools=TOOLS,
                                                     stream=True))
        streamed = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
        assert [d.function.name for d in streamed] == ["get_weather"]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"

        answer = client.chat.completions.create(model="cleo", tools=TOOLS, messages=[
            *ASK, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"}])
        assert answer.choices[0].message.content == "It is sunny."
        assert answer.choices[0].finish_reason == "stop"
        assert "<call> get_weather" in model.prompts[-1] and "sunny, 24 C" in model.prompts[-1]

        client.chat.completions.create(model="cleo", messages=ASK)
        assert not model.asked_for_control_tokens[-1], "without tools, control tokens stay out of the text"


def test_tools_for_a_model_without_them_are_refused_by_name(cleo_home: Path) -> None:
    with serve(ScriptedChatModel()) as served:
        with pytest.raises(openai.BadRequestError) as refused:
            client: Any = served.openai()
            client.chat.completions.create(model="cleo", messages=ASK, tools=TOOLS)
        assert refused.value.body["param"] == "tools"  # type: ignore[index]
        with served.http() as client:  # a tool result answering no call is the client's mistake, named
            response = client.post("/v1/chat/completions", json={"model": "cleo", "messages": [
                *ASK, {"role": "tool", "content": "sunny"}]})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "messages[1].tool_call_id"
