"""Retention: old request rows go in batches; old minute buckets fold into hours, sums kept."""

from __future__ import annotations

from datetime import timedelta

from runtime import retention
from runtime.metrics import LATENCY_BOUNDS_MS
from store.models import EndpointCreate, MetricBucket, RequestLog, utcnow


def bucket(endpoint_id: str, minute, requests: int) -> MetricBucket:
    hist = [0] * len(LATENCY_BOUNDS_MS)
    hist[2] = requests
    return MetricBucket(
        endpoint_id=endpoint_id,
        minute=minute,
        requests=requests,
        errors=1,
        latency_sum_ms=10.0 * requests,
        latency_max_ms=float(requests),
        tokens_in=requests,
        tokens_out=2 * requests,
        cost=0.5,
        latency_hist=hist,
    )


async def test_retention_deletes_old_rows_and_folds_old_buckets(rt, monkeypatch):
    monkeypatch.setattr(retention, "DELETE_BATCH", 7)
    monkeypatch.setattr(retention, "ROLLUP_BATCH", 5)
    row = await rt.manager.create(EndpointCreate(name="r", endpoint_type="scripted"))
    now = utcnow().replace(second=0, microsecond=0)
    old_hour = (now - timedelta(days=10)).replace(minute=0)
    with rt.store.session() as session:
        for i in range(20):
            session.add(RequestLog(endpoint_id=row.id, at=now - timedelta(days=40, minutes=i)))
        for i in range(3):
            session.add(RequestLog(endpoint_id=row.id, at=now - timedelta(days=1, minutes=i)))
        for minute in (0, 5, 17, 59):
            session.add(bucket(row.id, old_hour + timedelta(minutes=minute), minute + 1))
        session.add(bucket(row.id, now - timedelta(days=1), 4))  # recent: left alone
        session.commit()
    report = await rt.run_retention()
    assert report.request_rows_deleted == 20 and report.buckets_folded == 3
    with rt.store.session() as session:
        assert session.query(RequestLog).count() == 3
        buckets = session.query(MetricBucket).order_by(MetricBucket.minute).all()
    assert len(buckets) == 2
    hour, recent = buckets
    assert hour.minute.replace(tzinfo=None) == old_hour.replace(tzinfo=None)
    assert hour.requests == 1 + 6 + 18 + 60 and hour.errors == 4
    assert hour.tokens_out == 2 * hour.requests and hour.cost == 2.0
    assert hour.latency_max_ms == 60.0 and sum(hour.latency_hist) == hour.requests
    assert recent.requests == 4
    again = await rt.run_retention()
    assert (again.request_rows_deleted, again.buckets_folded) == (0, 0)


async def test_folding_keeps_each_instance_in_its_own_hourly_row(rt):
    row = await rt.manager.create(EndpointCreate(name="r", endpoint_type="scripted"))
    old_hour = (utcnow() - timedelta(days=10)).replace(minute=0, second=0, microsecond=0)
    with rt.store.session() as session:
        for instance, minutes in (("a", (3, 30)), ("b", (4, 31, 58))):
            for minute in minutes:
                old = bucket(row.id, old_hour + timedelta(minutes=minute), minute)
                old.instance = instance
                session.add(old)
        session.commit()
    report = await rt.run_retention()
    assert report.buckets_folded == 5
    with rt.store.session() as session:
        rows = session.query(MetricBucket).order_by(MetricBucket.instance).all()
    assert [(r.instance, r.minute.replace(tzinfo=None)) for r in rows] == [
        ("a", old_hour.replace(tzinfo=None)),
        ("b", old_hour.replace(tzinfo=None)),
    ]
    a, b = rows
    assert (a.requests, a.errors, sum(a.latency_hist)) == (3 + 30, 2, 3 + 30)
    assert (b.requests, b.errors, b.latency_max_ms) == (4 + 31 + 58, 3, 58.0)
