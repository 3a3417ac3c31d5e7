"""Browser endpoints have one owner: the lease race, and requests forwarded to the owner.

Two runtimes share one PostgreSQL database in this process, each served by uvicorn on its own
free loopback port, so forwarding crosses real HTTP. The provider is the scripted fake with
``needs_browser`` set: what is under test is who runs it and how requests reach it (the real
browser, the real processes and failover are in test_webchat_owner.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.fernet import Fernet
from sqlalchemy import text

from gateway.app import create_app, default_advertise_url
from gateway.settings import load_settings
from runtime.core import Runtime, RuntimeOptions
from runtime.leases import Leases
from runtime.ownership import OWNER_MEMORY_S
from store.db import Store
from store.models import Endpoint
from tests.fakes import ScriptedBrowser, ScriptedProvider, registry_with_scripted
from tests.gateway_proc import free_port

# ---- the lease itself ------------------------------------------------------------------------


@pytest.fixture
def pg_store(shared_pg: str, tmp_path: Path) -> Iterator[Store]:
    store = Store.open(url=shared_pg, data_dir=tmp_path, secret_key=Fernet.generate_key().decode())
    yield store
    store.dispose()


def new_endpoint(store: Store, name: str) -> str:
    with store.session() as session:
        row = Endpoint(name=name, endpoint_type="web_chat")
        session.add(row)
        session.commit()
        return row.id


def expire(store: Store, endpoint_id: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE endpoint_lease SET expires_at = now() - interval '1 second' "
                 "WHERE endpoint_id = :id"),
            {"id": endpoint_id},
        )  # fmt: skip


def holder(store: Store, endpoint_id: str) -> str | None:
    with store.engine.connect() as conn:
        row = conn.execute(
            text("SELECT holder FROM endpoint_lease WHERE endpoint_id = :id"), {"id": endpoint_id}
        ).first()
    return None if row is None else str(row[0])


def test_instances_racing_for_an_expired_lease_exactly_one_wins(pg_store: Store) -> None:
    endpoint_id = new_endpoint(pg_store, "contested")
    racers = [Leases(pg_store, f"instance-{n}") for n in range(4)]
    assert racers[0].take(endpoint_id)
    assert not racers[1].take(endpoint_id), "a live lease is not taken over"
    for _round in range(12):
        expire(pg_store, endpoint_id)
        won = race_for(endpoint_id, racers)
        winners = [name for name, ok in won.items() if ok]
        assert len(won) == len(racers) and len(winners) == 1, won
        assert holder(pg_store, endpoint_id) == winners[0]


def race_for(endpoint_id: str, racers: list[Leases]) -> dict[str, bool]:
    """Every racer tries to take the lease at the same moment; who got it."""
    start = threading.Barrier(len(racers))
    won: dict[str, bool] = {}

    def race(leases: Leases) -> None:
        start.wait()
        won[leases.holder] = leases.take(endpoint_id)

    threads = [threading.Thread(target=race, args=(r,)) for r in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return won


def test_renewal_keeps_what_runs_releases_the_rest_and_reports_a_lost_lease(
    pg_store: Store,
) -> None:
    mine, other = Leases(pg_store, "mine"), Leases(pg_store, "other")
    running, restarting, stopped = (new_endpoint(pg_store, n) for n in ("run", "restart", "stop"))
    for endpoint_id in (running, restarting, stopped):
        assert mine.take(endpoint_id)
    renewal = mine.renew([running], in_use=[restarting])
    assert renewal.lost == set() and renewal.released == {stopped} and not renewal.orphaned
    assert holder(pg_store, stopped) is None, "a lease of an endpoint no longer run is released"
    assert holder(pg_store, running) == holder(pg_store, restarting) == "mine"
    assert not other.take(running) and not other.take(restarting)

    expire(pg_store, running)
    assert other.take(running)
    renewal = mine.renew([running], in_use=[restarting])
    assert renewal.lost == {running}, "the lease went to another instance"
    assert holder(pg_store, running) == "other"
    assert mine.release_all() == [restarting]
    assert holder(pg_store, restarting) is None

    # A holder that died with an endpoint that should run: its expired lease is orphaned.
    ghost = Leases(pg_store, "ghost")
    assert ghost.take(stopped)
    with pg_store.engine.begin() as conn:
        conn.execute(text("UPDATE endpoint SET desired_state = 'running' WHERE id = :id"),
                     {"id": stopped})  # fmt: skip
    assert mine.renew([], in_use=[]).orphaned == set(), "not expired yet"
    expire(pg_store, stopped)
    assert mine.renew([], in_use=[]).orphaned == {stopped}


# ---- two instances in this process, forwarding over loopback HTTP ------------------------------


class Instance:
    """A runtime and its whole app, served by uvicorn on a free port in this event loop."""

    def __init__(self, database_url: str, data_dir: Path, secret_key: str, **settings: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        options = RuntimeOptions(
            database_url=database_url,
            data_dir=data_dir,
            secret_key=secret_key,
            advertise_url=self.url,
        )
        self.rt = Runtime(options, registry=registry_with_scripted())
        self.app = create_app(
            load_settings(AIEM_DATA_DIR=str(data_dir), **settings), console=False, runtime=self.rt
        )
        self.server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Instance:
        await self.rt.start()
        await self.serve()
        return self

    async def serve(self) -> None:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()  # start-up failed: raise why
                raise RuntimeError("uvicorn exited before it started")
            await asyncio.sleep(0.01)

    async def unserve(self) -> None:
        if self.server is not None and self._task is not None:
            self.server.should_exit = True
            await self._task
        self.server = self._task = None

    async def stop(self) -> None:
        await self.unserve()
        await find_state(self.app).forwarder.close()
        if self.rt.started:
            await self.rt.stop()


@pytest.fixture
async def make_duo(shared_pg: str, tmp_path: Path) -> AsyncIterator[Any]:
    """``await make_duo(**settings)``: two started instances A and B on one database."""
    ScriptedProvider.reset()
    key = Fernet.generate_key().decode()
    made: list[Instance] = []

    async def make(**settings: str) -> tuple[Instance, Instance]:
        for name in ("a", "b"):
            made.append(Instance(shared_pg, tmp_path / name, key, **settings))
            await made[-1].start()
        return made[0], made[1]

    yield make
    for instance in reversed(made):
        with contextlib.suppress(Exception):
            await instance.stop()


@pytest.fixture
async def duo(make_duo: Any) -> tuple[Instance, Instance]:
    return await make_duo()  # type: ignore[no-any-return]


def find_state(app: Any) -> Any:
    """The FastAPI app's state under the guard (and the request-id wrapper, if any)."""
    while not hasattr(app, "state"):
        app = app.app
    return app.state


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {seconds} s")


async def owned_by_a(
    a: Instance, b: Instance, client: httpx.AsyncClient, **fields: Any
) -> dict[str, Any]:
    body = {"name": "pilot", "endpoint_type": "scripted_browser", "config": {"delay": 0.15},
            "start": True, **fields}  # fmt: skip
    created = await client.post(a.url + "/endpoints", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["owner"]["instance"] == a.rt.cluster.id
    await asyncio.sleep(0.5)  # B hears of it (NOTIFY) and must not start it
    assert "pilot" not in b.rt.manager.by_name
    return dict(created.json())


def chat(model: str = "pilot", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}


async def test_a_chat_through_b_is_answered_by_the_owner_a(duo) -> None:
    a, b = duo
    async with httpx.AsyncClient(timeout=20) as client:
        endpoint = await owned_by_a(a, b, client)
        answer = await client.post(
            b.url + "/v1/chat/completions", json=chat(), headers={"X-Session-Id": "fwd-1"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == "turn 1: hello there"
        assert answer.headers["x-aiem-owner"] == a.rt.cluster.id
        assert answer.headers["x-session-id"] == "fwd-1"
        assert answer.headers["x-aiem-endpoint"] == "pilot"
        # The next requests within a second skip the store: B remembers where it runs.
        remembered = b.rt.ownership.known_elsewhere("pilot")
        assert remembered is not None and remembered.owner_url == a.url
        # The session header went along: the owner stored the turn in that session.
        session = (await client.get(a.url + "/sessions/fwd-1")).json()
        assert [m["content"] for m in session["messages"]][-1] == "turn 1: hello there"

        per_endpoint = await client.post(
            b.url + f"/endpoints/{endpoint['id']}/chat", json={"prompt": "per endpoint"}
        )
        assert per_endpoint.status_code == 200, per_endpoint.text
        assert per_endpoint.json()["content"] == "turn 1: per endpoint"

        shown = (await client.get(b.url + "/endpoints/pilot")).json()
        assert shown["owner"]["instance"] == a.rt.cluster.id
        assert shown["owner"]["url"] == a.url and shown["owner"]["expired"] is False
        view = (await client.get(b.url + "/cluster")).json()
        leases = {x["endpoint"]: x for x in view["leases"]}
        assert leases["pilot"]["instance"] == a.rt.cluster.id
        owns = {i["id"]: i["owns"] for i in view["instances"]}
        assert owns == {a.rt.cluster.id: ["pilot"], b.rt.cluster.id: []}
    assert len(ScriptedBrowser.requests) == 2


async def stream_arrivals(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> tuple[httpx.Response, list[tuple[float, str]]]:
    arrivals: list[tuple[float, str]] = []
    async with client.stream("POST", url, json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line[6:]))
    return response, arrivals


async def test_streams_through_b_arrive_chunk_by_chunk(duo) -> None:
    a, b = duo
    async with httpx.AsyncClient(timeout=20) as client:
        endpoint = await owned_by_a(a, b, client)
        response, arrivals = await stream_arrivals(
            client, b.url + "/v1/chat/completions", chat(stream=True)
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-aiem-owner"] == a.rt.cluster.id
        deltas = [
            json.loads(d)["choices"][0]["delta"].get("content", "")
            for _, d in arrivals
            if d != "[DONE]" and json.loads(d)["choices"]
        ]
        assert "".join(deltas).strip() == "turn 1: hello there"
        # Three words 0.15 s apart: relayed as written, not gathered up at the end.
        assert arrivals[-1][0] - arrivals[0][0] > 0.25

        response, arrivals = await stream_arrivals(
            client,
            b.url + f"/endpoints/{endpoint['id']}/chat",
            {"prompt": "one two three", "stream": True},
        )
        events = [json.loads(d) for _, d in arrivals]
        assert events[-1]["done"] is True
        assert events[-1]["content"].strip() == "turn 1: one two three"
        assert arrivals[-1][0] - arrivals[0][0] > 0.3


async def test_a_forwarded_request_is_never_forwarded_again(duo) -> None:
    a, b = duo
    async with httpx.AsyncClient(timeout=20) as client:
        await owned_by_a(a, b, client)
        again = await client.post(
            b.url + "/v1/chat/completions",
            json=chat(),
            headers={"X-Aiem-Forwarded": "some-instance"},
        )
    assert again.status_code == 409, again.text
    message = again.json()["error"]["message"]
    assert "already forwarded here by instance some-instance" in message
    assert a.rt.cluster.id in message
    assert ScriptedBrowser.requests == [], "the owner never saw it"


async def test_a_group_none_of_whose_members_runs_here_goes_to_an_owner(duo) -> None:
    """B runs no member of the group: the owner of one gets the request and routes it."""
    a, b = duo
    async with httpx.AsyncClient(timeout=20) as client:
        await owned_by_a(a, b, client, group_name="pilots")
        answer = await client.post(b.url + "/v1/chat/completions", json=chat("pilots"))
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-aiem-owner"] == a.rt.cluster.id
        assert answer.headers["x-aiem-endpoint"] == "pilot"
        assert answer.json()["choices"][0]["message"]["content"] == "turn 1: hello there"
        assert (await client.post(a.url + "/endpoints/pilot/stop")).status_code == 200
        refused = await client.post(b.url + "/v1/chat/completions", json=chat("pilots"))
    assert refused.status_code == 409, refused.text
    assert "no member of group 'pilots' is running" in refused.json()["error"]["message"]
    assert len(ScriptedBrowser.requests) == 1


async def test_an_unreachable_owner_is_a_quick_503_and_no_url_a_409(duo) -> None:
    a, b = duo
    async with httpx.AsyncClient(timeout=20) as client:
        endpoint = await owned_by_a(a, b, client)
        await a.unserve()  # A still holds the lease (its heartbeats go on) but takes no calls
        started = time.monotonic()
        refused = await client.post(b.url + "/v1/chat/completions", json=chat())
        assert time.monotonic() - started < 4
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert "cannot be reached" in refused.json()["error"]["message"]
        refused = await client.post(
            b.url + f"/endpoints/{endpoint['id']}/chat", json={"prompt": "hi"}
        )
        assert refused.status_code == 503 and refused.json()["kind"] == "endpoint_unavailable"

        with b.rt.store.engine.begin() as conn:
            conn.execute(
                text("UPDATE instance SET url = '' WHERE id = :id"), {"id": a.rt.cluster.id}
            )
        a.rt.cluster.url = ""  # its next heartbeat must not put it back
        await asyncio.sleep(OWNER_MEMORY_S + 0.1)  # B asks the store again
        nowhere = await client.post(b.url + "/v1/chat/completions", json=chat())
        assert nowhere.status_code == 409, nowhere.text
        assert "advertises no URL" in nowhere.json()["error"]["message"]

        # A holder that advertises B's own URL (a killed earlier run of B, or two instances
        # given one URL): forwarding would come back to B, so B says so instead.
        with b.rt.store.engine.begin() as conn:
            conn.execute(
                text("UPDATE instance SET url = :url WHERE id = :id"),
                {"url": b.url, "id": a.rt.cluster.id},
            )
        await asyncio.sleep(OWNER_MEMORY_S + 0.1)
        itself = await client.post(b.url + "/v1/chat/completions", json=chat())
    assert itself.status_code == 503 and itself.headers["retry-after"] == "5", itself.text
    assert "advertises this instance's own URL" in itself.json()["error"]["message"]


def test_the_default_advertised_url_is_reachable_by_the_others() -> None:
    assert default_advertise_url("127.0.0.1", 8001) == "http://127.0.0.1:8001"
    everywhere = default_advertise_url("0.0.0.0", 8001)
    assert everywhere.endswith(":8001") and "0.0.0.0" not in everywhere


async def test_a_stop_frees_the_lease_and_the_other_instance_can_start_it(duo) -> None:
    a, b = duo
    async with httpx.AsyncClient(timeout=20) as client:
        endpoint = await owned_by_a(a, b, client)
        stopped = await client.post(b.url + f"/endpoints/{endpoint['id']}/stop")
        assert stopped.json()["state"] == "stopped"

        async def released() -> bool:
            return holder(a.rt.store, endpoint["id"]) is None and "pilot" not in a.rt.manager.live

        await eventually(released)
        started = await client.post(b.url + f"/endpoints/{endpoint['id']}/start")
        assert started.status_code == 200, started.text
        assert "pilot" in b.rt.manager.by_name and "pilot" not in a.rt.manager.by_name
        assert holder(b.rt.store, endpoint["id"]) == b.rt.cluster.id
        through_a = await client.post(a.url + "/v1/chat/completions", json=chat())
        assert through_a.status_code == 200, through_a.text
        assert through_a.headers["x-aiem-owner"] == b.rt.cluster.id

        assert (await client.delete(a.url + f"/endpoints/{endpoint['id']}")).status_code == 204
    assert holder(a.rt.store, endpoint["id"]) is None


async def test_a_clean_stop_hands_the_endpoint_over_at_once(duo) -> None:
    a, b = duo
    async with httpx.AsyncClient(timeout=20) as client:
        await owned_by_a(a, b, client)
        await a.stop()  # releases its leases and announces them

        async def b_runs_it() -> bool:
            return "pilot" in b.rt.manager.by_name

        await eventually(b_runs_it, 5.0)  # not a lease expiry (15 s) nor a reconcile away
        answer = await client.post(b.url + "/v1/chat/completions", json=chat())
    assert answer.status_code == 200 and "x-aiem-owner" not in answer.headers


async def test_on_sqlite_the_one_instance_owns_its_browser_endpoints(tmp_path: Path) -> None:
    ScriptedBrowser.reset()
    solo = Instance(f"sqlite:///{tmp_path / 'aiem.db'}", tmp_path, Fernet.generate_key().decode())
    await solo.rt.start()
    transport = httpx.ASGITransport(app=solo.app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            body = {"name": "pilot", "endpoint_type": "scripted_browser", "start": True}
            created = (await client.post("/endpoints", json=body)).json()
            assert created["owner"]["instance"] == solo.rt.cluster.id
            assert created["owner"]["expires_at"] is None  # nobody else could take it
            rest = {"name": "plain", "endpoint_type": "scripted", "start": True}
            assert (await client.post("/endpoints", json=rest)).json()["owner"] is None
            view = (await client.get("/cluster")).json()
            assert [(x["endpoint"], x["instance"]) for x in view["leases"]] == [
                ("pilot", solo.rt.cluster.id)
            ]
            assert view["instances"][0]["owns"] == ["pilot"]
            await client.post(f"/endpoints/{created['id']}/stop")
            assert (await client.get("/endpoints/pilot")).json()["owner"] is None
            assert (await client.get("/cluster")).json()["leases"] == []
    finally:
        await solo.stop()


async def test_the_caller_s_credentials_go_along_and_responses_are_forwarded_too(
    make_duo,
) -> None:
    token = secrets.token_urlsafe(32)
    a, b = await make_duo(AIEM_ADMIN_TOKEN=token)
    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=20, headers=bearer) as client:
        await owned_by_a(a, b, client)
        answer = await client.post(
            b.url + "/v1/responses", json={"model": "pilot", "input": "via responses"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-aiem-owner"] == a.rt.cluster.id
        text = answer.json()["output"][0]["content"][0]["text"]
        assert text == "turn 1: via responses"
        through_b = await client.post(b.url + "/v1/chat/completions", json=chat())
        assert through_b.status_code == 200, through_b.text
    async with httpx.AsyncClient(timeout=20) as stranger:
        refused = await stranger.post(b.url + "/v1/chat/completions", json=chat())
    assert refused.status_code == 401 and "x-aiem-owner" not in refused.headers
    assert len(ScriptedBrowser.requests) == 2


async def test_a_restart_through_b_restarts_the_owner_s_browser(duo) -> None:
    a, b = duo
    async with httpx.AsyncClient(timeout=20) as client:
        endpoint = await owned_by_a(a, b, client)
        starts = ScriptedBrowser.starts
        restarted = await client.post(b.url + f"/endpoints/{endpoint['id']}/restart")
        assert restarted.status_code == 200, restarted.text
        assert restarted.headers["x-aiem-owner"] == a.rt.cluster.id
        assert restarted.json()["owner"]["instance"] == a.rt.cluster.id
    assert ScriptedBrowser.starts == starts + 1, "the owner started its browser again"
    assert "pilot" in a.rt.manager.by_name and "pilot" not in b.rt.manager.by_name
