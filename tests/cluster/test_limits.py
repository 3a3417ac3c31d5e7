"""Limits hold across the cluster: three real instances on one PostgreSQL, a limit of 60
requests per minute, a burst of 120 spread round-robin: about 60 accepted in total, with each
instance's share (the default) and exactly with the counters in Redis (REDIS_URL)."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from runtime.redis_limits import redacted
from tests.fixtures.redis_server import redis_server_fixture  # noqa: F401

LIMIT = 60
BURST = 120
CONCURRENT = 30


def create_limited(gw, upstream_url: str) -> None:
    body = {
        "name": "limited",
        "endpoint_type": "openai_api",
        "url": upstream_url,
        "model_name": "m",
        "rate_limit_per_minute": LIMIT,
        "max_concurrent_requests": CONCURRENT,
        "start": True,
    }
    assert httpx.post(gw.url + "/endpoints", json=body, timeout=30).status_code == 201


def limits_seen(gws) -> list[dict]:
    return [httpx.get(gw.url + "/endpoints/limited", timeout=5).json()["limits"] for gw in gws]


def wait_until_applied(gws, mode: str, seconds: float = 20.0) -> list[dict]:
    """Every instance runs the endpoint and enforces its part of the limits in ``mode``."""
    deadline = time.monotonic() + seconds
    while True:
        seen = limits_seen(gws)
        if all(s.get("mode") == mode and s.get("instances") == len(gws) for s in seen):
            return seen
        assert time.monotonic() < deadline, f"limits not applied everywhere: {seen}"
        time.sleep(0.2)


def burst(gws, count: int) -> tuple[Counter[int], list[httpx.Response]]:
    """``count`` chats at once (24 in flight), round-robin over the instances."""
    body = {"model": "limited", "messages": [{"role": "user", "content": "hi"}]}
    clients = [httpx.Client(base_url=gw.url, timeout=30) for gw in gws]
    try:
        with ThreadPoolExecutor(24) as pool:
            answers = list(
                pool.map(
                    lambda i: clients[i % len(clients)].post("/v1/chat/completions", json=body),
                    range(count),
                )
            )
    finally:
        for client in clients:
            client.close()
    return Counter(a.status_code for a in answers), [a for a in answers if a.status_code == 429]


def assert_about_the_limit(statuses: Counter[int], refused: list[httpx.Response]) -> None:
    assert set(statuses) == {200, 429}, statuses
    assert abs(statuses[200] - LIMIT) <= LIMIT * 0.1, statuses
    answer = refused[0]
    assert int(answer.headers["retry-after"]) >= 1
    message = answer.json()["error"]["message"]
    assert "limited to 60 requests per minute across the cluster" in message


def test_a_limit_of_60_per_minute_holds_across_three_instances(
    cluster_factory, redis_server, openai_upstream
):
    """Exact in Redis; then, Redis killed, by each instance's share (the same arithmetic as
    without REDIS_URL); then Redis again once it is back. One cluster for all three: starting
    three instances is most of the time."""
    gws = cluster_factory(3, env={"REDIS_URL": redis_server.url})
    create_limited(gws[0], openai_upstream.url)
    seen = wait_until_applied(gws, "redis")
    # With Redis deciding, each instance's own gate and bucket hold the whole limit.
    assert [s["rate_limit_per_minute"] for s in seen] == [LIMIT] * 3

    statuses, refused = burst(gws, BURST)
    assert_about_the_limit(statuses, refused)
    if not any("enforces its share" in gw.logs() for gw in gws):  # Redis decided throughout
        # Exact: only a burst that crosses a minute boundary lets a request or two more in.
        assert LIMIT <= statuses[200] <= LIMIT + 2, statuses

    warned = [gw.logs().count("enforces its share") for gw in gws]
    redis_server.kill()
    seen = wait_until_applied(gws, "share")  # each notices at its next renewal (3 s)
    assert sorted(s["rate_limit_per_minute"] for s in seen) == [20, 20, 20]
    assert sum(s["max_concurrent_requests"] for s in seen) == CONCURRENT
    statuses, refused = burst(gws, BURST)
    assert_about_the_limit(statuses, refused)
    assert "(this instance's share: 20)" in refused[0].json()["error"]["message"]
    # One warning each however many chats went on without Redis; its URL without the password.
    assert [gw.logs().count("enforces its share") for gw in gws] == [n + 1 for n in warned]
    logs = "".join(gw.logs() for gw in gws)
    assert redacted(redis_server.url) in logs and redis_server.password not in logs

    redis_server.start()
    wait_until_applied(gws, "redis")
