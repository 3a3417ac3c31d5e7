"""/discovery: start a discovery, follow it, see its evidence, re-probe, approve, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from gateway.api.deps import get_runtime
from runtime.core import Runtime
from runtime.discovery import DiscoveryApprove, DiscoveryCreate, DiscoveryProbe

router = APIRouter(prefix="/discovery", tags=["discovery"])


@router.post("", status_code=202)
async def start_discovery(body: DiscoveryCreate, rt: Runtime = Depends(get_runtime)) -> Any:
    return await rt.discovery.submit(body)


@router.get("")
async def list_discoveries(rt: Runtime = Depends(get_runtime)) -> Any:
    return await rt.discovery.list_drafts()


@router.get("/{draft_id}")
async def get_discovery(draft_id: str, rt: Runtime = Depends(get_runtime)) -> Any:
    return await rt.discovery.get(draft_id)


@router.get("/{draft_id}/screenshot", response_class=Response)
async def discovery_screenshot(draft_id: str, rt: Runtime = Depends(get_runtime)) -> Response:
    png = await rt.discovery.screenshot(draft_id)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.post("/{draft_id}/probe", status_code=202)
async def probe_discovery(
    draft_id: str, body: DiscoveryProbe | None = None, rt: Runtime = Depends(get_runtime)
) -> Any:
    return await rt.discovery.probe(draft_id, body or DiscoveryProbe())


@router.post("/{draft_id}/approve", status_code=201)
async def approve_discovery(
    draft_id: str, body: DiscoveryApprove, rt: Runtime = Depends(get_runtime)
) -> Any:
    return await rt.discovery.approve(draft_id, body)


@router.delete("/{draft_id}", status_code=204)
async def delete_discovery(draft_id: str, rt: Runtime = Depends(get_runtime)) -> Response:
    await rt.discovery.delete(draft_id)
    return Response(status_code=204)
