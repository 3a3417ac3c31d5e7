"""/system, /providers, /sessions, /healthz and /readyz."""

from __future__ import annotations

import asyncio
from typing import Any

import psutil
from fastapi import APIRouter, Depends, Query, Request, Response

from gateway.api.deps import get_runtime
from gateway.settings import Settings, describe_settings
from runtime.core import Runtime
from store.models import LIVE_STATES

router = APIRouter(tags=["system"])
_process = psutil.Process()


@router.get("/system/metrics")
async def system_metrics(rt: Runtime = Depends(get_runtime)) -> Any:
    rows = await asyncio.to_thread(rt.manager.repo.all)
    by_state: dict[str, int] = {}
    for row in rows:
        by_state[row.state] = by_state.get(row.state, 0) + 1
    snap = rt.manager.metrics.system_snapshot()
    return {
        "running_endpoints": sum(1 for r in rows if r.state in LIVE_STATES),
        "total_endpoints": len(rows),
        "endpoints_by_state": by_state,
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
    except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
        response.status_code = 503
        return {"status": "unavailable", "store": type(exc).__name__}
    if not rt.started:
        response.status_code = 503
        return {"status": "starting"}
    return {"status": "ready", "running_endpoints": len(rt.manager.live)}


@router.get("/system/config")
async def running_config(request: Request, rt: Runtime = Depends(get_runtime)) -> Any:
    """What each setting resolved to; secrets only as set / not set, never their value."""
    settings: Settings = request.app.state.settings
    return {
        "settings": describe_settings(settings),
        "data_dir": str(settings.data_dir.resolve()),
        "store": {
            "dialect": rt.store.engine.dialect.name,
            "url": rt.store.engine.url.render_as_string(hide_password=True),
        },
        "admin_token_set": settings.admin_token is not None,
        "providers": rt.registry.types(),
    }
