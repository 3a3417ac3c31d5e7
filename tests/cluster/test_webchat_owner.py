"""A web chat endpoint has one owner in a cluster: real processes, a real browser.

Two `aiem serve` on one PostgreSQL database, the fixture chat site with a login served in
this process, Chromium driven by the owner only. The owner answers through the other instance
and through nginx, streaming; when it is killed, the survivor takes the lease, starts the
browser from the stored (encrypted) storage state and continues the same conversation.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.cluster.test_cluster import within
from tests.ops.nginx_support import start_nginx, stop_nginx
from tests.ops.test_deploy import tool
from tests.web_chat.conftest import chromium_available
from tests.web_chat.webchat_sites import SiteServer, bot_reply
from tests.web_chat.webchat_support import members_endpoint

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not chromium_available(), reason="no Chromium (AIEM_BROWSER_EXECUTABLE)"),
]

FAILOVER_S = 30.0
# The words the fixture site types out one by one: a long answer streams for a while.
LONG_PROMPT = " ".join(f"word{n}" for n in range(40))


@pytest.fixture(scope="module")
def sites() -> Iterator[SiteServer]:
    server = SiteServer().start()
    yield server
    server.stop()


@pytest.fixture
def owner_pair(gateway_factory, shared_pg, tmp_path):
    """Two instances on one PostgreSQL database, both able to start Chromium."""
    env = {"DATABASE_URL": shared_pg}
    if os.environ.get("AIEM_BROWSER_EXECUTABLE"):
        env["AIEM_BROWSER_EXECUTABLE"] = os.environ["AIEM_BROWSER_EXECUTABLE"]
    a = gateway_factory(env=env, data_dir=tmp_path / "a", start=False)
    b = gateway_factory(env=env, data_dir=tmp_path / "b", start=False)
    # Side by side: each start-up is mostly imports on one core.
    with ThreadPoolExecutor(2) as pool:
        for started in [pool.submit(gw.start, 120) for gw in (a, b)]:
            started.result()
    return a, b


def instance_id(gw) -> str:
    return str(httpx.get(gw.url + "/cluster", timeout=5).json()["instance"])


def started_on(gw, sites: SiteServer) -> dict[str, Any]:
    created = httpx.post(gw.url + "/endpoints", json=members_endpoint(sites), timeout=60)
    assert created.status_code == 201, created.text
    endpoint = created.json()
    assert endpoint["state"] == "healthy", endpoint
    assert endpoint["owner"]["instance"] == instance_id(gw)
    return dict(endpoint)


def ask(gw_url: str, prompt: str, session: str) -> httpx.Response:
    body = {"model": "members", "messages": [{"role": "user", "content": prompt}]}
    return httpx.post(
        gw_url + "/v1/chat/completions", json=body, headers={"X-Session-Id": session}, timeout=60
    )


def stream(gw_url: str, prompt: str, session: str) -> tuple[httpx.Response, list[float], str]:
    """A streamed chat: the response, each content chunk's arrival time, the joined text."""
    body = {"model": "members", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    arrivals: list[float] = []
    text = ""
    with httpx.stream(
        "POST",
        gw_url + "/v1/chat/completions",
        json=body,
        headers={"X-Session-Id": session},
        timeout=60,
    ) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            delta = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if delta:
                arrivals.append(time.monotonic())
                text += delta
    return response, arrivals, text


def test_owned_by_a_it_answers_through_b_and_through_nginx(owner_pair, sites, tmp_path):
    a, b = owner_pair
    logins = sites.state.logins
    started_on(a, sites)
    a_id = instance_id(a)

    answer = ask(b.url, "one", "through-b")
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == bot_reply("login", 1, "one")
    assert answer.headers["x-aiem-owner"] == a_id

    response, arrivals, text = stream(b.url, LONG_PROMPT, "through-b")
    assert response.status_code == 200 and response.headers["x-aiem-owner"] == a_id
    assert text == bot_reply("login", 2, LONG_PROMPT)
    # The page types the answer out word by word; B relays the pieces as they come.
    assert len(arrivals) >= 3 and arrivals[-1] - arrivals[0] > 0.2, arrivals

    shown = httpx.get(b.url + "/endpoints/members", timeout=5).json()
    assert shown["owner"]["instance"] == a_id and shown["owner"]["expired"] is False
    # Only the owner runs the browser (as the heartbeats, every 3 s, tell B).
    within(8, lambda: httpx.get(b.url + "/endpoints/members").json()["instances"] == [a_id])

    proc, url = start_nginx(tool("nginx", "/usr/sbin"), tmp_path, [a.port, b.port])
    try:
        forwarded = []
        for turn in (3, 4):  # round robin: one lands on A, the other on B and is forwarded
            response, arrivals, text = stream(url, f"via nginx {turn}", "through-nginx")
            assert response.status_code == 200
            assert text == bot_reply("login", turn - 2, f"via nginx {turn}")
            assert len(arrivals) >= 2
            forwarded.append("x-aiem-owner" in response.headers)
    finally:
        stop_nginx(proc)
    assert True in forwarded
    assert sites.state.logins == logins + 1, "one browser, one login"


def test_sigkill_the_owner_and_the_survivor_continues_the_session(owner_pair, sites):
    a, b = owner_pair
    logins = sites.state.logins
    endpoint = started_on(a, sites)
    b_id = instance_id(b)
    first = ask(b.url, "one", "failover")
    second = ask(a.url, "two", "failover")
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert sites.state.logins == logins + 1

    a.kill()
    killed = time.monotonic()

    def b_owns_and_runs_it() -> bool:
        shown = httpx.get(b.url + f"/endpoints/{endpoint['id']}", timeout=5).json()
        owner = shown["owner"] or {}
        # B's own word that the browser is up (the stored state may still be A's "healthy").
        return owner.get("instance") == b_id and b_id in shown["instances"]

    within(FAILOVER_S, b_owns_and_runs_it)
    third = ask(b.url, "three", "failover")
    took = time.monotonic() - killed
    assert third.status_code == 200, third.text
    assert third.json()["choices"][0]["message"]["content"] == bot_reply("login", 3, "three")
    assert "x-aiem-owner" not in third.headers, "B answers itself now"
    assert sites.state.logins == logins + 1, "the stored storage state, no new login"
    assert took < FAILOVER_S
    view = httpx.get(b.url + "/cluster", timeout=5).json()
    assert [x["instance"] for x in view["leases"]] == [b_id]
