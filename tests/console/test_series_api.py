"""GET /metrics/series through the real gateway: rolling windows, filters, bad input."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


def iso(moment: datetime) -> str:
    return moment.isoformat()


def test_rolling_windows_end_with_the_current_minute(api, make_endpoint, send_chat):
    endpoint = make_endpoint()
    api.post(f"/endpoints/{endpoint['id']}/start").raise_for_status()
    for _ in range(3):
        send_chat(endpoint["id"])
    time.sleep(1.5)  # the metrics writer flushes every second
    now = datetime.now(UTC)

    body = api.get("/metrics/series", params={
        "from": iso(now - timedelta(hours=2)), "to": iso(now), "step": 3600, "align": "false",
        "endpoint": endpoint["id"],
    }).json()

    first = datetime.fromisoformat(body["from"])
    assert timedelta(hours=1, minutes=59) <= now - first <= timedelta(hours=2)
    assert [(p["t"], p["requests"]) for p in body["overall"]] == [
        (iso(first + timedelta(hours=1)), 3)
    ]
    total = body["totals"][0]
    assert (total["endpoint_id"], total["requests"], total["success_rate"]) == (
        endpoint["id"], 3, 100.0)
    assert body["endpoints"][endpoint["id"]]["uptime_percent"] > 0


def test_bad_ranges_get_a_clear_422(api):
    now = datetime.now(UTC)
    cases = [
        ({"from": iso(now), "to": iso(now - timedelta(hours=1))}, "`from` must be before `to`"),
        ({"step": 90}, "whole number of minutes"),
        ({"from": iso(now - timedelta(days=30)), "to": iso(now), "step": 60}, "at most 2000"),
        ({"from": "yesterday"}, "datetime"),
        ({"instance": "two words"}, "should match pattern"),
        ({"instance": "x" * 101}, "at most 100 characters"),
    ]
    for params, message in cases:
        response = api.get("/metrics/series", params=params)
        assert response.status_code == 422, params
        assert message in response.text, response.text
    refused = api.get("/system/metrics", params={"instance": "tab\there"})
    assert refused.status_code == 422 and "should match pattern" in refused.text


def test_one_instance_or_the_cluster(api, make_endpoint, send_chat):
    endpoint = make_endpoint()
    api.post(f"/endpoints/{endpoint['id']}/start").raise_for_status()
    send_chat(endpoint["id"])
    name = api.get("/cluster").json()["instance_name"]
    metrics = api.get("/system/metrics").json()
    assert metrics["instance"] == name and metrics["instances"] == [name]
    assert api.get("/system/metrics", params={"instance": name}).json()["instances"] == [name]
    other = api.get("/system/metrics", params={"instance": "elsewhere:1"}).json()
    assert (other["total_requests"], other["instances"]) == (0, [])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the metrics writer flushes every second
        series = api.get("/metrics/series", params={"endpoint": endpoint["id"]}).json()
        if series["instances"]:
            break
        time.sleep(0.2)
    assert series["instances"] == [name]
    elsewhere = api.get(
        "/metrics/series", params={"endpoint": endpoint["id"], "instance": "elsewhere:1"}
    ).json()
    assert (elsewhere["overall"], elsewhere["instances"]) == ([], [])
