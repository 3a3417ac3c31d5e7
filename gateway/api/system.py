"""/system, /providers, /sessions, /healthz and /readyz."""

from __future__ import annotations

import asyncio
from typing import Any

import psutil
from fastapi import APIRouter, Depends, Query, Response

from gateway.api.deps import get_runtime
from runtime.chat import STORE_ERRORS
from runtime.core import Runtime
from store.models import LIVE_STATES

router = APIRouter(tags=["system"])
_process = psutil.Process()


@router.get("/system/metrics")
async def system_metrics(rt: Runtime = Depends(get_runtime)) -> Any:
    try:
        rows = await asyncio.to_thread(rt.manager.repo.all)
    except STORE_ERRORS:
        # The counters live in memory: report them (and the outage) rather than fail.
        rt.manager.metrics.store_errors += 1
        rows = None
    by_state: dict[str, int] = {}
    for row in rows or ():
        by_state[row.state] = by_state.get(row.state, 0) + 1
    snap = rt.manager.metrics.system_snapshot()
    return {
        "running_endpoints": len(rt.manager.live)
        if rows is None
        else sum(1 for r in rows if r.state in LIVE_STATES),
        "total_endpoints": None if rows is None else len(rows),
        "endpoints_by_state": by_state,
        "store": "unavailable" if rows is None else "ok",
        **snap,
        "in_flight": sum(live.gate.in_flight for live in rt.manager.live.values()),
        "memory_mb": round(_process.memory_info().rss / 1024 / 1024, 1),
        "cpu_percent": _process.cpu_percent(interval=None),
    }


@router.get("/providers")
async def providers(rt: Runtime = Depends(get_runtime)) -> Any:
    return rt.registry.describe()


@router.get("/sessions")
async def list_sessions(
    endpoint_id: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    rt: Runtime = Depends(get_runtime),
) -> Any:
    rows = await asyncio.to_thread(rt.manager.sessions.recent, endpoint_id=endpoint_id, limit=limit)
    return [r.model_dump(mode="json") for r in rows]


@router.get("/sessions/{session_id}")
async def get_session(session_id: str, rt: Runtime = Depends(get_runtime)) -> Any:
    return await asyncio.to_thread(rt.manager.sessions.get, session_id)


@router.delete("/sessions/{session_id}", status_code=204)
async def delete_session(session_id: str, rt: Runtime = Depends(get_runtime)) -> Response:
    await asyncio.to_thread(rt.manager.sessions.delete, session_id)
    return Response(status_code=204)


@router.get("/healthz", tags=["health"])
async def healthz() -> Any:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
async def readyz(response: Response, rt: Runtime = Depends(get_runtime)) -> Any:
    try:
        await asyncio.to_thread(rt.store.ping)
        problem = rt.store.room_problem()
    except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
        problem = f"unreachable ({type(exc).__name__})"
    if problem is not None:
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return {"status": "unavailable", "store": problem}
    if not rt.started:
        response.status_code = 503
        return {"status": "starting"}
    return {"status": "ready", "running_endpoints": len(rt.manager.live)}
