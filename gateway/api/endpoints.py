"""/endpoints: CRUD, start/stop/restart, chat (JSON or SSE), health, metrics and events.

Every per-endpoint route takes the endpoint's id or its name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse

from gateway.api.deps import get_runtime
from gateway.api.schemas import ChatBody
from gateway.errors import KNOWN, error_body, json_response
from providers.base import Message
from runtime.chat import ChatInput, ChatStream
from runtime.core import Runtime
from store.models import EndpointCreate, EndpointUpdate

router = APIRouter(prefix="/endpoints", tags=["endpoints"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("", status_code=201)
async def create_endpoint(body: EndpointCreate, rt: Runtime = Depends(get_runtime)) -> Any:
    return await rt.create_endpoint(body)


@router.get("")
async def list_endpoints(
    state: str | None = None,
    endpoint_type: str | None = None,
    rt: Runtime = Depends(get_runtime),
) -> Any:
    return await rt.list_endpoints(state=state, endpoint_type=endpoint_type)


@router.get("/{endpoint_id}")
async def get_endpoint(endpoint_id: str, rt: Runtime = Depends(get_runtime)) -> Any:
    return await rt.get_endpoint(endpoint_id)


@router.patch("/{endpoint_id}")
async def update_endpoint(
    endpoint_id: str, body: EndpointUpdate, rt: Runtime = Depends(get_runtime)
) -> Any:
    return await rt.update_endpoint(endpoint_id, body)


@router.delete("/{endpoint_id}", status_code=204)
async def delete_endpoint(endpoint_id: str, rt: Runtime = Depends(get_runtime)) -> Response:
    await rt.delete_endpoint(endpoint_id)
    return Response(status_code=204)


@router.post("/{endpoint_id}/start")
async def start_endpoint(endpoint_id: str, rt: Runtime = Depends(get_runtime)) -> Any:
    return await rt.start_endpoint(endpoint_id)


@router.post("/{endpoint_id}/stop")
async def stop_endpoint(endpoint_id: str, rt: Runtime = Depends(get_runtime)) -> Any:
    return await rt.stop_endpoint(endpoint_id)


@router.post("/{endpoint_id}/restart")
async def restart_endpoint(endpoint_id: str, rt: Runtime = Depends(get_runtime)) -> Any:
    return await rt.restart_endpoint(endpoint_id)


@router.post("/{endpoint_id}/chat")
async def chat(endpoint_id: str, body: ChatBody, rt: Runtime = Depends(get_runtime)) -> Any:
    live = await rt.live_endpoint(endpoint_id)
    messages = [Message("user", body.prompt)]
    if body.system:
        messages.insert(0, Message("system", body.system))
    inp = ChatInput(
        messages=messages,
        temperature=body.temperature,
        max_tokens=body.max_tokens,
        session_id=body.session_id,
    )
    if not body.stream:
        result = await rt.chat(live, inp)
        return json_response(200, result.to_dict(), {"X-Aiem-Endpoint": result.endpoint.name})
    stream = await rt.open_stream(live, inp)
    return StreamingResponse(
        sse_events(stream),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, "X-Aiem-Endpoint": stream.live.name},
    )


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


async def sse_events(stream: ChatStream) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream.chunks():
            event: dict[str, Any] = {"delta": chunk.delta}
            if chunk.reasoning:
                event["reasoning"] = chunk.reasoning
            yield sse(event)
    except KNOWN as exc:
        # A failure after the first byte cannot change the status: end with an error event.
        yield sse(error_body(exc), event="error")
        return
    finally:
        stream.release()
    assert stream.result is not None
    yield sse({"done": True, **stream.result.to_dict()})


@router.get("/{endpoint_id}/metrics")
async def endpoint_metrics(
    endpoint_id: str,
    minutes: int = Query(60, ge=1, le=60 * 24 * 31),
    rt: Runtime = Depends(get_runtime),
) -> Any:
    return await rt.endpoint_metrics(endpoint_id, minutes=minutes)


@router.get("/{endpoint_id}/health")
async def endpoint_health(
    endpoint_id: str,
    history: int = Query(20, ge=1, le=500),
    rt: Runtime = Depends(get_runtime),
) -> Any:
    return await rt.endpoint_health(endpoint_id, history=history)


@router.get("/{endpoint_id}/events")
async def endpoint_events(
    endpoint_id: str,
    limit: int = Query(100, ge=1, le=1000),
    rt: Runtime = Depends(get_runtime),
) -> Any:
    return await rt.endpoint_events(endpoint_id, limit=limit)
