"""The routes: models, chat completions, text completions, embeddings, in OpenAI's shapes."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.api.bodies import ChatBody, CompletionBody, EmbeddingBody, ResponseFormat, Sampled, parse
from engine.api.errors import ApiError
from engine.api.replies import EventStream, Reply, TicketReader, chunks_with_errors, collect, new_id, sse
from engine.api.work import Outcome, TextRequest, embedding_work, text_work
from engine.chat.assistant import sampling_from
from engine.runtime.sampling import Sampling, json_grammar
from engine.settings import Settings

if TYPE_CHECKING:
    from engine.api.server import LocalApi

_SEED_MASK = 0x7FFFFFFF


def build_routes(api: LocalApi) -> Starlette:
    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": await api.models()})

    async def one_model(request: Request) -> Response:
        wanted = request.path_params["model_id"]
        for model in await api.models():
            if model["id"] == wanted:
                return JSONResponse(model)
        raise api.unknown_model(wanted)

    async def chat(request: Request) -> Response:
        body = parse(await request.body(), ChatBody)
        session, path, memory = await api.chat_model_for(body.model)
        settings = session.settings
        offered = body.tools if body.tools and body.tool_choice != "none" else None
        text_request = TextRequest(
            messages=[m.model_dump(exclude_none=True) for m in body.messages], prompt="", tools=_chosen(offered, body),
            sampling=_sampling(settings, body, _grammar(body.response_format)), max_tokens=body.token_limit(),
            stops=body.stops(), memory=memory, save_chat=settings.api_save_chats)
        return await _answer(api, request, body, text_request, path, chat=True)

    async def completions(request: Request) -> Response:
        body = parse(await request.body(), CompletionBody)
        session, path, _memory = await api.chat_model_for(body.model)
        text_request = TextRequest(messages=None, prompt=body.text(), tools=None,
                                   sampling=_sampling(session.settings, body, ""), max_tokens=body.max_tokens,
                                   stops=body.stops(), memory=False, save_chat=False)
        return await _answer(api, request, body, text_request, path, chat=False)

    async def embeddings(request: Request) -> Response:
        body = parse(await request.body(), EmbeddingBody)
        session, model_id = await api.embedder_for(body.model)
        texts = body.texts()
        if body.dimensions is not None and body.dimensions != api.EMBEDDING_DIMENSION:
            raise ApiError(400, f"Cleo's embeddings have {api.EMBEDDING_DIMENSION} dimensions.", param="dimensions")
        outcome = Outcome()
        ticket = api.submit(session, embedding_work(session, texts, outcome), None, generates=False)
        try:
            reply = await collect(TicketReader(ticket, session.settings.api_request_timeout_s), outcome,
                                  request.receive)
        finally:
            api.release()
        if len(outcome.vectors) != len(texts):
            raise ApiError(504 if reply.finish_reason == "length" else 503, "The embeddings were not finished.")
        data = [{"object": "embedding", "index": n, "embedding": _encoded(vector, body.encoding_format)}
                for n, vector in enumerate(outcome.vectors)]
        usage = {"prompt_tokens": outcome.input_tokens, "total_tokens": outcome.input_tokens}
        return JSONResponse({"object": "list", "data": data, "model": model_id, "usage": usage})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        message = "There is no such route in Cleo's local API." if status == 404 else str(exc.detail)
        return ApiError(status, message, code="not_found" if status == 404 else None).response(exc.headers)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", one_model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, ApiError: api_error})


async def _answer(api: LocalApi, request: Request, body: Sampled, text_request: TextRequest, path: Any, *,
                  chat: bool) -> Response:
    session = api.require_session()
    outcome = Outcome()
    ticket = api.submit(session, text_work(session, text_request, outcome), path)
    reader = TicketReader(ticket, session.settings.api_request_timeout_s)
    model_id = body.model
    try:
        await reader.accepted()
    except BaseException:
        api.release()
        raise
    if not body.stream:
        try:
            reply = await collect(reader, outcome, request.receive)
        finally:
            api.release()
        return JSONResponse(_whole(reply, model_id, chat))

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in _chunks(reader, outcome, model_id, chat, body.include_usage()):
                yield chunk
        finally:
            api.release()
    return EventStream(lambda: chunks_with_errors(chunks()), ticket)


def _whole(reply: Reply, model_id: str, chat: bool) -> dict[str, Any]:
    if chat:
        content = reply.text if reply.text or not reply.calls else None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reply.calls:
            message["tool_calls"] = [call.openai() for call in reply.calls]
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None,
                                  "finish_reason": reply.finish_reason}
    else:
        choice = {"index": 0, "text": reply.text, "logprobs": None, "finish_reason": reply.finish_reason}
    return {"id": new_id("chatcmpl" if chat else "cmpl"), "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model_id, "choices": [choice], "usage": reply.openai_usage()}


async def _chunks(reader: TicketReader, outcome: Outcome, model_id: str, chat: bool,
                  include_usage: bool) -> AsyncIterator[bytes]:
    """The reply as OpenAI's stream: (chat: the role first,) the text as it comes, the finish reason,
    then (if asked) the usage in a chunk of its own; `[DONE]` is added by the caller."""
    head = {"id": new_id("chatcmpl" if chat else "cmpl"), "object": "chat.completion.chunk" if chat else
            "text_completion", "created": int(time.time()), "model": model_id}
    extra = {"usage": None} if include_usage else {}

    def chunk(text: str | None = None, finish: str | None = None, **delta: Any) -> bytes:
        if chat:
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return sse({**head, "choices": [choice], **extra})

    reply = Reply()
    if chat:
        yield chunk(role="assistant", text="")
    holding = outcome.tool_style is not None  # calls are only known whole: the text is sent at the end
    while (event := await reader.next()) is not None:
        text = reply.take(event, reader.timed_out)
        if text and not holding:
            yield chunk(text)
    if holding:
        reply.split_calls(outcome)
        calls = [{"index": n, **call.openai()} for n, call in enumerate(reply.calls)]
        yield chunk(reply.text, tool_calls=calls) if calls else chunk(reply.text)
    yield chunk(finish=reply.finish_reason)
    if include_usage:
        yield sse({**head, "choices": [], "usage": reply.openai_usage()})


def _grammar(response_format: ResponseFormat | None) -> str:
    if response_format is None or response_format.type == "text":
        return ""
    schema = {"type": "object"} if response_format.json_schema is None else response_format.json_schema.schema_
    if response_format.type == "json_object":
        schema = {"type": "object"}
    try:
        return json_grammar(schema)
    except Exception as exc:  # the converter raises whatever it meets in a schema it cannot follow
        raise ApiError(400, f"Cleo cannot follow this JSON schema: {exc}.",
                       param="response_format.json_schema.schema", code="invalid_schema") from None


def _sampling(settings: Settings, body: Sampled, grammar: str) -> Sampling:
    """The client's choices; what it leaves out comes from Cleo's settings, except the repeat penalty,
    which OpenAI's clients do not know: they control repeating with `frequency/presence_penalty`."""
    base = sampling_from(settings)
    return replace(base, repeat_penalty=1.0,
                   temperature=base.temperature if body.temperature is None else body.temperature,
                   top_p=base.top_p if body.top_p is None else body.top_p,
                   seed=base.seed if body.seed is None or body.seed < 0 else body.seed & _SEED_MASK,
                   presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty, grammar=grammar)


def _chosen(tools: list[dict[str, Any]] | None, body: ChatBody) -> list[dict[str, Any]] | None:
    """The tools to offer: a named `tool_choice` narrows them to that one."""
    choice = body.tool_choice
    if not tools or not isinstance(choice, dict):
        return tools
    name = (choice.get("function") or {}).get("name")
    chosen = [t for t in tools if isinstance(t, dict) and (t.get("function") or {}).get("name") == name]
    if not chosen:
        raise ApiError(400, f"tool_choice names {name!r}, which is not among the tools.", param="tool_choice")
    return chosen


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector
