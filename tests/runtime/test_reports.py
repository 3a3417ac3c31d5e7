"""The series aggregation in SQL over MetricBucket rows, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from runtime.metrics import LATENCY_BOUNDS_MS, MetricsHub, RequestRecord
from runtime.reports import Reports, SeriesQuery, hist_percentile, uptime_percent
from store.db import Store
from store.models import Endpoint, EndpointEvent, MetricBucket

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def hist(**counts: int) -> list[int]:
    """A histogram from {"le_<bound>": count}."""
    values = [0] * len(LATENCY_BOUNDS_MS)
    for key, count in counts.items():
        values[LATENCY_BOUNDS_MS.index(float(key.removeprefix("le_")))] = count
    return values


def add_endpoint(store: Store, name: str, group: str | None = None) -> str:
    with store.session() as session:
        row = Endpoint(
            name=name, endpoint_type="openai_api", group_name=group, created_at=T0 - timedelta(1)
        )
        session.add(row)
        session.commit()
        return row.id


def add_bucket(store: Store, endpoint_id: str, minute: int, **values) -> None:
    with store.session() as session:
        session.add(MetricBucket(endpoint_id=endpoint_id, minute=T0 + timedelta(minutes=minute),
                                 **values))
        session.commit()


def test_points_sum_buckets_per_step_with_percentiles_ttft_and_errors(store):
    a, b = add_endpoint(store, "alpha"), add_endpoint(store, "beta")
    add_bucket(store, a, 0, requests=10, errors=2, latency_sum_ms=1000, latency_max_ms=240,
               latency_hist=hist(le_100=8, le_250=2), tokens_in=100, tokens_out=50, cost=0.5,
               ttft_sum_ms=300, ttft_count=3, error_kinds={"timeout": 2})
    add_bucket(store, a, 3, requests=10, errors=1, latency_sum_ms=3000, latency_max_ms=900,
               latency_hist=hist(le_250=5, le_1000=5), tokens_in=10, tokens_out=5, cost=0.25,
               ttft_sum_ms=100, ttft_count=1, error_kinds={"timeout": 1})
    add_bucket(store, a, 5, requests=4, errors=0, latency_sum_ms=40, latency_max_ms=10,
               latency_hist=hist(le_10=4))
    add_bucket(store, b, 1, requests=2, errors=2, latency_sum_ms=20, latency_max_ms=10,
               latency_hist=hist(le_10=2), error_kinds={"unavailable": 2})

    result = Reports(store).series_sync(SeriesQuery(T0, T0 + timedelta(minutes=10), 300))

    points = {(p["endpoint_id"], p["t"]): p for p in result["points"]}
    first = points[(a, T0.isoformat())]
    assert (first["requests"], first["errors"], first["success_rate"]) == (20, 3, 85.0)
    assert first["rps"] == pytest.approx(20 / 300, abs=1e-4)
    assert first["latency_avg_ms"] == 200.0
    assert first["ttft_avg_ms"] == 100.0
    assert (first["tokens_in"], first["tokens_out"], first["cost"]) == (110, 55, 0.75)
    # 8 requests <= 100 ms, 7 in (100, 250], 5 in (250, 1000]: p50 lies in the second bin.
    assert first["p50_ms"] == pytest.approx(100 + 150 * (10 - 8) / 7, abs=0.01)
    assert 250 < first["p95_ms"] <= 900  # the last bin is closed by the largest latency seen
    second = points[(a, (T0 + timedelta(minutes=5)).isoformat())]
    assert (second["requests"], second["success_rate"], second["p99_ms"]) == (4, 100.0, 9.95)
    assert points[(b, T0.isoformat())]["success_rate"] == 0.0
    kinds = {(e["kind"], e["count"]) for e in result["errors_by_kind"] if e["t"] == T0.isoformat()}
    assert kinds == {("timeout", 3), ("unavailable", 2)}
    totals = {t["endpoint_id"]: t for t in result["totals"]}
    assert totals[a]["requests"] == 24 and totals[a]["cost_per_1k_ok"] == pytest.approx(
        1000 * 0.75 / 21, abs=1e-6
    )
    assert totals[b]["cost_per_1k_ok"] is None  # nothing succeeded


def test_filters_by_endpoint_and_group_and_range(store):
    a = add_endpoint(store, "alpha", group="team")
    b = add_endpoint(store, "beta", group="team")
    c = add_endpoint(store, "gamma")
    for endpoint_id in (a, b, c):
        add_bucket(store, endpoint_id, 0, requests=1, latency_hist=hist(le_5=1))
    add_bucket(store, a, 120, requests=7, latency_hist=hist(le_5=7))  # outside the range
    reports = Reports(store)
    span = (T0, T0 + timedelta(hours=1))

    only_a = reports.series_sync(SeriesQuery(*span, 60, endpoint_ids=(a,)))
    team = reports.series_sync(SeriesQuery(*span, 60, group="team"))

    assert [p["endpoint_id"] for p in only_a["points"]] == [a]
    assert only_a["totals"][0]["requests"] == 1
    assert set(team["endpoints"]) == {a, b}
    assert {p["endpoint_id"] for p in team["points"]} == {a, b}


def test_uptime_follows_the_state_history(store):
    endpoint_id = add_endpoint(store, "alpha")
    with store.session() as session:
        for minutes, state in ((-30, "healthy"), (15, "failed"), (45, "healthy")):
            session.add(EndpointEvent(endpoint_id=endpoint_id, at=T0 + timedelta(minutes=minutes),
                                      kind="state_change", to_state=state))
        session.add(EndpointEvent(endpoint_id=endpoint_id, at=T0 + timedelta(minutes=20),
                                  kind="updated"))  # no state: ignored
        session.commit()

    result = Reports(store).series_sync(SeriesQuery(T0, T0 + timedelta(hours=1), 600))

    # Up 0-15 and 45-60 of 60 minutes.
    assert result["endpoints"][endpoint_id]["uptime_percent"] == 50.0


def test_writer_fills_ttft_and_error_classes(store):
    endpoint_id = add_endpoint(store, "alpha")
    hub = MetricsHub(store)
    at = T0.timestamp() + 5
    hub._write([
        RequestRecord(endpoint_id, at, ok=True, latency_ms=40, ttft_ms=12),
        RequestRecord(endpoint_id, at, ok=False, latency_ms=7, error_kind="timeout"),
        RequestRecord(endpoint_id, at, ok=False, latency_ms=7, error_kind="timeout"),
    ])
    hub._write([RequestRecord(endpoint_id, at, ok=True, latency_ms=30, ttft_ms=8)])

    with store.session() as session:
        bucket = session.get(MetricBucket, (endpoint_id, "", T0))
    assert bucket is not None
    assert (bucket.ttft_sum_ms, bucket.ttft_count) == (20.0, 2)
    assert bucket.error_kinds == {"timeout": 2}


def test_histogram_percentile_and_uptime_edges():
    assert hist_percentile([0] * len(LATENCY_BOUNDS_MS), 0.5, 0) is None
    only_slow = hist(**{"le_60000": 0})
    only_slow[-1] = 4  # all above the largest bound: closed by the max seen
    assert hist_percentile(only_slow, 0.99, 75_000) == pytest.approx(74_850, abs=1)
    assert uptime_percent(None, [], T0, T0) is None
    assert uptime_percent("healthy", [], T0, T0 + timedelta(minutes=1)) == 100.0


def test_rolling_windows_and_overall_points(store):
    a, b = add_endpoint(store, "alpha"), add_endpoint(store, "beta")
    add_bucket(store, a, 7, requests=3, errors=1, latency_hist=hist(le_5=3))
    add_bucket(store, b, 8, requests=1, latency_hist=hist(le_500=1), latency_max_ms=400)
    add_bucket(store, a, 17, requests=5, latency_hist=hist(le_5=5))

    start = T0 + timedelta(minutes=7)
    result = Reports(store).series_sync(
        SeriesQuery(start, start + timedelta(minutes=20), 600, align=False)
    )

    overall = result["overall"]
    second = start + timedelta(minutes=10)
    assert [p["t"] for p in overall] == [start.isoformat(), second.isoformat()]
    assert [p["requests"] for p in overall] == [4, 5]
    assert overall[0]["success_rate"] == 75.0
    assert overall[0]["p99_ms"] > 250  # beta's slow request is in the merged histogram


def test_hour_steps_read_the_hourly_rollup_with_the_same_figures(store):
    endpoint_id = add_endpoint(store, "alpha")
    hub = MetricsHub(store)
    records = [
        RequestRecord(endpoint_id, T0.timestamp() + minute * 60 + 1, ok=minute % 7 != 0,
                      latency_ms=10.0 + minute, ttft_ms=5.0, error_kind="timeout")
        for minute in range(0, 120, 3)
    ]
    hub._write(records[:20])
    hub._write(records[20:])  # a second batch merges into the same hour rows
    reports = Reports(store)
    span = (T0, T0 + timedelta(hours=2))

    by_hour = reports.series_sync(SeriesQuery(*span, 3600))
    by_minute = reports.series_sync(SeriesQuery(*span, 60))

    with store.session() as session:
        from sqlmodel import select

        from store.models import MetricHourBucket

        hours = session.exec(select(MetricHourBucket)).all()
    assert sorted(h.requests for h in hours) == [20, 20]
    assert by_hour["totals"] == by_minute["totals"]
    assert [p["requests"] for p in by_hour["points"]] == [20, 20]
    assert sum(e["count"] for e in by_hour["errors_by_kind"]) == 6


def test_retention_folding_keeps_ttft_and_error_classes(store):
    from runtime.retention import fold_buckets

    endpoint_id = add_endpoint(store, "alpha")
    for minute, kinds in ((1, {"timeout": 2}), (2, {"timeout": 1, "unavailable": 1})):
        add_bucket(store, endpoint_id, minute, requests=5, errors=sum(kinds.values()),
                   latency_hist=hist(le_5=5), ttft_sum_ms=10.0, ttft_count=2, error_kinds=kinds)

    fold_buckets(store, T0 + timedelta(hours=1))

    with store.session() as session:
        hour = session.get(MetricBucket, (endpoint_id, "", T0))
    assert hour is not None and (hour.ttft_sum_ms, hour.ttft_count) == (20.0, 4)
    assert hour.error_kinds == {"timeout": 3, "unavailable": 1}
