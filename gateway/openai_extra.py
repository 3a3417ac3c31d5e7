"""POST /v1/embeddings and POST /v1/completions (legacy text completions).

Both are passed through to endpoints whose provider declares them (openai_api); any other
endpoint type gets a 400 naming the endpoint type. The upstream's answer comes back as it
was, with ``model`` set to the requested model (the endpoint's or group's name) like every
other /v1 answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from gateway.errors import KNOWN, json_response, sse_error_payload
from gateway.openai_compat import SSE_HEADERS, bad_request
from gateway.openai_messages import BadRequest, request_object
from runtime.core import Runtime

router = APIRouter(prefix="/v1", tags=["openai"])


def _body(raw: bytes, required: str) -> dict[str, Any]:
    body = request_object(raw)
    value = body.get(required)
    if value is None or value == "" or value == []:
        raise BadRequest(f"{required} is required", required)
    return body


@router.post("/embeddings")
async def embeddings(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        body = _body(await request.body(), "input")
    except BadRequest as exc:
        return bad_request(exc)
    candidates = await rt.route(body["model"])
    data = await rt.embeddings(candidates, body)
    return json_response(200, {**data, "model": body["model"]})


@router.post("/completions")
async def completions(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        body = _body(await request.body(), "prompt")
    except BadRequest as exc:
        return bad_request(exc)
    candidates = await rt.route(body["model"])
    if not body.get("stream"):
        data = await rt.completions(candidates, body)
        return json_response(200, {**data, "model": body["model"]})
    stream = await rt.completions_stream(candidates, body)
    return StreamingResponse(_relay(stream), media_type="text/event-stream", headers=SSE_HEADERS)


async def _relay(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for piece in stream:
            yield piece
    except KNOWN as exc:
        # Mid-stream failure: an explicit error event, never a silent truncation.
        yield b"data: " + orjson.dumps(sse_error_payload(exc)) + b"\n\n"
