"""Request bodies, validated by pydantic: what each route accepts, and a 400 naming the field otherwise.

Fields OpenAI defines that Cleo cannot honour (more than one choice, log-probabilities, images)
are refused by name rather than ignored, so a client never gets less than it asked for without
knowing; fields that change nothing here (`user`, `store`, `metadata`) are accepted and ignored.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.api.errors import ApiError

_MAX_STOPS = 4  # as OpenAI allows
Body = TypeVar("Body", bound=BaseModel)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str = ""


class FunctionCall(_Lenient):
    name: str
    arguments: str = "{}"


class ToolCall(_Lenient):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, content: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        if isinstance(content, list) and any(part.type != "text" for part in content):
            raise ValueError("only text parts are supported: this model reads no images or audio")
        return content

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Lenient):
    include_usage: bool = False


class JsonSchemaFormat(_Lenient):
    name: str = "reply"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object with the schema")
        return self


class Sampled(_Lenient):
    """What chat and text completions share: the model, sampling, stops and streaming."""

    model: str = Field(min_length=1, max_length=4096)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    n: int = Field(1, ge=1, le=1, description="only one choice per request")
    logprobs: Any = None
    logit_bias: dict[str, float] | None = None

    @field_validator("logprobs", "logit_bias")
    @classmethod
    def _unavailable(cls, value: Any) -> Any:
        if value not in (None, False, 0, {}):
            raise ValueError("not available from Cleo's local API")
        return value

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > _MAX_STOPS or any(not s for s in stops):
            raise ValueError(f"stop takes up to {_MAX_STOPS} non-empty strings")
        return stop

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatBody(Sampled):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    top_logprobs: int | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionBody(Sampled):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int = Field(1, ge=1, le=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("one text per request here")
        return prompt

    @field_validator("echo", "suffix")
    @classmethod
    def _no_echo(cls, value: Any) -> Any:
        if value:
            raise ValueError("not available from Cleo's local API")
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class EmbeddingBody(_Lenient):
    model: str = Field(min_length=1, max_length=4096)
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def parse(raw: bytes, kind: type[Body]) -> Body:
    """`raw` as a `kind`, or a 400 that says what is wrong and names the field."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"] if not _is_type_tag(part))
        problem = error["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"Invalid '{field or 'body'}': {problem}.", param=field or None,
                       code="invalid_value") from None


def _is_type_tag(part: object) -> bool:
    # pydantic names the branch of a union it tried ("str", "list[ContentPart]"); clients know fields only.
    return isinstance(part, str) and (part in ("str", "int", "function-after") or "[" in part)
