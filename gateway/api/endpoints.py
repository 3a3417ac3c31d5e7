"""/endpoints: CRUD, start/stop/restart, chat (JSON or SSE), metrics and events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse
from sqlmodel import select

from gateway.api.deps import get_runtime
from gateway.api.schemas import ChatBody
from gateway.errors import KNOWN, error_body, management_error
from providers.base import Message
from runtime.chat import ChatInput, ChatStream
from runtime.core import Runtime
from runtime.metrics import LATENCY_BOUNDS_MS
from store.models import EndpointCreate, EndpointUpdate, MetricBucket, utcnow

router = APIRouter(prefix="/endpoints", tags=["endpoints"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("", status_code=201)
async def create_endpoint(body: EndpointCreate, rt: Runtime = Depends(get_runtime)) -> Any:
    row = await rt.manager.create(body)
    return rt.manager.public(row)


@router.get("")
async def list_endpoints(
    state: str | None = None,
    endpoint_type: str | None = None,
    rt: Runtime = Depends(get_runtime),
) -> Any:
    rows = await asyncio.to_thread(rt.manager.repo.all, state=state, endpoint_type=endpoint_type)
    return [rt.manager.public(r) for r in rows]


@router.get("/{endpoint_id}")
async def get_endpoint(endpoint_id: str, rt: Runtime = Depends(get_runtime)) -> Any:
    return await asyncio.to_thread(rt.manager.get_public, endpoint_id)


@router.patch("/{endpoint_id}")
async def update_endpoint(
    endpoint_id: str, body: EndpointUpdate, rt: Runtime = Depends(get_runtime)
) -> Any:
    return rt.manager.public(await rt.manager.update(endpoint_id, body))


@router.delete("/{endpoint_id}", status_code=204)
async def delete_endpoint(endpoint_id: str, rt: Runtime = Depends(get_runtime)) -> Response:
    await rt.manager.delete(endpoint_id)
    return Response(status_code=204)


@router.post("/{endpoint_id}/start")
async def start_endpoint(endpoint_id: str, rt: Runtime = Depends(get_runtime)) -> Any:
    return rt.manager.public(await rt.manager.start(endpoint_id))


@router.post("/{endpoint_id}/stop")
async def stop_endpoint(endpoint_id: str, rt: Runtime = Depends(get_runtime)) -> Any:
    return rt.manager.public(await rt.manager.stop(endpoint_id))


@router.post("/{endpoint_id}/restart")
async def restart_endpoint(endpoint_id: str, rt: Runtime = Depends(get_runtime)) -> Any:
    return rt.manager.public(await rt.manager.restart(endpoint_id))


@router.post("/{endpoint_id}/chat")
async def chat(endpoint_id: str, body: ChatBody, rt: Runtime = Depends(get_runtime)) -> Any:
    live = rt.manager.require_live(endpoint_id)
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
        return (await rt.chat.chat(live, inp)).to_dict()
    stream = await rt.chat.open_stream(live, inp)
    return StreamingResponse(
        sse_events(stream), media_type="text/event-stream", headers=SSE_HEADERS
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
    public = await asyncio.to_thread(rt.manager.get_public, endpoint_id)
    buckets = await asyncio.to_thread(_buckets, rt, endpoint_id, minutes)
    return {
        "endpoint_id": endpoint_id,
        "name": public["name"],
        "state": public["state"],
        "live": public["stats"],
        "latency_bounds_ms": [b if b != float("inf") else None for b in LATENCY_BOUNDS_MS],
        "buckets": buckets,
    }


def _buckets(rt: Runtime, endpoint_id: str, minutes: int) -> list[dict[str, Any]]:
    since = utcnow() - timedelta(minutes=minutes)
    stmt = (
        select(MetricBucket)
        .where(MetricBucket.endpoint_id == endpoint_id, MetricBucket.minute >= since)
        .order_by(MetricBucket.minute)  # type: ignore[arg-type]
    )
    with rt.store.session() as session:
        rows = session.exec(stmt).all()
    return [r.model_dump(mode="json", exclude={"endpoint_id"}) for r in rows]


@router.get("/{endpoint_id}/events")
async def endpoint_events(
    endpoint_id: str,
    limit: int = Query(100, ge=1, le=1000),
    rt: Runtime = Depends(get_runtime),
) -> Any:
    return await asyncio.to_thread(rt.manager.repo.events, endpoint_id, limit=limit)


__all__ = ["router", "sse", "management_error"]
