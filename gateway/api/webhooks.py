"""/webhooks: subscriptions to endpoint events and the record of their deliveries."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Response

from gateway.api.deps import get_runtime
from runtime.core import Runtime
from store.models import WebhookCreate

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.post("", status_code=201)
async def create_webhook(body: WebhookCreate, rt: Runtime = Depends(get_runtime)) -> Any:
    return await rt.create_webhook(body)


@router.get("")
async def list_webhooks(rt: Runtime = Depends(get_runtime)) -> Any:
    return await rt.list_webhooks()


@router.get("/{webhook_id}")
async def get_webhook(webhook_id: str, rt: Runtime = Depends(get_runtime)) -> Any:
    return await rt.get_webhook(webhook_id)


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: str, rt: Runtime = Depends(get_runtime)) -> Response:
    await rt.delete_webhook(webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries")
async def webhook_deliveries(
    webhook_id: str,
    status: Literal["pending", "delivered", "dead"] | None = None,
    limit: int = Query(100, ge=1, le=1000),
    rt: Runtime = Depends(get_runtime),
) -> Any:
    """Newest first: each delivery's attempts, last status code or error, and next retry."""
    return await rt.webhook_deliveries(webhook_id, status=status, limit=limit)
