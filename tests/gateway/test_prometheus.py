"""GET /metrics: parsed with Prometheus' own text parser, its counters match the traffic sent;
guarded by the admin token unless AIEM_METRICS_PUBLIC=true."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "metrics-admin-token-0123456789"


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def body(upstream: Any, name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "endpoint_type": "openai_api", "url": upstream.url, **extra}


async def chat(api: Any, model: str, text: str, **extra: Any) -> Any:
    payload = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return await api.post("/v1/chat/completions", json=payload)


async def test_metrics_counters_match_the_requests_sent(make_api, openai_upstream):
    api, rt = await make_api()
    pricing = {"input_cost_per_1k": 1.0, "output_cost_per_1k": 2.0}
    await api.post("/endpoints", json=body(openai_upstream, "alpha", start=True, **pricing))
    await api.post("/endpoints", json=body(openai_upstream, "beta", start=True))
    await api.post("/endpoints", json=body(openai_upstream, "idle"))

    tokens_in = tokens_out = 0
    for n in range(7):
        answer = (await chat(api, "alpha", f"hello number {n}")).json()
        tokens_in += answer["usage"]["prompt_tokens"]
        tokens_out += answer["usage"]["completion_tokens"]
    openai_upstream.fail_next(500, times=3)
    for _ in range(3):
        assert (await chat(api, "alpha", "fails")).status_code == 502
    openai_upstream.fail_next(429, times=2)
    for _ in range(2):
        assert (await chat(api, "alpha", "limited")).status_code == 429
    streamed = await chat(api, "beta", "one two three", stream=True)
    assert streamed.status_code == 200
    for _ in range(4):
        assert (await chat(api, "beta", "hi")).status_code == 200

    beta_id = (await api.get("/endpoints/beta")).json()["id"]
    for _ in range(2):  # what the health monitor records when the breaker opens, and closes
        await asyncio.to_thread(
            rt.repo.set_state, beta_id, "cooling", "test ejection", kind="breaker_open"
        )
        await asyncio.to_thread(
            rt.repo.set_state, beta_id, "healthy", "recovered", kind="breaker_closed"
        )
    await rt.metrics.flush()  # the latency histogram is folded in by the metrics writer

    response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    s = scrape(response.text)

    assert value(s, "aiem_requests_total", endpoint="alpha", outcome="ok") == 7
    assert value(s, "aiem_requests_total", endpoint="alpha", outcome="unavailable") == 3
    assert value(s, "aiem_requests_total", endpoint="alpha", outcome="rate_limited") == 2
    assert value(s, "aiem_requests_total", endpoint="beta", outcome="ok") == 5
    assert ("aiem_requests_total", (("endpoint", "idle"), ("outcome", "ok"))) in s

    assert value(s, "aiem_request_latency_seconds_count", endpoint="alpha") == 12
    assert value(s, "aiem_request_latency_seconds_bucket", endpoint="alpha", le="+Inf") == 12
    assert value(s, "aiem_request_latency_seconds_count", endpoint="beta") == 5
    assert 0 < value(s, "aiem_request_latency_seconds_sum", endpoint="alpha") < 12 * 5
    fast = value(s, "aiem_request_latency_seconds_bucket", endpoint="alpha", le="0.005")
    assert fast <= value(s, "aiem_request_latency_seconds_bucket", endpoint="alpha", le="1.0")

    assert value(s, "aiem_tokens_total", endpoint="alpha", direction="in") == tokens_in
    assert value(s, "aiem_tokens_total", endpoint="alpha", direction="out") == tokens_out
    expected_cost = (tokens_in * 1.0 + tokens_out * 2.0) / 1000
    assert value(s, "aiem_cost_total", endpoint="alpha") == pytest.approx(expected_cost)
    assert value(s, "aiem_cost_total", endpoint="beta") == 0

    assert value(s, "aiem_in_flight_requests", endpoint="alpha") == 0
    state = "aiem_endpoint_state"
    alpha_state = (await api.get("/endpoints/alpha")).json()["state"]
    assert alpha_state in ("healthy", "degraded")  # 5 failures out of 12 may degrade it
    for name in ("healthy", "degraded", "cooling", "stopped", "failed"):
        expected = int(name == alpha_state)
        assert value(s, state, endpoint="alpha", endpoint_type="openai_api", state=name) == expected
    assert value(s, state, endpoint="idle", endpoint_type="openai_api", state="stopped") == 1
    assert value(s, "aiem_breaker_ejections_total", endpoint="beta") == 2
    assert value(s, "aiem_breaker_ejections_total", endpoint="alpha") == 0
    assert value(s, "aiem_webhook_deliveries", status="pending") == 0
    # Each running endpoint's first probe (a models list) ran when it started.
    assert value(s, "aiem_probe_success", endpoint="alpha") == 1
    assert 0 < value(s, "aiem_probe_latency_seconds", endpoint="alpha") < 10
    assert abs(value(s, "aiem_probe_timestamp_seconds", endpoint="beta") - time.time()) < 300
    assert ("aiem_probe_success", (("endpoint", "idle"),)) not in s
    assert value(s, "process_resident_memory_bytes") > 10_000_000
    assert value(s, "process_cpu_seconds_total") > 0


async def test_metrics_need_the_admin_token_unless_public(make_api):
    api, rt = await make_api(AIEM_ADMIN_TOKEN=TOKEN)
    denied = await api.get("/metrics")
    assert denied.status_code == 401 and "admin token" in denied.json()["detail"]
    allowed = await api.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert allowed.status_code == 200 and "aiem_requests" in allowed.text
    await rt.stop()  # one instance at a time on a SQLite store

    public, _ = await make_api(AIEM_ADMIN_TOKEN=TOKEN, AIEM_METRICS_PUBLIC="true")
    assert (await public.get("/metrics")).status_code == 200
    assert (await public.get("/endpoints")).status_code == 401
    assert (await public.get("/webhooks")).status_code == 401
