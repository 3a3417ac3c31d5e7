"""/system, /providers, /sessions, /healthz and /readyz."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from gateway.api.deps import get_runtime
from gateway.api.reports import INSTANCE_QUERY
from gateway.settings import Settings, describe_settings
from runtime.core import Runtime
from runtime.prometheus import CONTENT_TYPE

router = APIRouter(tags=["system"])


@router.get("/system/metrics")
async def system_metrics(
    instance: Annotated[str | None, INSTANCE_QUERY] = None, rt: Runtime = Depends(get_runtime)
) -> Any:
    """Endpoint counts, and traffic since this instance started summed over the cluster
    (``instances`` names the ones covered; ``by_instance`` splits it) or of one ``instance``;
    memory, CPU, uptime and the metrics queue are this process's."""
    return await rt.system_metrics(instance=instance or None)


@router.get("/cluster")
async def cluster(rt: Runtime = Depends(get_runtime)) -> Any:
    return await rt.cluster_view()


@router.get("/providers")
async def providers(rt: Runtime = Depends(get_runtime)) -> Any:
    return rt.providers()


@router.get("/sessions")
async def list_sessions(
    endpoint_id: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    rt: Runtime = Depends(get_runtime),
) -> Any:
    return await rt.list_sessions(endpoint=endpoint_id, limit=limit)


@router.get("/sessions/{session_id}")
async def get_session(session_id: str, rt: Runtime = Depends(get_runtime)) -> Any:
    return await rt.get_session(session_id)


@router.delete("/sessions/{session_id}", status_code=204)
async def delete_session(session_id: str, rt: Runtime = Depends(get_runtime)) -> Response:
    await rt.delete_session(session_id)
    return Response(status_code=204)


@router.get("/healthz", tags=["health"])
async def healthz() -> Any:
    return {"status": "ok"}


class Readiness(BaseModel):
    status: str
    store: str | None = None
    running_endpoints: int | None = None
    metrics_buffered: int | None = None


@router.get(
    "/readyz",
    tags=["health"],
    responses={503: {"model": Readiness, "description": "Not ready: the store, or starting"}},
)
async def readyz(response: Response, rt: Runtime = Depends(get_runtime)) -> Any:
    ready, body = await rt.readiness()
    if not ready:
        response.status_code = 503
        if "store" in body:
            response.headers["Retry-After"] = "5"
    return body


@router.get(
    "/metrics",
    tags=["system"],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def prometheus_metrics(rt: Runtime = Depends(get_runtime)) -> Response:
    """Prometheus text format; open without the admin token when AIEM_METRICS_PUBLIC=true."""
    return Response(await rt.prometheus_text(), media_type=CONTENT_TYPE)


@router.get("/system/config")
async def running_config(request: Request, rt: Runtime = Depends(get_runtime)) -> Any:
    """What each setting resolved to; secrets only as set / not set, never their value."""
    settings: Settings = request.app.state.settings
    return {
        "settings": describe_settings(settings),
        "data_dir": str(settings.data_dir.resolve()),
        "store": rt.store_info(),
        "admin_token_set": settings.admin_token is not None,
        "providers": [p["endpoint_type"] for p in rt.providers()],
    }
