"""A rolling restart of every instance behind nginx, under continuous traffic, fails nothing."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from tests.cluster.test_cluster import models, within
from tests.ops.nginx_support import NGINX_FAIL_TIMEOUT_S, start_nginx, stop_nginx
from tests.ops.test_deploy import tool


def add_started_endpoint(base_url: str, upstream, name: str) -> None:
    body = {
        "name": name,
        "endpoint_type": "openai_api",
        "url": upstream.url,
        "model_name": "m",
        "start": True,
    }
    assert httpx.post(base_url + "/endpoints", json=body, timeout=30).status_code == 201


def test_rolling_restart_behind_nginx_loses_no_request(pair, openai_upstream, tmp_path):
    a, b = pair
    add_started_endpoint(a.url, openai_upstream, "rolling")
    within(5, lambda: "rolling" in models(b))
    proc, url = start_nginx(tool("nginx", "/usr/sbin"), tmp_path, [a.port, b.port])
    statuses: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        chat = {"model": "rolling", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                try:
                    statuses.append(client.post("/v1/chat/completions", json=chat).status_code)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

    workers = [threading.Thread(target=traffic) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.5)
        for instance in (a, b):
            instance.restart()
            # As an operator would: the next instance goes once nginx sends traffic to this
            # one again (it marks an upstream that refused connections down for fail_timeout).
            time.sleep(NGINX_FAIL_TIMEOUT_S + 1)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        stop_nginx(proc)
    failed = [s for s in statuses if s != 200]
    assert errors == [] and failed == [], (errors[:3], failed[:10])
    assert len(statuses) > 20


def test_sigterm_lets_in_flight_requests_finish(gateway_factory, openai_upstream):
    gw = gateway_factory(env={"AIEM_DRAIN_TIMEOUT": "20"})
    add_started_endpoint(gw.url, openai_upstream, "slow")
    openai_upstream.delay_next(2.0, path="/chat/completions")  # not a health probe
    result: dict[str, httpx.Response] = {}

    def slow_chat() -> None:
        chat = {"model": "slow", "messages": [{"role": "user", "content": "take your time"}]}
        result["r"] = httpx.post(gw.url + "/v1/chat/completions", json=chat, timeout=30)

    worker = threading.Thread(target=slow_chat)
    worker.start()
    within(5, lambda: any(r.path.endswith("/chat/completions") for r in openai_upstream.requests))
    assert gw.proc is not None
    gw.proc.terminate()  # SIGTERM while the answer is on its way
    worker.join(30)
    assert result["r"].status_code == 200
    assert result["r"].json()["choices"][0]["message"]["content"] == "turn 1: take your time"
    assert gw.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it got


def test_sigterm_answers_on_idle_keep_alive_connections_before_it_stops(
    gateway_factory, openai_upstream
):
    """A proxy's idle keep-alive connections are not closed under it: the instance stops
    taking new connections, answers once more on each idle one (closing it after) and says
    'draining' on them, then stops as soon as none is left."""
    gw = gateway_factory(env={"AIEM_DRAIN_GRACE": "10"})
    add_started_endpoint(gw.url, openai_upstream, "lame-duck")
    chat = {"model": "lame-duck", "messages": [{"role": "user", "content": "hi"}]}
    assert gw.proc is not None
    # Two keep-alive connections, as a proxy holds them.
    with httpx.Client(base_url=gw.url, timeout=30) as a, httpx.Client(base_url=gw.url) as b:
        assert a.post("/v1/chat/completions", json=chat).headers.get("connection") != "close"
        assert b.get("/readyz").status_code == 200
        gw.proc.terminate()

        def refusing_new_connections() -> bool:
            try:
                httpx.get(gw.url + "/healthz", timeout=5)
            except httpx.ConnectError:
                return True
            return False

        within(5, refusing_new_connections)
        ready = b.get("/readyz")
        second = a.post("/v1/chat/completions", json=chat)
        stopping_since = time.monotonic()
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert second.status_code == 200, second.text
    assert second.json()["choices"][0]["message"]["content"] == "turn 1: hi"
    assert second.headers["connection"] == ready.headers["connection"] == "close"
    # With no idle connection left, it stops well before the grace is over.
    assert gw.proc.wait(30) in (0, -signal.SIGTERM)
    assert time.monotonic() - stopping_since < 8
