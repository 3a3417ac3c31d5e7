"""Reports: time series and per-endpoint totals computed in SQL from the per-minute buckets.

Nothing here reads RequestLog. Every instance of a cluster writes its own bucket rows; a report
sums them all (the cluster) or reads one instance's (``instance``), and names the instances it
covers. One scan of the bucket table sums one row per (endpoint, step) before anything reaches
Python: the per-minute buckets, or their hourly rollup when the step is whole hours (a week is
then 168 rows per endpoint instead of 10,080). The series over all endpoints and the
per-endpoint totals are merged from those rows, histograms included. Latency percentiles come
from the summed bucket histograms (bounds in ``LATENCY_BOUNDS_MS``); uptime comes from the state
history (EndpointEvent rows).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlmodel import col, select

from runtime.metrics import LATENCY_BOUNDS_MS
from store.db import Store
from store.models import LIVE_STATES, Endpoint, EndpointEvent, MetricBucket, MetricHourBucket

PERCENTILES = (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99))
_BUCKET = MetricBucket.__table__  # type: ignore[attr-defined]
_HOUR = MetricHourBucket.__table__  # type: ignore[attr-defined]
_HIST_COLUMNS = len(LATENCY_BOUNDS_MS)


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    start: datetime
    end: datetime
    step_s: int
    endpoint_ids: tuple[str, ...] = ()
    group: str | None = None
    # Slots start at multiples of the step (aligned) or at ``start`` (rolling windows).
    align: bool = True
    # One instance's traffic; None: every instance's, summed.
    instance: str | None = None

    @property
    def origin(self) -> int:
        return 0 if self.align else int(self.start.timestamp())


# ---- percentiles from histograms -------------------------------------------------------------


def hist_percentile(hist: Sequence[int], q: float, max_ms: float) -> float | None:
    """The q-quantile of a latency histogram, interpolated linearly inside its bucket.

    The open last bucket (above the largest bound) is closed by the largest latency seen.
    """
    total = sum(hist)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(hist):
        if count and seen + count >= rank:
            low = LATENCY_BOUNDS_MS[index - 1] if index else 0.0
            high = LATENCY_BOUNDS_MS[index]
            if math.isinf(high):
                high = max(max_ms, low)
            high = min(high, max_ms) if max_ms > low else high
            return round(low + (high - low) * (rank - seen) / count, 2)
        seen += count
    return round(max_ms, 2)


# ---- SQL ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """The bucket table a query reads and its time column."""

    table: sa.Table
    at: Any

    @classmethod
    def for_query(cls, query: SeriesQuery) -> Source:
        # Whole-hour steps starting on the hour read the hourly rollup: 60x fewer rows.
        if query.step_s % 3600 == 0 and int(query.start.timestamp()) % 3600 == 0:
            return cls(_HOUR, _HOUR.c.hour)
        return cls(_BUCKET, _BUCKET.c.minute)


def _epoch_seconds(dialect: str, column: Any) -> Any:
    if dialect == "sqlite":
        # unixepoch() is several times faster than strftime('%s') on a large scan.
        if sqlite3.sqlite_version_info >= (3, 38):
            return sa.func.unixepoch(column)
        return sa.cast(sa.func.strftime("%s", column), sa.Integer)
    return sa.cast(sa.func.floor(sa.extract("epoch", column)), sa.BigInteger)


def _slot(dialect: str, query: SeriesQuery, source: Source) -> Any:
    # Integer division by the step puts every bucket into its step's slot.
    since_origin = _epoch_seconds(dialect, source.at) - query.origin
    return since_origin // query.step_s * query.step_s + query.origin


def _window(query: SeriesQuery, source: Source, endpoint_ids: Sequence[str] | None) -> list:
    where = [source.at >= query.start, source.at < query.end]
    if endpoint_ids is not None:
        where.append(source.table.c.endpoint_id.in_(list(endpoint_ids)))
    if query.instance is not None:
        where.append(source.table.c.instance == query.instance)
    return where


def _instance_names(conn: Any, query: SeriesQuery, ids: Sequence[str] | None) -> list[str]:
    """The instances whose buckets the window holds: the ones a report covers."""
    source = Source.for_query(query)
    name = source.table.c.instance
    stmt = sa.select(name).where(*_window(query, source, ids)).group_by(name).order_by(name)
    return list(conn.execute(stmt).scalars())


def _hist_element(dialect: str, column: Any, index: int) -> Any:
    if dialect == "sqlite":
        # json_extract already yields an integer; a CAST per element costs a third more.
        return sa.func.json_extract(column, f"$[{index}]")
    return column[index].as_integer()


def aggregate_columns(source: Source, dialect: str) -> list[Any]:
    c = source.table.c
    hist = [
        sa.func.sum(_hist_element(dialect, c.latency_hist, i)).label(f"h{i}")
        for i in range(_HIST_COLUMNS)
    ]
    return [
        sa.func.sum(c.requests).label("requests"),
        sa.func.sum(c.errors).label("errors"),
        sa.func.sum(c.latency_sum_ms).label("latency_sum"),
        sa.func.max(c.latency_max_ms).label("latency_max"),
        sa.func.sum(c.tokens_in).label("tokens_in"),
        sa.func.sum(c.tokens_out).label("tokens_out"),
        sa.func.sum(c.cost).label("cost"),
        sa.func.sum(c.ttft_sum_ms).label("ttft_sum"),
        sa.func.sum(c.ttft_count).label("ttft_count"),
        *hist,
    ]


def _error_kind_rows(conn: Any, dialect: str, query: SeriesQuery, ids: Sequence[str] | None):
    """(slot, kind, count) summed in SQL over the JSON objects of the buckets with errors."""
    source = Source.for_query(query)
    each = "json_each" if dialect == "sqlite" else "json_each_text"
    kinds = getattr(sa.func, each)(source.table.c.error_kinds).table_valued("key", "value")
    slot = _slot(dialect, query, source).label("slot")
    count = sa.func.sum(sa.cast(kinds.c.value, sa.Integer)).label("count")
    stmt = (
        sa.select(slot, kinds.c.key, count)
        .select_from(source.table.join(kinds, sa.true()))
        .where(*_window(query, source, ids), source.table.c.errors > 0)
        .group_by(slot, kinds.c.key)
        .order_by(slot)
    )
    return conn.execute(stmt).all()


# ---- shaping -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Sums:
    """Summed bucket columns of one (endpoint, slot), or merged over several."""

    requests: int = 0
    errors: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    ttft_sum: float = 0.0
    ttft_count: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * _HIST_COLUMNS)

    @classmethod
    def of(cls, row: Row[Any]) -> Sums:
        return cls(
            int(row.requests or 0),
            int(row.errors or 0),
            float(row.latency_sum or 0),
            float(row.latency_max or 0),
            int(row.tokens_in or 0),
            int(row.tokens_out or 0),
            float(row.cost or 0),
            float(row.ttft_sum or 0),
            int(row.ttft_count or 0),
            [int(getattr(row, f"h{i}") or 0) for i in range(_HIST_COLUMNS)],
        )

    def add(self, other: Sums) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency_sum += other.latency_sum
        self.latency_max = max(self.latency_max, other.latency_max)
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cost += other.cost
        self.ttft_sum += other.ttft_sum
        self.ttft_count += other.ttft_count
        self.hist = [a + b for a, b in zip(self.hist, other.hist, strict=True)]

    def point(self, span_s: int) -> dict[str, Any]:
        requests, errors = self.requests, self.errors
        point: dict[str, Any] = {
            "requests": requests,
            "errors": errors,
            "rps": round(requests / span_s, 4),
            "success_rate": round(100.0 * (requests - errors) / requests, 2) if requests else None,
            "latency_avg_ms": round(self.latency_sum / requests, 2) if requests else None,
            "ttft_avg_ms": round(self.ttft_sum / self.ttft_count, 2) if self.ttft_count else None,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost": round(self.cost, 8),
        }
        for name, q in PERCENTILES:
            point[name] = hist_percentile(self.hist, q, self.latency_max)
        return point


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _cost_per_1k_ok(total: dict[str, Any]) -> float | None:
    ok = total["requests"] - total["errors"]
    return round(1000.0 * total["cost"] / ok, 6) if ok else None


# ---- uptime from the state history -----------------------------------------------------------


def uptime_percent(
    initial: str | None, changes: Sequence[tuple[datetime, str]], start: datetime, end: datetime
) -> float | None:
    """Share of [start, end) spent in a live state, given the state at ``start`` and changes."""
    span = (end - start).total_seconds()
    if span <= 0:
        return None
    up, state, since = 0.0, initial, start
    for at, to_state in changes:
        at = min(max(at, start), end)
        if state in LIVE_STATES:
            up += (at - since).total_seconds()
        state, since = to_state, at
    if state in LIVE_STATES:
        up += (end - since).total_seconds()
    return round(100.0 * up / span, 2)


def _shape(cells: list[tuple[str, int, Sums]], query: SeriesQuery) -> dict[str, list]:
    """Points per endpoint, points over all endpoints (histograms merged), totals per endpoint."""
    overall: dict[int, Sums] = {}
    totals: dict[str, Sums] = {}
    points = []
    for endpoint_id, slot, sums in cells:
        points.append({"t": _iso(slot), "endpoint_id": endpoint_id, **sums.point(query.step_s)})
        overall.setdefault(slot, Sums()).add(sums)
        totals.setdefault(endpoint_id, Sums()).add(sums)
    span_s = max(1, int((query.end - query.start).total_seconds()))
    total_rows = []
    for endpoint_id, sums in totals.items():
        total = {"endpoint_id": endpoint_id, **sums.point(span_s)}
        total["cost_per_1k_ok"] = _cost_per_1k_ok(total)
        total_rows.append(total)
    return {
        "points": points,
        "overall": [
            {"t": _iso(slot), **overall[slot].point(query.step_s)} for slot in sorted(overall)
        ],
        "totals": total_rows,
    }


class Reports:
    """Read-only aggregation over the store; every method hops to a worker thread itself."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def series(self, query: SeriesQuery) -> dict[str, Any]:
        return await asyncio.to_thread(self.series_sync, query)

    def series_sync(self, query: SeriesQuery) -> dict[str, Any]:
        endpoints = self._endpoints(query)
        ids = None if not (query.endpoint_ids or query.group) else list(endpoints)
        dialect = self.store.engine.dialect.name
        with self.store.engine.connect() as conn:
            cells = self._cells(conn, dialect, query, ids)
            error_rows = _error_kind_rows(conn, dialect, query, ids) if cells else []
            instances = _instance_names(conn, query, ids) if cells else []
        uptime = self._uptime(query, endpoints)
        for endpoint_id, info in endpoints.items():
            info["uptime_percent"] = uptime.get(endpoint_id)
        return {
            "from": query.start.isoformat(),
            "to": query.end.isoformat(),
            "step_seconds": query.step_s,
            "instance": query.instance,
            "instances": instances,
            "latency_bounds_ms": [None if math.isinf(b) else b for b in LATENCY_BOUNDS_MS],
            "endpoints": endpoints,
            **_shape(cells, query),
            "errors_by_kind": [
                {"t": _iso(int(slot)), "kind": kind, "count": int(count)}
                for slot, kind, count in error_rows
            ],
        }

    def _cells(
        self, conn: Any, dialect: str, query: SeriesQuery, ids: Any
    ) -> list[tuple[str, int, Sums]]:
        """One scan: the sums per (endpoint, slot); everything else is merged from these."""
        source = Source.for_query(query)
        slot = _slot(dialect, query, source).label("slot")
        endpoint_id = source.table.c.endpoint_id
        stmt = (
            sa.select(endpoint_id, slot, *aggregate_columns(source, dialect))
            .where(*_window(query, source, ids))
            .group_by(endpoint_id, slot)
            .order_by(slot, endpoint_id)
        )
        return [(row.endpoint_id, int(row.slot), Sums.of(row)) for row in conn.execute(stmt)]

    def _endpoints(self, query: SeriesQuery) -> dict[str, dict[str, Any]]:
        stmt = select(Endpoint)
        if query.endpoint_ids:
            stmt = stmt.where(col(Endpoint.id).in_(query.endpoint_ids))
        if query.group:
            stmt = stmt.where(Endpoint.group_name == query.group)
        with self.store.session() as session:
            rows = session.exec(stmt.order_by(col(Endpoint.priority), col(Endpoint.name))).all()
        return {
            row.id: {
                "name": row.name,
                "display_name": row.display_name or row.name,
                "group_name": row.group_name,
                "state": row.state,
                "created_at": row.created_at,
            }
            for row in rows
        }

    def _uptime(
        self, query: SeriesQuery, endpoints: dict[str, dict[str, Any]]
    ) -> dict[str, float | None]:
        if not endpoints:
            return {}
        before, changes = self._state_history(query, list(endpoints))
        result: dict[str, float | None] = {}
        for endpoint_id, info in endpoints.items():
            start = max(query.start, info.pop("created_at"))
            result[endpoint_id] = uptime_percent(
                before.get(endpoint_id), changes.get(endpoint_id, []), start, query.end
            )
        return result

    def _state_history(
        self, query: SeriesQuery, ids: list[str]
    ) -> tuple[dict[str, str], dict[str, list[tuple[datetime, str]]]]:
        ev = EndpointEvent.__table__  # type: ignore[attr-defined]
        has_state = ev.c.to_state.is_not(None)
        last_before = (
            sa.select(sa.func.max(ev.c.id))
            .where(ev.c.endpoint_id.in_(ids), ev.c.at < query.start, has_state)
            .group_by(ev.c.endpoint_id)
        )
        with self.store.engine.connect() as conn:
            initial = conn.execute(
                sa.select(ev.c.endpoint_id, ev.c.to_state).where(ev.c.id.in_(last_before))
            ).all()
            inside = conn.execute(
                sa.select(ev.c.endpoint_id, ev.c.at, ev.c.to_state)
                .where(ev.c.endpoint_id.in_(ids), ev.c.at >= query.start, ev.c.at < query.end)
                .where(has_state)
                .order_by(ev.c.id)
            ).all()
        changes: dict[str, list[tuple[datetime, str]]] = {}
        for endpoint_id, at, to_state in inside:
            changes.setdefault(endpoint_id, []).append((_aware(at), to_state))
        return {e: s for e, s in initial}, changes


def _aware(value: datetime) -> datetime:
    # Core queries skip the ORM type's conversion on some drivers; stored values are UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)
