"""Bad days, through the whole ASGI app in-process: unexpected errors inside a chat, the store
going away (a real engine on an unreachable database) and a full disk.

The provider is the scripted fake: what is under test is what the gateway makes of failures.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import load_settings
from runtime.core import Runtime, RuntimeOptions
from store.db import make_engine
from tests.fakes import ScriptedProvider, registry_with_scripted

BUG = ValueError("Newline or carriage return character detected in HTTP header")


@pytest.fixture
async def rt(database_url: str, data_dir: Path, secret_key: str) -> AsyncIterator[Runtime]:
    ScriptedProvider.reset()
    options = RuntimeOptions(database_url=database_url, data_dir=data_dir, secret_key=secret_key)
    runtime = Runtime(options, registry=registry_with_scripted())
    await runtime.start()
    yield runtime
    await runtime.stop()


@pytest.fixture
async def api(rt: Runtime, data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(load_settings(AIEM_DATA_DIR=str(data_dir)), console=False, runtime=rt)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


async def running_endpoint(api: httpx.AsyncClient) -> dict[str, Any]:
    body = {"name": "scripted", "endpoint_type": "scripted", "start": True}
    created = await api.post("/endpoints", json=body)
    assert created.status_code == 201, created.text
    return dict(created.json())


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    found, name = [], "message"
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and line != "data: [DONE]":
            found.append((name, json.loads(line[6:])))
            name = "message"
    return found


async def test_an_unexpected_error_is_a_counted_json_failure(api):
    ep = await running_endpoint(api)
    chat_url = f"/endpoints/{ep['id']}/chat"
    v1_body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
    ScriptedProvider.enqueue(BUG, BUG, BUG, BUG)

    managed = await api.post(chat_url, json={"prompt": "hi"})
    assert managed.status_code == 500 and managed.headers["content-type"] == "application/json"
    assert managed.json()["kind"] == "internal_error" and "ValueError" in managed.json()["detail"]
    v1 = await api.post("/v1/chat/completions", json=v1_body)
    assert v1.status_code == 500 and v1.json()["error"]["code"] == "internal_error"

    managed_stream = await api.post(chat_url, json={"prompt": "hi", "stream": True})
    assert managed_stream.status_code == 200
    assert events(managed_stream.text)[-1] == (
        "error",
        {"detail": "internal error while answering (ValueError)", "kind": "internal_error"},
    )
    v1_stream = await api.post("/v1/chat/completions", json={**v1_body, "stream": True})
    # /v1 waits for the first chunk before it answers: a failure before it is a plain error.
    assert v1_stream.status_code == 500 and "data: [DONE]" not in v1_stream.text
    assert v1_stream.json()["error"]["code"] == "internal_error"

    stats = (await api.get(f"/endpoints/{ep['id']}")).json()["stats"]
    assert stats["requests"] == 4 and stats["errors"] == 4
    assert (await api.get("/system/metrics")).json()["success_rate"] == 0.0
    # The endpoint keeps serving once the bug is gone.
    assert (await api.post(chat_url, json={"prompt": "ok"})).json()["content"] == "turn 1: ok"


def break_the_store(rt: Runtime, tmp_path: Path) -> Any:
    """Point the store at a database that cannot be reached; returns the working engine."""
    working = rt.store.engine
    if working.dialect.name == "sqlite":
        rt.store.engine = make_engine(f"sqlite:///{tmp_path / 'gone' / 'aiem.db'}")
    else:
        rt.store.engine = make_engine("postgresql://nobody@127.0.0.1:9/none")
    return working


async def test_a_store_outage_is_503_counted_and_never_bills_the_upstream(
    api, rt, tmp_path, caplog
):
    ep = await running_endpoint(api)
    chat_url = f"/endpoints/{ep['id']}/chat"
    working = break_the_store(rt, tmp_path)
    try:
        turn = await api.post(chat_url, json={"prompt": "remember me", "session_id": "kept"})
        assert turn.status_code == 503 and turn.json()["kind"] == "store_unavailable"
        assert turn.headers["retry-after"] == "5"
        assert ScriptedProvider.requests == []  # the upstream was never called for it
        listing = await api.get("/endpoints")
        assert listing.status_code == 503 and listing.json()["kind"] == "store_unavailable"
        assert listing.headers["retry-after"] == "5"
        v1 = await api.post(
            "/v1/chat/completions",
            json={"model": "scripted", "messages": [{"role": "user", "content": "x"}]},
            headers={"X-Session-Id": "kept"},
        )
        assert v1.status_code == 503 and v1.headers["retry-after"] == "5"
        assert v1.json()["error"]["code"] == "store_unavailable"
        ready = await api.get("/readyz")
        assert ready.status_code == 503 and "unreachable" in ready.json()["store"]
        metrics = (await api.get("/system/metrics")).json()
        assert metrics["store"] == "unavailable" and metrics["store_errors"] >= 3
        # Both refused chats, one line (the next one comes after a second at the earliest).
        said = [r for r in caplog.records if "store unavailable for a chat" in r.getMessage()]
        assert len(said) == 1
        assert metrics["success_rate"] == 0.0 and metrics["total_requests"] == 2
    finally:
        rt.store.engine.dispose()
        rt.store.engine = working
    assert (await api.get("/readyz")).status_code == 200
    again = await api.post(chat_url, json={"prompt": "remember me", "session_id": "kept"})
    assert again.status_code == 200 and again.json()["content"] == "turn 1: remember me"


async def test_a_full_disk_stops_session_turns_before_the_upstream(api, rt, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("free space is checked for the SQLite data dir")
    ep = await running_endpoint(api)
    chat_url = f"/endpoints/{ep['id']}/chat"
    rt.store.min_free_bytes = 1 << 62  # more than any disk: this one counts as full
    turn = await api.post(chat_url, json={"prompt": "keep", "session_id": "full"})
    assert turn.status_code == 503 and ScriptedProvider.requests == []
    ready = await api.get("/readyz")
    assert ready.status_code == 503 and "disk nearly full" in ready.json()["store"]
    # A chat that stores nothing still works.
    assert (await api.post(chat_url, json={"prompt": "no session"})).status_code == 200
    rt.store.min_free_bytes = 0
    assert (await api.get("/readyz")).status_code == 200
