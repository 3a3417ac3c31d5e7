"""Health through the API, against real fixture upstreams on loopback, on both stores: the
breaker driven by traffic and by probes alone, unreachable upstreams, rejected credentials,
the opt-in probe prompt, GET /endpoints/{ref}/health and its bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from tests.providers.provider_helpers import closed_port_url

CANARY = "sk-canary-health-5f1e9a3c7b"
CHAT = [{"role": "user", "content": "hi"}]


def openai_body(url: str, name: str = "gpt", **extra) -> dict:
    return {
        "name": name,
        "endpoint_type": "openai_api",
        "url": url,
        "model_name": "fixture-model",
        "credentials": {"api_key": CANARY},
        "start": True,
        **extra,
    }


async def until(api: httpx.AsyncClient, check: Callable[[dict], bool], timeout: float = 5.0):
    """Poll GET /endpoints/gpt/health until ``check`` holds; the last report."""
    deadline = time.monotonic() + timeout
    while True:
        report = (await api.get("/endpoints/gpt/health")).json()
        if check(report) or time.monotonic() > deadline:
            return report
        await asyncio.sleep(0.02)


def chat_calls(upstream) -> int:
    return sum(1 for r in upstream.requests if r.path.endswith("/chat/completions"))


def steps(report: dict) -> list[tuple[str, str]]:
    """(kind, to_state) of the state history, oldest first, from the start on."""
    history = [(h["kind"], h["to_state"]) for h in report["history"] if h["kind"] != "created"]
    return history[::-1]


async def test_a_failing_upstream_cools_then_one_trial_closes_the_breaker(
    make_api, openai_upstream
):
    api, _ = await make_api(HEALTH_CHECK_INTERVAL="3600")  # traffic alone drives it here
    openai_upstream.api_key = CANARY
    body = openai_body(openai_upstream.url, health_config={"cooling_s": 0.4})
    assert (await api.post("/endpoints", json=body)).json()["state"] == "healthy"
    openai_upstream.fail_next(500, path="/chat/completions", times=6)
    v1 = {"model": "gpt", "messages": CHAT}
    for _ in range(5):
        assert (await api.post("/v1/chat/completions", json=v1)).status_code == 502
    report = await until(api, lambda r: r["state"] == "cooling")
    assert report["state"] == "cooling" and report["until"] is not None
    assert "after 5 consecutive failures" in report["reason"]
    assert report["breaker"]["state"] == "open"

    sent = chat_calls(openai_upstream)
    refused = await api.post("/v1/chat/completions", json=v1)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "endpoint_cooling"
    assert (await api.post("/endpoints/gpt/chat", json={"prompt": "x"})).status_code == 503
    assert chat_calls(openai_upstream) == sent  # the upstream was not touched

    await asyncio.sleep(0.45)
    assert (await api.post("/v1/chat/completions", json=v1)).status_code == 502  # trial fails
    report = await until(api, lambda r: r["breaker"]["ejections"] == 2)
    assert report["state"] == "cooling" and report["breaker"]["next_cooling_s"] == 1.6
    await asyncio.sleep(0.85)  # the second cooling is twice as long

    openai_upstream.delay_next(0.3, path="/chat/completions")
    before = chat_calls(openai_upstream)
    answers = await asyncio.gather(*(api.post("/v1/chat/completions", json=v1) for _ in range(5)))
    assert sorted(a.status_code for a in answers) == [200, 503, 503, 503, 503]
    assert chat_calls(openai_upstream) == before + 1  # exactly one trial reached it
    report = await until(api, lambda r: r["state"] == "healthy")
    assert report["breaker"]["state"] == "closed"
    assert steps(report) == [
        ("state_change", "starting"),
        ("state_change", "healthy"),
        ("state_change", "degraded"),
        ("breaker_open", "cooling"),
        ("breaker_open", "cooling"),
        ("breaker_closed", "healthy"),
    ]
    assert CANARY not in str(report)


async def test_probes_alone_cool_and_recover_an_idle_endpoint(make_api, openai_upstream):
    api, _ = await make_api(HEALTH_CHECK_INTERVAL="0.05")
    body = openai_body(openai_upstream.url, health_config={"cooling_s": 0.5})
    assert (await api.post("/endpoints", json=body)).json()["state"] == "healthy"
    openai_upstream.fail_next(503, path="/v1/models", times=5)
    report = await until(api, lambda r: r["state"] == "cooling")
    assert report["state"] == "cooling", report
    assert "(last: unavailable:" in report["reason"]

    def probes() -> list[float]:
        return [r.at for r in openai_upstream.requests if r.path == "/v1/models"]

    opened = len(probes())  # the last of these failed and opened the breaker
    await asyncio.sleep(0.3)
    assert len(probes()) == opened  # no probe while cooling
    report = await until(api, lambda r: r["state"] == "healthy")
    assert report["state"] == "healthy"
    sent = probes()
    assert sent[opened] - sent[opened - 1] >= 0.45  # the next one was the trial, after cooling
    assert chat_calls(openai_upstream) == 0  # probes never send a (billed) chat
    assert steps(report)[1:] == [
        ("state_change", "healthy"),
        ("state_change", "degraded"),
        ("breaker_open", "cooling"),
        ("breaker_closed", "healthy"),
    ]


async def test_an_unreachable_upstream_is_never_healthy(make_api):
    api, _ = await make_api(HEALTH_CHECK_INTERVAL="3600")
    created = await api.post("/endpoints", json=openai_body(closed_port_url() + "/v1"))
    assert created.status_code == 201
    endpoint = created.json()
    assert endpoint["state"] == "degraded"
    assert endpoint["state_reason"].startswith("first probe failed: unavailable")
    listed = (await api.get("/endpoints", params={"state": "degraded"})).json()
    assert [e["name"] for e in listed] == ["gpt"]
    assert (await api.get("/system/metrics")).json()["endpoints_by_state"] == {"degraded": 1}


async def test_an_upstream_that_goes_away_is_not_healthy_within_one_probe_interval(
    make_api, openai_upstream
):
    interval = 0.3
    api, rt = await make_api(HEALTH_CHECK_INTERVAL=str(interval))
    assert (await api.post("/endpoints", json=openai_body(openai_upstream.url))).status_code == 201
    openai_upstream.stop()
    gone = time.monotonic()
    report = await until(api, lambda r: r["state"] != "healthy", timeout=interval + 1.0)
    noticed_after = time.monotonic() - gone
    assert report["state"] == "degraded", report
    assert report["reason"] == "probe failed: " + report["last_probe"]["detail"]
    assert noticed_after < interval + 0.5  # one interval, and the time to poll
    await rt.health.settle()
    assert (await api.get("/system/metrics")).json()["endpoints_by_state"] == {"degraded": 1}


async def test_rejected_credentials_fail_the_endpoint_at_start(make_api, openai_upstream):
    api, _ = await make_api(HEALTH_CHECK_INTERVAL="3600")
    openai_upstream.api_key = "the-right-key"
    created = (await api.post("/endpoints", json=openai_body(openai_upstream.url))).json()
    assert created["state"] == "failed"
    assert created["state_reason"].startswith("credentials rejected: auth_error")
    assert CANARY not in created["state_reason"]
    v1 = await api.post("/v1/chat/completions", json={"model": "gpt", "messages": CHAT})
    assert v1.status_code == 409 and "not running" in v1.json()["error"]["message"]
    await asyncio.sleep(0.2)
    report = (await api.get("/endpoints/gpt/health")).json()
    assert report["state"] == "failed" and report["breaker"] is None


async def test_an_opt_in_probe_prompt_sends_a_real_prompt(make_api, openai_upstream):
    api, _ = await make_api(HEALTH_CHECK_INTERVAL="3600")
    body = openai_body(openai_upstream.url, health_config={"probe_prompt": "are you there?"})
    assert (await api.post("/endpoints", json=body)).json()["state"] == "healthy"
    assert [r.path for r in openai_upstream.requests] == ["/v1/chat/completions"]
    assert openai_upstream.last_request.json["messages"] == [
        {"role": "user", "content": "are you there?"}
    ]
    report = (await api.get("/endpoints/gpt/health")).json()
    assert report["last_probe"]["detail"] == "probe prompt answered"
    assert report["probes"]["uses_prompt"] is True


async def test_the_health_report_of_a_running_endpoint(make_api, openai_upstream):
    api, _ = await make_api(HEALTH_CHECK_INTERVAL="45")
    assert (await api.post("/endpoints", json=openai_body(openai_upstream.url))).status_code == 201
    for _ in range(2):
        await api.post("/v1/chat/completions", json={"model": "gpt", "messages": CHAT})
    report = (await api.get("/endpoints/gpt/health")).json()
    assert (report["state"], report["desired_state"]) == ("healthy", "running")
    assert report["reason"].startswith("first probe passed: HTTP 200")
    assert report["since"] and report["until"] is None
    assert report["breaker"]["state"] == "closed" and report["breaker"]["threshold"] == 5
    assert report["signals"]["requests"] == 2 and report["signals"]["success_rate"] == 1.0
    assert report["probes"]["interval_s"] == 45 and 0 < report["probes"]["next_in_s"] <= 45
    assert report["last_probe"]["ok"] and report["last_probe"]["trial"] is False
    assert report["restarts"] == {
        "auto_restart": True,
        "recent_crashes": 0,
        "crash_limit": 5,
        "crash_window_s": 600.0,
    }
    missing = await api.get("/endpoints/nope/health")
    assert missing.status_code == 404 and "'nope' not found" in missing.json()["detail"]


async def test_bad_health_config_is_refused_by_name(api, openai_upstream):
    bad = openai_body(openai_upstream.url, start=False, health_config={"cooling_s": -1})
    refused = await api.post("/endpoints", json=bad)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["loc"] == ["health_config", "cooling_s"]
    body = openai_body(openai_upstream.url, start=False, health_config={"failure_threshold": 3})
    assert (await api.post("/endpoints", json=body)).status_code == 201
    for patch in ({"nope": 1}, {"cooling_s": 60, "max_cooling_s": 10}, {"probe_prompt": ""}):
        response = await api.patch("/endpoints/gpt", json={"health_config": patch})
        assert response.status_code == 422, patch
        assert "health_config" in response.json()["detail"]
    stored = (await api.get("/endpoints/gpt")).json()
    assert stored["health_config"] == {"failure_threshold": 3}
