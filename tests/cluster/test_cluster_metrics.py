"""Metrics over the cluster, with two real instances on one PostgreSQL: traffic through A and B
shows as the sum on either, split by instance, and either can be asked for one instance."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import httpx

from tests.cluster.test_cluster import models, within


def chat(gw, n: int) -> None:
    body = {"model": "counted", "messages": [{"role": "user", "content": "two words"}]}
    for _ in range(n):
        assert httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10).status_code == 200


def system_metrics(gw, **params: str) -> dict:
    return httpx.get(gw.url + "/system/metrics", params=params, timeout=10).json()


def series(gw, **params: str) -> dict:
    now = datetime.now(UTC)
    window = {"from": (now - timedelta(minutes=30)).isoformat(), "to": now.isoformat()}
    return httpx.get(gw.url + "/metrics/series", params={**window, **params}, timeout=10).json()


def test_traffic_through_either_instance_sums_on_both(pair, openai_upstream):
    a, b = pair
    body = {
        "name": "counted",
        "endpoint_type": "openai_api",
        "url": openai_upstream.url,
        "model_name": "m",
        "start": True,
    }
    assert httpx.post(a.url + "/endpoints", json=body, timeout=30).status_code == 201
    within(5, lambda: "counted" in models(b))
    # Without AIEM_INSTANCE_NAME or AIEM_ADVERTISE_URL an instance is named host:port.
    name_a, name_b = (f"{socket.gethostname()}:{gw.port}" for gw in (a, b))
    assert httpx.get(a.url + "/cluster").json()["instance_name"] == name_a

    chat(a, 3)
    chat(b, 2)

    # Each instance flushes its buckets every second; the others' are read every 2 s.
    within(8, lambda: system_metrics(a)["total_requests"] == 5)
    within(8, lambda: system_metrics(b)["total_requests"] == 5)
    on_b = system_metrics(b)
    assert on_b["instance"] == name_b and sorted(on_b["instances"]) == sorted([name_a, name_b])
    assert on_b["by_instance"][name_a]["total_requests"] == 3
    assert on_b["by_instance"][name_b]["total_requests"] == 2
    assert (on_b["tokens_in"], on_b["success_rate"]) == (5 * 2, 100.0)
    only_a = system_metrics(b, instance=name_a)
    assert (only_a["total_requests"], only_a["instances"]) == (3, [name_a])

    for gw in (a, b):
        report = series(gw)
        assert sum(p["requests"] for p in report["overall"]) == 5
        assert sorted(report["instances"]) == sorted([name_a, name_b])
    only_b = series(a, instance=name_b)
    assert sum(p["requests"] for p in only_b["overall"]) == 2
    assert only_b["instances"] == [name_b]
