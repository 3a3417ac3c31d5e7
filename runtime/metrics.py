"""Metrics that never make a request wait on the database.

The request path calls ``MetricsHub.record`` (a few counter updates and an append to a bounded
in-memory queue). A writer task drains the queue in batches into RequestLog rows and
per-endpoint per-minute MetricBucket rows, keyed by this instance's name as well (a constant of
the process, so the request path pays nothing for it). Live counters serve this instance's part
of /system/metrics; the other instances' parts come from their buckets (runtime/cluster_totals).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import math
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func
from sqlalchemy import select as sa_select
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import col, select

from store.db import Store
from store.models import UNRECORDED_INSTANCE, MetricBucket, MetricHourBucket, RequestLog

log = logging.getLogger("aiem.metrics")

LATENCY_BOUNDS_MS: tuple[float, ...] = (
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    math.inf,
)
RECENT_SAMPLES = 1024
_REQUEST_LOG = RequestLog.__table__  # type: ignore[attr-defined]
RATE_WINDOW_S = 60


def store_is_away(exc: BaseException) -> bool:
    """Whether a failed write may pass by itself: the database down, restarting or out of
    reach (its records are kept), not a batch it refused (those would fail again)."""
    if isinstance(exc, OSError | OperationalError | InterfaceError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated
    # psycopg's own errors, from the connections used without SQLAlchemy (the change listener,
    # the leader lock); when psycopg was never imported, the error cannot be one of its own.
    driver = sys.modules.get("psycopg")
    return driver is not None and isinstance(exc, driver.OperationalError | driver.InterfaceError)


@dataclass(slots=True)
class RequestRecord:
    endpoint_id: str
    at: float
    ok: bool
    latency_ms: float
    status_code: int = 200
    error_kind: str | None = None
    session_id: str | None = None
    ttft_ms: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_estimated: bool = False
    cost: float = 0.0
    streamed: bool = False


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


class EndpointStats:
    __slots__ = (
        "requests",
        "errors",
        "latency_sum",
        "recent",
        "tokens_in",
        "tokens_out",
        "cost",
        "last_error",
        "last_request_at",
        "errors_by_kind",
        "_p95",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency_sum = 0.0
        self.recent: deque[float] = deque(maxlen=RECENT_SAMPLES)
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost = 0.0
        self.last_error: str | None = None
        self.last_request_at: float | None = None
        self.errors_by_kind: dict[str, int] = {}
        self._p95: tuple[int, float | None] = (0, None)  # (requests when computed, value)

    def add(self, rec: RequestRecord) -> None:
        self.requests += 1
        if not rec.ok:
            self.errors += 1
            self.last_error = rec.error_kind
            kind = rec.error_kind or "error"
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        self.latency_sum += rec.latency_ms
        self.recent.append(rec.latency_ms)
        self.tokens_in += rec.tokens_in
        self.tokens_out += rec.tokens_out
        self.cost += rec.cost
        self.last_request_at = rec.at

    def p95(self) -> float | None:
        # Sorting the recent samples per endpoint per listing adds up with hundreds of
        # endpoints: recomputed only when requests came in since.
        counted, value = self._p95
        if counted != self.requests:
            value = _round(percentile(list(self.recent), 0.95))
            self._p95 = (self.requests, value)
        return value

    def snapshot(self, in_flight: int = 0) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "success_rate": success_rate(self.requests, self.errors),
            "avg_latency_ms": round(self.latency_sum / self.requests, 2) if self.requests else None,
            "p95_latency_ms": self.p95(),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost": round(self.cost, 6),
            "in_flight": in_flight,
            "last_error": self.last_error,
        }


def success_rate(requests: int, errors: int) -> float | None:
    return round(100.0 * (requests - errors) / requests, 2) if requests else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class RateWindow:
    """Requests per second over the last minute, from per-second slots."""

    def __init__(self) -> None:
        self._slots: deque[list[int]] = deque()

    def hit(self, now: float) -> None:
        second = int(now)
        if self._slots and self._slots[-1][0] == second:
            self._slots[-1][1] += 1
        else:
            self._slots.append([second, 1])
        self._trim(second)

    def _trim(self, second: int) -> None:
        while self._slots and self._slots[0][0] <= second - RATE_WINDOW_S:
            self._slots.popleft()

    def per_second(self, now: float, started_at: float) -> float:
        self._trim(int(now))
        window = min(RATE_WINDOW_S, max(1.0, now - started_at))
        return round(sum(count for _, count in self._slots) / window, 3)


class LatencyTotals:
    """Since the process started: counts per latency bound and their sum (for /metrics).

    Folded in by the writer from the batches it aggregates anyway, so the request path pays
    nothing for them; they trail the live counters by at most one flush interval.
    """

    __slots__ = ("counts", "sum_ms", "max_ms")

    def __init__(self) -> None:
        self.counts = [0] * len(LATENCY_BOUNDS_MS)
        self.sum_ms = 0.0
        self.max_ms = 0.0

    def fold(self, bucket: BucketTotals) -> None:
        for index, n in enumerate(bucket.hist):
            self.counts[index] += n
        self.sum_ms += bucket.latency_sum
        self.max_ms = max(self.max_ms, bucket.latency_max)


class MetricsHub:
    def __init__(
        self,
        store: Store,
        *,
        log_requests: bool = True,
        queue_size: int = 50_000,
        flush_interval: float = 1.0,
        batch_size: int = 2_000,
        instance: str = UNRECORDED_INSTANCE,
    ) -> None:
        self.store = store
        self.instance = instance
        self.log_requests = log_requests
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.started_at = time.time()
        self.stats: dict[str, EndpointStats] = {}
        self.latency: dict[str, LatencyTotals] = {}
        self.totals = EndpointStats()
        self.rate = RateWindow()
        self.queue: deque[RequestRecord] = deque(maxlen=queue_size)
        self.dropped = 0
        self.written = 0
        self.store_errors = 0  # requests that failed because the store was unavailable
        self._wakeup = asyncio.Event()

    # ---- the request path ------------------------------------------------------------------

    def record(self, rec: RequestRecord) -> None:
        stats = self.stats.get(rec.endpoint_id)
        if stats is None:
            stats = self.stats[rec.endpoint_id] = EndpointStats()
        stats.add(rec)
        self.totals.add(rec)
        self.rate.hit(rec.at)
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1  # the oldest record falls out; counters above still have it
        self.queue.append(rec)

    # ---- reading ---------------------------------------------------------------------------

    def endpoint_snapshot(self, endpoint_id: str, in_flight: int = 0) -> dict[str, Any]:
        return self.stats.get(endpoint_id, EndpointStats()).snapshot(in_flight)

    def system_snapshot(self) -> dict[str, Any]:
        now = time.time()
        snap = self.totals.snapshot()
        snap.pop("in_flight", None)
        snap.pop("last_error", None)
        snap["total_requests"] = snap.pop("requests")
        snap["requests_per_second"] = self.rate.per_second(now, self.started_at)
        snap["uptime_seconds"] = round(now - self.started_at, 1)
        snap["metrics_queue_depth"] = len(self.queue)
        snap["metrics_dropped"] = self.dropped
        snap["store_errors"] = self.store_errors
        return snap

    def forget(self, endpoint_id: str) -> None:
        self.stats.pop(endpoint_id, None)
        self.latency.pop(endpoint_id, None)

    def load_history(self) -> None:
        """Seed per-endpoint counters from this instance's stored buckets so a restart keeps
        its totals (the instance's name outlives the process).

        Only its own rows: the other instances count theirs, and a sum over instances (a
        Prometheus query, say) counts every request once. The rows from before buckets named
        an instance belong to a single-instance store's one instance (SQLite); on a shared
        store nobody can tell whose they were, so they stay in the reports only.
        """
        columns: tuple[Any, ...] = (
            MetricBucket.endpoint_id,
            func.sum(MetricBucket.requests),
            func.sum(MetricBucket.errors),
            func.sum(MetricBucket.latency_sum_ms),
            func.sum(MetricBucket.tokens_in),
            func.sum(MetricBucket.tokens_out),
            func.sum(MetricBucket.cost),
        )
        mine = [self.instance]
        if self.store.engine.dialect.name == "sqlite":
            mine.append(UNRECORDED_INSTANCE)
        stmt = sa_select(*columns).where(col(MetricBucket.instance).in_(mine))
        with self.store.session() as session:
            rows = session.execute(stmt.group_by(MetricBucket.endpoint_id)).all()
        for endpoint_id, requests, errors, latency, t_in, t_out, cost in rows:
            stats = self.stats.setdefault(endpoint_id, EndpointStats())
            stats.requests, stats.errors = int(requests or 0), int(errors or 0)
            stats.latency_sum = float(latency or 0)
            stats.tokens_in, stats.tokens_out = int(t_in or 0), int(t_out or 0)
            stats.cost = float(cost or 0)

    # ---- the writer ------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def flush(self) -> int:
        """Write the records queued when the flush began.

        Records that arrive while it writes wait for the next flush: a busy gateway writes a
        few large batches a second, not a stream of small ones (each a transaction and two
        bucket merges) that would keep this thread, and the interpreter, busy.
        """
        written = 0
        left = len(self.queue)
        while self.queue and left > 0:
            size = min(self.batch_size, left, len(self.queue))
            left -= size
            batch = [self.queue.popleft() for _ in range(size)]
            try:
                await asyncio.to_thread(self._write, batch)
            except Exception as exc:  # noqa: BLE001 - a bad batch must not kill the writer
                if store_is_away(exc) and self._requeue(batch):
                    # The store is away (a restart, a network blip): the records wait, in
                    # order, in the bounded queue, and the next flush tries again.
                    log.warning("store unavailable; %d request records kept for later", len(batch))
                    break
                self._drop(batch, exc)
                continue
            written += len(batch)
        self.written += written
        return written

    def _drop(self, batch: list[RequestRecord], exc: Exception) -> None:
        self.dropped += len(batch)
        if store_is_away(exc):
            log.error("store unavailable and the queue is full; %d records dropped", len(batch))
        else:
            log.error("writing %d request records failed; they are dropped", len(batch),
                      exc_info=exc)  # fmt: skip

    def _requeue(self, batch: list[RequestRecord]) -> bool:
        maxlen = self.queue.maxlen or 0
        if len(self.queue) + len(batch) > maxlen:
            return False
        self.queue.extendleft(reversed(batch))
        return True

    def _write(self, batch: list[RequestRecord]) -> None:
        buckets = aggregate_buckets(batch)
        try:
            self._write_once(batch, buckets)
        except IntegrityError:
            # Another writer under the same instance name (a second hub in one process, or a
            # misconfigured twin) created one of these rows at the same moment; the
            # transaction rolled back whole, and this time the row exists to lock and update.
            self._write_once(batch, buckets)
        # After the write: a batch that failed is queued again and would count twice.
        self._fold_latency(buckets)

    def _write_once(
        self, batch: list[RequestRecord], buckets: dict[tuple[str, datetime], BucketTotals]
    ) -> None:
        with self.store.session() as session:
            if self.log_requests:
                insert_request_log(session.connection(), batch)
            merge_buckets(session, buckets, self.instance)
            session.commit()

    def _fold_latency(self, buckets: dict[tuple[str, datetime], BucketTotals]) -> None:
        for (endpoint_id, _minute), bucket in buckets.items():
            totals = self.latency.get(endpoint_id)
            if totals is None:
                totals = self.latency[endpoint_id] = LatencyTotals()
            totals.fold(bucket)


_LOG_COLUMNS = (
    "endpoint_id",
    "session_id",
    "at",
    "ok",
    "error_kind",
    "status_code",
    "latency_ms",
    "ttft_ms",
    "tokens_in",
    "tokens_out",
    "tokens_estimated",
    "cost",
    "streamed",
)
# Rows per multi-row INSERT on SQLite (fewer when the library allows fewer variables).
SQLITE_ROWS_PER_INSERT = 200
_SQLITE_LEGACY_VARIABLE_LIMIT = 999


def insert_request_log(connection: Connection, batch: list[RequestRecord]) -> None:
    """Write a batch's RequestLog rows, as cheaply for the request path as the store allows.

    This thread shares the interpreter with the request path. On SQLite, a row per statement
    execution (an executemany) hands the interpreter lock back and forth once per row; a few
    multi-row INSERTs of plain tuples, their times already in the text form SQLAlchemy stores
    (naive UTC, microseconds), hand it over a few times per batch and skip the per-row bind
    processing. Other stores get one Core executemany (psycopg pipelines it).
    """
    if connection.dialect.name != "sqlite":
        connection.execute(_REQUEST_LOG.insert(), [_log_row(r) for r in batch])
        return
    per_statement = _sqlite_rows_per_insert(connection)
    for start in range(0, len(batch), per_statement):
        rows = batch[start : start + per_statement]
        values: list[Any] = []
        for r in rows:
            at = datetime.fromtimestamp(r.at, UTC).replace(tzinfo=None)
            values += (r.endpoint_id, r.session_id, at.isoformat(" ", "microseconds"), r.ok,
                       r.error_kind, r.status_code, r.latency_ms, r.ttft_ms, r.tokens_in,
                       r.tokens_out, r.tokens_estimated, r.cost, r.streamed)  # fmt: skip
        connection.exec_driver_sql(_sqlite_insert_sql(len(rows)), tuple(values))


@functools.cache
def _sqlite_insert_sql(rows: int) -> str:
    one = "(" + ", ".join("?" * len(_LOG_COLUMNS)) + ")"
    names = ", ".join(_LOG_COLUMNS)
    return f"INSERT INTO request_log ({names}) VALUES " + ", ".join([one] * rows)


def _sqlite_rows_per_insert(connection: Connection) -> int:
    getlimit = getattr(connection.connection.dbapi_connection, "getlimit", None)
    limit = _SQLITE_LEGACY_VARIABLE_LIMIT
    if getlimit is not None:  # Python 3.11+
        limit = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, min(SQLITE_ROWS_PER_INSERT, limit // len(_LOG_COLUMNS)))


def _log_row(rec: RequestRecord) -> dict[str, Any]:
    return {
        "endpoint_id": rec.endpoint_id,
        "session_id": rec.session_id,
        "at": datetime.fromtimestamp(rec.at, UTC),
        "ok": rec.ok,
        "error_kind": rec.error_kind,
        "status_code": rec.status_code,
        "latency_ms": rec.latency_ms,
        "ttft_ms": rec.ttft_ms,
        "tokens_in": rec.tokens_in,
        "tokens_out": rec.tokens_out,
        "tokens_estimated": rec.tokens_estimated,
        "cost": rec.cost,
        "streamed": rec.streamed,
    }


class BucketTotals:
    """One minute of one endpoint, accumulated in plain Python (cheap per record)."""

    __slots__ = (
        "requests",
        "errors",
        "latency_sum",
        "latency_max",
        "tokens_in",
        "tokens_out",
        "cost",
        "hist",
        "ttft_sum",
        "ttft_count",
        "error_kinds",
    )

    def __init__(self) -> None:
        self.requests = self.errors = self.tokens_in = self.tokens_out = self.ttft_count = 0
        self.latency_sum = self.latency_max = self.cost = self.ttft_sum = 0.0
        self.hist = [0] * len(LATENCY_BOUNDS_MS)
        self.error_kinds: dict[str, int] = {}

    def add(self, rec: RequestRecord) -> None:
        self.requests += 1
        self.errors += 0 if rec.ok else 1
        self.latency_sum += rec.latency_ms
        self.latency_max = max(self.latency_max, rec.latency_ms)
        self.tokens_in += rec.tokens_in
        self.tokens_out += rec.tokens_out
        self.cost += rec.cost
        self.hist[bisect.bisect_left(LATENCY_BOUNDS_MS, rec.latency_ms)] += 1
        if rec.ttft_ms is not None:
            self.ttft_sum += rec.ttft_ms
            self.ttft_count += 1
        if not rec.ok:
            kind = rec.error_kind or "error"
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def merge(self, other: BucketTotals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency_sum += other.latency_sum
        self.latency_max = max(self.latency_max, other.latency_max)
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cost += other.cost
        self.hist = [a + b for a, b in zip(self.hist, other.hist, strict=True)]
        self.ttft_sum += other.ttft_sum
        self.ttft_count += other.ttft_count
        self.error_kinds = _merged_kinds(self.error_kinds, other.error_kinds)


def _merged_kinds(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    merged = dict(a)
    for kind, count in b.items():
        merged[kind] = merged.get(kind, 0) + count
    return merged


def aggregate_buckets(batch: list[RequestRecord]) -> dict[tuple[str, datetime], BucketTotals]:
    buckets: dict[tuple[str, datetime], BucketTotals] = {}
    minutes: dict[int, datetime] = {}
    for rec in batch:
        minute_key = int(rec.at // 60) * 60
        minute = minutes.get(minute_key)
        if minute is None:
            minute = minutes[minute_key] = datetime.fromtimestamp(minute_key, UTC)
        key = (rec.endpoint_id, minute)
        totals = buckets.get(key)
        if totals is None:
            totals = buckets[key] = BucketTotals()
        totals.add(rec)
    return buckets


def merge_buckets(
    session: Any,
    buckets: dict[tuple[str, datetime], BucketTotals],
    instance: str = UNRECORDED_INSTANCE,
) -> None:
    """Add a batch's per-minute totals into ``instance``'s minute and hour rows."""
    hours: dict[tuple[str, datetime], BucketTotals] = {}
    for (endpoint_id, minute), fresh in buckets.items():
        _merge_row(session, MetricBucket, "minute", (endpoint_id, instance, minute), fresh)
        hour = hours.setdefault((endpoint_id, minute.replace(minute=0)), BucketTotals())
        hour.merge(fresh)
    for (endpoint_id, hour_at), totals in hours.items():
        _merge_row(session, MetricHourBucket, "hour", (endpoint_id, instance, hour_at), totals)


def _merge_row(
    session: Any, model: Any, time_field: str, key: tuple[str, str, datetime], fresh: BucketTotals
) -> None:
    endpoint_id, instance, at = key
    stmt = select(model).where(
        model.endpoint_id == endpoint_id,
        model.instance == instance,
        getattr(model, time_field) == at,
    )
    row = session.exec(stmt.with_for_update()).first()
    if row is None:
        row = model(
            endpoint_id=endpoint_id, instance=instance, latency_hist=[0] * len(LATENCY_BOUNDS_MS)
        )
        setattr(row, time_field, at)
    row.requests += fresh.requests
    row.errors += fresh.errors
    row.latency_sum_ms += fresh.latency_sum
    row.latency_max_ms = max(row.latency_max_ms, fresh.latency_max)
    row.tokens_in += fresh.tokens_in
    row.tokens_out += fresh.tokens_out
    row.cost += fresh.cost
    old = list(row.latency_hist) or [0] * len(LATENCY_BOUNDS_MS)
    row.latency_hist = [a + b for a, b in zip(old, fresh.hist, strict=True)]
    row.ttft_sum_ms += fresh.ttft_sum
    row.ttft_count += fresh.ttft_count
    if fresh.error_kinds:
        row.error_kinds = _merged_kinds(row.error_kinds or {}, fresh.error_kinds)
    session.add(row)


_SUMMED_COLUMNS = (
    "requests",
    "errors",
    "latency_sum_ms",
    "tokens_in",
    "tokens_out",
    "cost",
    "ttft_sum_ms",
    "ttft_count",
)


def merge_instance_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One endpoint's bucket rows (as dicts, ordered by minute) with the instances' rows of a
    minute added together; ``instances`` names whose they were."""
    merged: list[dict[str, Any]] = []
    for row in rows:
        instance = row.pop("instance", UNRECORDED_INSTANCE)
        last = merged[-1] if merged else None
        if last is None or last["minute"] != row["minute"]:
            merged.append({**row, "instances": [instance]})
            continue
        for name in _SUMMED_COLUMNS:
            last[name] += row[name]
        last["latency_max_ms"] = max(last["latency_max_ms"], row["latency_max_ms"])
        last["latency_hist"] = [
            a + b for a, b in zip(last["latency_hist"], row["latency_hist"], strict=True)
        ]
        last["error_kinds"] = _merged_kinds(last["error_kinds"] or {}, row["error_kinds"] or {})
        last["instances"].append(instance)
    return merged
