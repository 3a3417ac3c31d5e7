"""Metrics over the cluster: buckets carry the instance; the series API and /system/metrics sum
every instance's buckets (or pick one), on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

import pytest

from runtime.cluster_totals import ClusterTotals, _spans
from runtime.core import Runtime, RuntimeOptions
from runtime.metrics import MetricsHub, RequestRecord
from runtime.reports import SeriesQuery
from store.db import Store, make_engine
from store.models import Endpoint, EndpointCreate, MetricBucket, MetricHourBucket
from tests.fakes import registry_with_scripted


@pytest.fixture
def open_store(database_url, data_dir, secret_key):
    opened: list[Store] = []

    def make() -> Store:
        opened.append(Store.open(url=database_url, data_dir=data_dir, secret_key=secret_key))
        return opened[-1]

    yield make
    for store in opened:
        store.dispose()


@pytest.fixture
async def alpha(database_url, data_dir, secret_key):
    """A runtime whose instance is named "alpha"."""
    options = RuntimeOptions(
        database_url=database_url, data_dir=data_dir, secret_key=secret_key, instance_name="alpha"
    )
    rt = Runtime(options, registry=registry_with_scripted())
    await rt.start()
    yield rt
    await rt.stop()


def record(endpoint_id: str, at: float, latency_ms: float, ok: bool = True) -> RequestRecord:
    return RequestRecord(
        endpoint_id,
        at,
        ok,
        latency_ms,
        error_kind=None if ok else "timeout",
        tokens_in=2,
        tokens_out=3,
        cost=0.25,
    )


def add_endpoint(store: Store) -> None:
    with store.session() as session:
        session.add(Endpoint(id="e1", name="e1", endpoint_type="scripted"))
        session.commit()


async def write(hub: MetricsHub, *records: RequestRecord) -> None:
    """Through the writer, as an instance's traffic reaches the store."""
    for rec in records:
        hub.record(rec)
    await hub.flush()


async def test_series_and_system_metrics_sum_two_instances_and_filter_one(alpha, open_store):
    rt: Runtime = alpha
    ep = await rt.manager.create(EndpointCreate(name="m", endpoint_type="scripted"))
    beta = MetricsHub(open_store(), instance="beta")
    now = time.time()
    await write(rt.metrics, *(record(ep.id, now, ms) for ms in (8, 20, 40)))
    await write(beta, *(record(ep.id, now, 400, ok=i > 0) for i in range(5)))
    rt.cluster_totals.refresh_s = 0  # read the others' buckets at every call

    cluster = await rt.system_metrics()
    assert (cluster["total_requests"], cluster["errors"], cluster["success_rate"]) == (8, 1, 87.5)
    assert (cluster["tokens_in"], cluster["tokens_out"]) == (16, 24)
    assert cluster["cost"] == pytest.approx(8 * 0.25)
    assert cluster["avg_latency_ms"] == pytest.approx((8 + 20 + 40 + 5 * 400) / 8, abs=0.01)
    assert 250 < cluster["p95_latency_ms"] <= 400  # beta's slow requests, from the histograms
    assert cluster["instance"] == "alpha" and cluster["instances"] == ["alpha", "beta"]
    assert cluster["by_instance"]["alpha"]["total_requests"] == 3
    assert cluster["by_instance"]["beta"]["total_requests"] == 5
    assert cluster["by_instance"]["beta"]["success_rate"] == 80.0
    # beta's 5 requests fell in the last two minutes; alpha's 3 in its live rate window.
    assert cluster["requests_per_second"] > rt.metrics.system_snapshot()["requests_per_second"]

    only_beta = await rt.system_metrics(instance="beta")
    assert (only_beta["total_requests"], only_beta["errors"]) == (5, 1)
    assert only_beta["instances"] == ["beta"] and only_beta["p95_latency_ms"] > 250
    only_alpha = await rt.system_metrics(instance="alpha")
    assert (only_alpha["total_requests"], only_alpha["instances"]) == (3, ["alpha"])
    assert only_alpha["p95_latency_ms"] <= 40
    nobody = await rt.system_metrics(instance="gamma")
    assert (nobody["total_requests"], nobody["instances"]) == (0, [])

    hour_start = datetime.fromtimestamp(now // 3600 * 3600, UTC)
    for step in (60, 3600):  # the minute buckets, and the hourly rollup
        query = SeriesQuery(hour_start, hour_start + timedelta(hours=1), step)
        series = await rt.reports.series(query)
        assert sum(p["requests"] for p in series["overall"]) == 8, step
        assert series["instances"] == ["alpha", "beta"] and series["instance"] is None
        assert series["totals"][0]["requests"] == 8 and series["totals"][0]["errors"] == 1
        beta_only = await rt.reports.series(dataclasses.replace(query, instance="beta"))
        assert [p["requests"] for p in beta_only["overall"]] == [5]
        assert beta_only["instances"] == ["beta"]
        assert {e["kind"]: e["count"] for e in beta_only["errors_by_kind"]} == {"timeout": 1}

    # One endpoint's minute buckets: the instances' rows of a minute added together.
    buckets = (await rt.endpoint_metrics(ep.id))["buckets"]
    assert [(b["requests"], b["instances"]) for b in buckets] == [(8, ["alpha", "beta"])]
    assert sum(buckets[0]["latency_hist"]) == 8


async def test_the_others_are_read_incrementally_and_cached(open_store):
    store = open_store()
    add_endpoint(store)
    now = time.time()
    me = MetricsHub(store, instance="me")
    me.started_at = now - 3 * 3600
    clock = [now]
    totals = ClusterTotals(store, me, refresh_s=2.0, settle_s=600, clock=lambda: clock[0])
    other = MetricsHub(open_store(), instance="other")
    two_hours_ago = datetime.fromtimestamp((now - 2 * 3600) // 60 * 60, UTC)
    await write(
        other,
        record("e1", now - 4 * 3600, 5),  # before this instance started: not counted
        record("e1", two_hours_ago.timestamp(), 5),  # in a whole settled hour
        record("e1", now - 1800, 5),  # settled: summed once into the base
        record("e1", now - 1800, 5),
        record("e1", now - 300, 5),
        record("e1", now, 5),
    )
    with store.session() as session:
        # Whole settled hours are read from the hourly rollup, not from their minutes: the
        # minute row goes, and the hour still counts.
        session.delete(session.get(MetricBucket, ("e1", "other", two_hours_ago)))
        session.commit()
    first = await totals.snapshot()
    assert first["total_requests"] == 5 and first["instances"] == ["me", "other"]
    assert totals.peers.settled == datetime.fromtimestamp((now - 600) // 60 * 60, UTC)
    # Only the last minutes count towards the rate: one request over 60-120 s.
    assert 0.008 <= first["requests_per_second"] <= 0.017

    await write(other, record("e1", now - 120, 5), record("e1", now, 5))
    assert (await totals.snapshot())["total_requests"] == 5  # cached for refresh_s
    clock[0] += 2.5
    again = await totals.snapshot()
    assert again["total_requests"] == 7
    assert again["others_as_of"] == datetime.fromtimestamp(clock[0], UTC).isoformat()

    working = store.engine
    store.engine = make_engine(
        "postgresql://nobody@127.0.0.1:9/none"
        if working.dialect.name == "postgresql"
        else f"sqlite:///{store.engine.url.database}-gone/none/aiem.db"
    )
    try:
        clock[0] += 2.5
        during = await totals.snapshot()  # the store is away: the last figures stand
        assert during["total_requests"] == 7 and during["others_as_of"] == again["others_as_of"]
        assert me.store_errors == 1
    finally:
        store.engine.dispose()
        store.engine = working


async def test_a_restart_loads_only_its_own_history(open_store, database_url):
    store = open_store()
    add_endpoint(store)
    now = time.time()
    await write(MetricsHub(store, instance="me"), *(record("e1", now, 5) for _ in range(3)))
    await write(MetricsHub(open_store(), instance="other"), record("e1", now, 5))
    with store.session() as session:  # traffic from before buckets named an instance
        session.add(
            MetricBucket(
                endpoint_id="e1",
                minute=datetime(2026, 1, 1, tzinfo=UTC),
                requests=10,
                latency_hist=[0] * 14,
            )
        )
        session.commit()

    restarted = MetricsHub(store, instance="me")
    restarted.load_history()

    # SQLite is single-instance: its unnamed older rows were this instance's.
    legacy = 10 if database_url.startswith("sqlite") else 0
    assert restarted.endpoint_snapshot("e1")["requests"] == 3 + legacy
    with store.session() as session:
        hours = session.query(MetricHourBucket).order_by(MetricHourBucket.instance).all()
    assert [(h.instance, h.requests) for h in hours] == [("me", 3), ("other", 1)]


def test_settled_spans_read_whole_hours_from_the_rollup():
    at = datetime(2026, 12, 1, 9, 40, tzinfo=UTC)
    spans = [(s.at.name, a.strftime("%H:%M"), b.strftime("%H:%M")) for s, a, b in _spans(
        at, at.replace(hour=12, minute=5))]
    assert spans == [
        ("minute", "09:40", "10:00"), ("hour", "10:00", "12:00"), ("minute", "12:00", "12:05"),
    ]
    inside = _spans(at, at.replace(minute=59))
    assert [(s.at.name, a.minute, b.minute) for s, a, b in inside] == [("minute", 40, 59)]
    on_the_hour = _spans(at.replace(minute=0), at.replace(hour=11, minute=0))
    assert [s.at.name for s, _, _ in on_the_hour] == ["hour"]
    assert _spans(at, at) == []
