"""OpenAI-compatible /v1: models and chat completions (JSON and SSE).

This is the hot path. The chat route is a plain Starlette endpoint: the body is parsed with
orjson and checked by hand (no model per request), and responses are serialized once.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.errors import KNOWN, json_response, openai_error, openai_error_body, sse_error_payload
from gateway.openai_messages import (
    BadRequest,
    answer_message,
    check_tools,
    parse_messages,
    request_object,
    tool_call_deltas,
)
from providers.base import ChatChunk
from runtime.chat import ChatInput, ChatResult, ChatStream
from runtime.core import Runtime
from runtime.errors import OwnedElsewhere
from store.models import NAME_RE

if TYPE_CHECKING:
    from gateway.forward import Forwarder

log = logging.getLogger("aiem.openai")

# Completion ids: a random per-process prefix and a counter (no random draw per request).
_ID_PREFIX = "chatcmpl-" + uuid.uuid4().hex[:12]
_id_counter = itertools.count(1)


def next_completion_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):x}"


router = APIRouter(prefix="/v1", tags=["openai"])

# Chat Completions fields beyond model / messages / temperature / max tokens / stream: each is
# handed to the provider in ChatRequest.extra, and refused with 400 by a provider that lacks it.
OPENAI_PARAMS = frozenset(
    {
        "top_p", "stop", "seed", "response_format", "presence_penalty", "frequency_penalty",
        "logit_bias", "user", "reasoning_effort", "n", "logprobs", "top_logprobs", "metadata",
        "store", "service_tier", "parallel_tool_calls", "tools", "tool_choice", "functions",
        "function_call", "prediction", "modalities", "audio", "web_search_options",
        "verbosity", "safety_identifier", "prompt_cache_key",
    }
)  # fmt: skip
# Headers of the streams the framework serves (/v1/responses, /v1/completions).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_HEADER_LIST = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def bad_request(exc: BadRequest) -> Response:
    body = openai_error_body(exc.message, "invalid_request_error")
    body["error"]["param"] = exc.param
    return json_response(400, body)


@router.get("/models")
async def list_models(request: Request) -> Any:
    rt: Runtime = request.app.state.runtime
    return {"object": "list", "data": rt.models()}


@router.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Any:
    rt: Runtime = request.app.state.runtime
    return rt.model(model_id)


def _number(body: dict[str, Any], name: str, kind: type, low: float, high: float) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise BadRequest(f"{name} must be a number", name)
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low:g} and {high:g}", name)
    return value


def parse_body(raw: bytes, session_header: str | None) -> tuple[str, ChatInput, bool, bool]:
    body = request_object(raw)
    model: str = body["model"]
    session_id = session_header or body.get("user_session_id")
    if session_id is not None and not (isinstance(session_id, str) and NAME_RE.match(session_id)):
        raise BadRequest("X-Session-Id must be 1-100 letters, digits, '_', '.', ':' or '-'")
    max_tokens = _number(body, "max_completion_tokens", int, 1, 1_000_000)
    features: dict[str, str] = {}
    inp = ChatInput(
        messages=parse_messages(body.get("messages"), features),
        temperature=_number(body, "temperature", float, 0, 2),
        max_tokens=max_tokens or _number(body, "max_tokens", int, 1, 1_000_000),
        session_id=session_id,
        extra=extra_params(body),
        features=features or None,
    )
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return model, inp, stream, include_usage


def extra_params(body: dict[str, Any]) -> dict[str, Any]:
    extra = {k: v for k, v in body.items() if v is not None and k in OPENAI_PARAMS}
    if extra:
        check_extra(extra)
    return extra


def check_extra(extra: dict[str, Any]) -> None:
    """Shape checks the OpenAI API makes too; drops the values that ask for the default."""
    if extra.get("n") == 1:  # one choice is what every endpoint gives
        del extra["n"]
    elif "n" in extra:
        _number(extra, "n", int, 1, 128)
    if extra.get("logprobs") is False:
        del extra["logprobs"]
    if extra.get("store") is False:  # not storing is what every upstream call here does
        del extra["store"]
    if "top_logprobs" in extra:
        _number(extra, "top_logprobs", int, 0, 20)
    response_format = extra.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind == "text":  # plain text is every endpoint's answer already
            del extra["response_format"]
        elif kind not in ("json_object", "json_schema"):
            raise BadRequest(
                "response_format.type must be text, json_object or json_schema", "response_format"
            )
        elif kind == "json_schema" and not isinstance(response_format.get("json_schema"), dict):
            raise BadRequest("json_schema response_format needs a json_schema object",
                             "response_format.json_schema")  # fmt: skip
    if "tools" in extra:
        check_tools(extra["tools"])


def completion_body(
    result: ChatResult, completion_id: str, created: int, model: str
) -> dict[str, Any]:
    usage = result.usage
    choice: dict[str, Any] = {
        "index": 0,
        "message": answer_message(result.content, result.tool_calls, result.reasoning),
        "finish_reason": result.finish_reason,
    }
    choices = [choice]
    if result.logprobs is not None:
        choice["logprobs"] = result.logprobs
    for index, more in enumerate(result.more_choices or (), 1):
        choices.append(
            {
                "index": index,
                "message": answer_message(more.content, more.tool_calls),
                "finish_reason": more.finish_reason,
                "logprobs": more.logprobs,
            }
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "endpoint": result.endpoint.name,
        "choices": choices,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
        "system_fingerprint": None,
        **_web_chat_flags(result),
    }


def _web_chat_flags(result: ChatResult) -> dict[str, Any]:
    # Beside OpenAI's fields (clients ignore what they do not know): earlier turns of a web chat
    # session were typed again into a new conversation because the stored one was gone.
    return {"transcript_replayed": True} if result.transcript_replayed else {}


class ChatCompletionsApp:
    """POST /v1/chat/completions as a bare ASGI app: the route's one and only handler.

    The guard hands this route straight here, past the framework's middleware and routing:
    on the hot path every microsecond per request counts.
    """

    def __init__(self, runtime: Runtime, forwarder: Forwarder | None = None) -> None:
        self.runtime = runtime
        self.forwarder = forwarder

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            body = await read_body(receive)
            try:
                response = await handle_chat(self.runtime, body, session_header(scope))
            except OwnedElsewhere as owner:  # a browser endpoint another instance runs
                response = await self._forward(owner, scope, body)
        except Exception:  # noqa: BLE001 - the framework's 500 handler is bypassed here
            log.exception("chat completion failed")
            response = json_response(500, openai_error_body("internal error", "api_error"))
        await response(scope, receive, send)

    async def _forward(self, owner: OwnedElsewhere, scope: Any, body: bytes) -> Any:
        if self.forwarder is None:
            return openai_error(owner)
        return await self.forwarder.respond(owner, scope, body, openai=True)


async def read_body(receive: Any) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    while message.get("more_body"):
        message = await receive()
        body += message.get("body", b"")
    return body


def session_header(scope: Any) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-session-id":
            return str(value.decode("latin-1"))
    return None


async def handle_chat(rt: Runtime, raw_body: bytes, session_id: str | None) -> Any:
    """The ASGI response to one chat completion request."""
    try:
        model, inp, stream, include_usage = parse_body(raw_body, session_id)
    except BadRequest as exc:
        return bad_request(exc)
    try:
        candidates = await rt.route(model)
        if not stream:
            result = await rt.chat(candidates, inp)
            body = completion_body(result, next_completion_id(), int(time.time()), model)
            headers = {"X-Aiem-Endpoint": result.endpoint.name}
            if inp.session_id:
                headers["X-Session-Id"] = inp.session_id
            return Response(orjson.dumps(body), headers=headers, media_type="application/json")
        chat_stream = await rt.open_stream(candidates, inp)
    except OwnedElsewhere:
        raise  # the caller forwards it to the instance that runs the endpoint
    except KNOWN as exc:
        return openai_error(exc)
    return EventStream(chat_stream, model, include_usage)


def _chunk(base: bytes, delta: dict[str, Any], finish: str | None) -> bytes:
    choice = orjson.dumps([{"index": 0, "delta": delta, "finish_reason": finish}])
    return b"data: {" + base + b',"choices":' + choice + b"}\n\n"


def _rich_chunk(base: bytes, chunk: ChatChunk) -> bytes:
    """A chunk with tool-call pieces, logprobs or of a further choice (rare: kept apart)."""
    delta: dict[str, Any] = {}
    if chunk.delta:
        delta["content"] = chunk.delta
    if chunk.reasoning:
        delta["reasoning_content"] = chunk.reasoning
    if chunk.tool_calls:
        delta["tool_calls"] = tool_call_deltas(chunk.tool_calls)
    choice: dict[str, Any] = {"index": chunk.index, "delta": delta, "finish_reason": None}
    if chunk.index:
        choice["finish_reason"] = chunk.finish_reason
    if chunk.logprobs is not None:
        choice["logprobs"] = chunk.logprobs
    return b"data: {" + base + b',"choices":' + orjson.dumps([choice]) + b"}\n\n"


def _finish_chunk(base: bytes, result: ChatResult) -> bytes:
    flags = _web_chat_flags(result)
    sent = result.streamed_content
    if sent is not None and not result.content.startswith(sent):
        flags["content"] = result.content  # rewritten, not extended: the whole final text
    if not flags:
        return _chunk(base, {}, result.finish_reason)
    choice = orjson.dumps([{"index": 0, "delta": {}, "finish_reason": result.finish_reason}])
    extra = orjson.dumps(flags)[1:-1]
    return b"data: {" + base + b',"choices":' + choice + b"," + extra + b"}\n\n"


def _content_event(base: bytes, chunk: ChatChunk) -> bytes:
    if chunk.tool_calls or chunk.index or chunk.logprobs is not None:
        return _rich_chunk(base, chunk)
    if chunk.reasoning:
        return _chunk(base, {"content": chunk.delta, "reasoning_content": chunk.reasoning}, None)
    # The common case spelled out: one string to encode per chunk, nothing else built.
    return (
        b"data: {"
        + base
        + b',"choices":[{"index":0,"delta":{"content":'
        + orjson.dumps(chunk.delta)
        + b'},"finish_reason":null}]}\n\n'
    )


class EventStream:
    """A streamed completion as a bare ASGI response (no framework response, no extra task).

    The status line waits for the first chunk: until then the runtime may still fall back to
    another endpoint, and the headers can name the one that answers (or, when all fail, the
    answer is a plain JSON error). A failure after that ends the stream with an error event.
    A client that goes away is noticed at the next send, and the upstream stream is closed.
    """

    __slots__ = ("stream", "model", "include_usage")

    def __init__(self, stream: ChatStream, model: str, include_usage: bool) -> None:
        self.stream = stream
        self.model = model
        self.include_usage = include_usage

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        chunks = self.stream.chunks()
        try:
            await self._respond(chunks, scope, receive, send)
        finally:
            await chunks.aclose()
            self.stream.release()

    async def _respond(
        self, chunks: AsyncGenerator[ChatChunk, None], scope: Any, receive: Any, send: Any
    ) -> None:
        try:
            first = await anext(chunks, None)
        except KNOWN as exc:
            await openai_error(exc)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": self._headers()})
        base = b'"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s' % (
            next_completion_id().encode(),
            int(time.time()),
            orjson.dumps(self.model),
        )
        opening = _chunk(base, {"role": "assistant", "content": ""}, None)
        if first is not None:
            opening += _content_event(base, first)
        client = _Client(send)
        if not await client.send(opening):
            return
        if first is not None:
            try:
                async for chunk in chunks:
                    if not await client.send(_content_event(base, chunk)):
                        return
            except KNOWN as exc:
                # Mid-stream failure: an explicit error event, never a silent truncation.
                await client.send(b"data: " + orjson.dumps(sse_error_payload(exc)) + b"\n\n", True)
                return
            except Exception:  # noqa: BLE001 - a bug must not truncate the stream silently
                log.exception("chat completion stream failed")
                error = openai_error_body("internal error", "api_error")
                error["error"]["status"] = 500
                await client.send(b"data: " + orjson.dumps(error) + b"\n\n", True)
                return
        await client.send(self._tail(base), True)

    def _headers(self) -> list[tuple[bytes, bytes]]:
        headers = [*SSE_HEADER_LIST, (b"x-aiem-endpoint", self.stream.live.name.encode())]
        if self.stream.inp.session_id:
            headers.append((b"x-session-id", self.stream.inp.session_id.encode()))
        return headers

    def _tail(self, base: bytes) -> bytes:
        result = self.stream.result
        assert result is not None
        tail = self._correction(base, result)
        tail += _finish_chunk(base, result)
        if self.include_usage:
            usage = {
                "prompt_tokens": result.usage.prompt_tokens,
                "completion_tokens": result.usage.completion_tokens,
                "total_tokens": result.usage.total_tokens,
            }
            tail += b"data: {" + base + b',"choices":[],"usage":' + orjson.dumps(usage) + b"}\n\n"
        return tail + b"data: [DONE]\n\n"

    @staticmethod
    def _correction(base: bytes, result: ChatResult) -> bytes:
        """When the final text is not what the deltas added up to (a page that rewrote its
        answer as it finished): the rest as one more delta when the deltas were its start, so
        a client that joins deltas holds the final text; else nothing here, and the finish
        chunk carries the whole final text as ``content``."""
        sent = result.streamed_content
        if sent is None or not result.content.startswith(sent):
            return b""
        return _chunk(base, {"content": result.content[len(sent) :]}, None)


class _Client:
    """The sending side of one response, and whether the client is still there.

    ASGI servers before spec 2.4 (uvicorn) drop sends to a closed connection silently; the
    server's own per-request flag tells, where it has one, so no task has to wait on
    ``receive`` for the disconnect. Servers on 2.4 raise OSError instead.
    """

    __slots__ = ("_send", "_cycle")

    def __init__(self, send: Any) -> None:
        self._send = send
        inner = send
        while hasattr(inner, "__wrapped__"):  # middleware that wraps ``send`` says so
            inner = inner.__wrapped__
        cycle = getattr(inner, "__self__", None)
        self._cycle = cycle if hasattr(cycle, "disconnected") else None

    async def send(self, body: bytes, last: bool = False) -> bool:
        """Send ``body``; False when the client has gone away."""
        try:
            await self._send({"type": "http.response.body", "body": body, "more_body": not last})
        except OSError:
            return False
        return self._cycle is None or not self._cycle.disconnected
