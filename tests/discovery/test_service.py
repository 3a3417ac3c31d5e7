"""The runtime's discovery jobs on SQLite and PostgreSQL: persisted drafts, secrets, approve."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text

from providers.base import Message
from runtime.chat import ChatInput
from runtime.core import Runtime, RuntimeOptions
from runtime.discovery import DiscoveryApprove, DiscoveryCreate, DiscoveryOptions
from runtime.errors import CapacityExceeded, Conflict
from store.models import DiscoveryDraft
from tests.discovery.site_server import EMAIL, PASSWORD


@pytest.fixture
async def runtime(database_url, data_dir, secret_key):
    options = RuntimeOptions(
        database_url=database_url,
        data_dir=data_dir,
        secret_key=secret_key,
        discovery=DiscoveryOptions(allow_private=True),
    )
    rt = Runtime(options)
    await rt.start()
    yield rt
    await rt.stop()


async def finished(rt: Runtime, draft_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = await rt.discovery.get(draft_id)
        if doc["status"] in ("ready", "failed", "approved"):
            return doc
        await asyncio.sleep(0.3)
    raise AssertionError("discovery did not finish")


@pytest.mark.browser
async def test_login_site_discovered_approved_and_chatting(runtime, discovery_sites):
    request = DiscoveryCreate(
        url=discovery_sites.url("/login/"),
        credentials={"username": EMAIL, "password": PASSWORD},
    )
    started = await runtime.discovery.submit(request)
    doc = await finished(runtime, started["id"])
    assert doc["status"] == "ready", doc["message"]
    assert doc["config"]["login"]["fields"][1]["credential"] == "password"

    with runtime.store.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM discovery_draft")).fetchall()
    assert PASSWORD not in repr(rows) and "secrets_encrypted" not in doc

    approval = DiscoveryApprove(name="members-chat", start=True, overrides={"priority": 7})
    endpoint = await runtime.discovery.approve(doc["id"], approval)
    assert endpoint["discovered_by_ai"] and endpoint["priority"] == 7
    assert endpoint["credential_keys"] == ["password", "username"]
    assert endpoint["persistent_session"] is True
    live = await runtime.live_endpoint("members-chat")
    result = await runtime.chat(live, ChatInput(messages=[Message("user", "hello")]))
    assert result.content.startswith("Reply 1:")
    with pytest.raises(Conflict):
        await runtime.discovery.approve(doc["id"], DiscoveryApprove(name="again"))


async def test_drafts_interrupted_by_a_restart_are_failed(database_url, data_dir, secret_key):
    options = RuntimeOptions(database_url=database_url, data_dir=data_dir, secret_key=secret_key)
    rt = Runtime(options)
    with rt.store.session() as session:
        session.add(DiscoveryDraft(id="d1", url="https://x.example/", status="probing"))
        session.commit()
    await rt.start()
    try:
        doc = await rt.discovery.get("d1")
        assert (doc["status"], doc["reason"]) == ("failed", "interrupted")
    finally:
        await rt.stop()


async def test_the_queue_is_bounded(database_url, data_dir, secret_key):
    options = RuntimeOptions(
        database_url=database_url,
        data_dir=data_dir,
        secret_key=secret_key,
        discovery=DiscoveryOptions(max_queued=1, concurrency=1),
    )
    rt = Runtime(options)
    await rt.start()
    try:
        await rt.discovery.stop()  # no worker: what is submitted stays queued
        first = await rt.discovery.submit(DiscoveryCreate(url="https://a.example/"))
        assert first["status"] == "queued"
        with pytest.raises(CapacityExceeded, match="queued already"):
            await rt.discovery.submit(DiscoveryCreate(url="https://b.example/"))
        assert [d["url"] for d in await rt.discovery.list_drafts()] == ["https://a.example/"]
    finally:
        await rt.stop()
