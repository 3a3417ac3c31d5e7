"""Retention: a year of traffic stays fast to query.

Request rows older than the retention are deleted in batches; per-minute buckets older than
the roll-up age are folded into one bucket per endpoint, instance and hour (kept at the hour's
first minute, so every report that sums buckets over a range still adds up, and an instance's
traffic stays its own). A singleton job: the leader runs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlmodel import col

from store.db import Store
from store.models import MetricBucket, RequestLog, utcnow

log = logging.getLogger("aiem.retention")

DELETE_BATCH = 5_000
ROLLUP_BATCH = 2_000


@dataclass
class RetentionReport:
    request_rows_deleted: int = 0
    buckets_folded: int = 0


def purge_request_logs(store: Store, older_than: datetime) -> int:
    """Delete request rows before ``older_than``, a batch per transaction; return how many."""
    deleted = 0
    while True:
        with store.session() as session:
            ids = list(
                session.execute(
                    select(col(RequestLog.id))
                    .where(col(RequestLog.at) < older_than)
                    .limit(DELETE_BATCH)
                ).scalars()
            )
            if not ids:
                return deleted
            session.execute(delete(RequestLog).where(col(RequestLog.id).in_(ids)))
            session.commit()
        deleted += len(ids)


def fold_buckets(store: Store, older_than: datetime) -> int:
    """Fold minute buckets before ``older_than`` into hourly ones; return how many were folded."""
    folded = 0
    while True:
        with store.session() as session:
            rows = list(
                session.execute(
                    select(MetricBucket)
                    .where(col(MetricBucket.minute) < older_than, _not_on_the_hour())
                    .order_by(
                        col(MetricBucket.endpoint_id),
                        col(MetricBucket.instance),
                        col(MetricBucket.minute),
                    )
                    .limit(ROLLUP_BATCH)
                ).scalars()
            )
            if not rows:
                return folded
            for row in rows:
                _add_into_hour(session, row)
                session.delete(row)
            session.commit()
        folded += len(rows)


def _not_on_the_hour():  # type: ignore[no-untyped-def]
    # Rows already at hh:00 are the hourly rows (or the first minute, which is the same slot).
    from sqlalchemy import extract

    return extract("minute", col(MetricBucket.minute)) != 0


def _add_into_hour(session, row: MetricBucket) -> None:  # type: ignore[no-untyped-def]
    hour = row.minute.replace(minute=0, second=0, microsecond=0)
    # The key's order: endpoint_id, instance, minute (store.models.MetricBucket).
    target = session.get(MetricBucket, (row.endpoint_id, row.instance, hour))
    if target is None:
        target = MetricBucket(
            endpoint_id=row.endpoint_id,
            instance=row.instance,
            minute=hour,
            latency_hist=[0] * len(row.latency_hist),
        )
    target.requests += row.requests
    target.errors += row.errors
    target.latency_sum_ms += row.latency_sum_ms
    target.latency_max_ms = max(target.latency_max_ms, row.latency_max_ms)
    target.tokens_in += row.tokens_in
    target.tokens_out += row.tokens_out
    target.cost += row.cost
    old = list(target.latency_hist) or [0] * len(row.latency_hist)
    target.latency_hist = [a + b for a, b in zip(old, row.latency_hist, strict=True)]
    target.ttft_sum_ms += row.ttft_sum_ms
    target.ttft_count += row.ttft_count
    if row.error_kinds:
        kinds = dict(target.error_kinds or {})
        for kind, count in row.error_kinds.items():
            kinds[kind] = kinds.get(kind, 0) + count
        target.error_kinds = kinds
    session.add(target)
    session.flush()


def run_retention(
    store: Store, *, request_log_days: float, rollup_days: float, now: datetime | None = None
) -> RetentionReport:
    now = now or utcnow()
    report = RetentionReport(
        request_rows_deleted=purge_request_logs(store, now - timedelta(days=request_log_days)),
        buckets_folded=fold_buckets(store, now - timedelta(days=rollup_days)),
    )
    if report.request_rows_deleted or report.buckets_folded:
        log.info(
            "retention: %d request rows deleted, %d minute buckets folded into hours",
            report.request_rows_deleted,
            report.buckets_folded,
        )
    return report
