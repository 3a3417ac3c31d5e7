"""Reports: time series and per-endpoint totals computed in SQL from the per-minute buckets.

Nothing here reads RequestLog: a week of traffic is at most 10,080 buckets per endpoint, and the
database sums them into one row per (endpoint, step) before anything reaches Python. Latency
percentiles come from the summed bucket histograms (bounds in ``LATENCY_BOUNDS_MS``); uptime
comes from the state history (EndpointEvent rows).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlmodel import col, select

from runtime.metrics import LATENCY_BOUNDS_MS
from store.db import Store
from store.models import LIVE_STATES, Endpoint, EndpointEvent, MetricBucket

PERCENTILES = (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99))
_BUCKET = MetricBucket.__table__  # type: ignore[attr-defined]
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


def _epoch_seconds(dialect: str, column: Any) -> Any:
    if dialect == "sqlite":
        return sa.cast(sa.func.strftime("%s", column), sa.Integer)
    return sa.cast(sa.func.floor(sa.extract("epoch", column)), sa.BigInteger)


def _slot(dialect: str, query: SeriesQuery) -> Any:
    # Integer division by the step puts every minute into its step's slot.
    since_origin = _epoch_seconds(dialect, _BUCKET.c.minute) - query.origin
    return since_origin // query.step_s * query.step_s + query.origin


def _hist_sums() -> list[Any]:
    hist = _BUCKET.c.latency_hist
    return [
        sa.func.coalesce(sa.func.sum(hist[i].as_integer()), 0).label(f"h{i}")
        for i in range(_HIST_COLUMNS)
    ]


def _window(query: SeriesQuery, endpoint_ids: Sequence[str] | None) -> list[Any]:
    where = [_BUCKET.c.minute >= query.start, _BUCKET.c.minute < query.end]
    if endpoint_ids is not None:
        where.append(_BUCKET.c.endpoint_id.in_(list(endpoint_ids)))
    return where


def _aggregate_columns() -> list[Any]:
    c = _BUCKET.c
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
        *_hist_sums(),
    ]


def _error_kind_rows(conn: Any, dialect: str, query: SeriesQuery, ids: Sequence[str] | None):
    """(slot, kind, count) summed in SQL over the JSON objects of the buckets with errors."""
    each = "json_each" if dialect == "sqlite" else "json_each_text"
    kinds = getattr(sa.func, each)(_BUCKET.c.error_kinds).table_valued("key", "value")
    slot = _slot(dialect, query).label("slot")
    count = sa.func.sum(sa.cast(kinds.c.value, sa.Integer)).label("count")
    stmt = (
        sa.select(slot, kinds.c.key, count)
        .select_from(_BUCKET.join(kinds, sa.true()))
        .where(*_window(query, ids), _BUCKET.c.errors > 0)
        .group_by(slot, kinds.c.key)
        .order_by(slot)
    )
    return conn.execute(stmt).all()


# ---- shaping -----------------------------------------------------------------------------------


def _point(row: Row[Any], step_s: int) -> dict[str, Any]:
    requests, errors = int(row.requests or 0), int(row.errors or 0)
    hist = [int(getattr(row, f"h{i}") or 0) for i in range(_HIST_COLUMNS)]
    max_ms = float(row.latency_max or 0)
    ttft_count = int(row.ttft_count or 0)
    point: dict[str, Any] = {
        "requests": requests,
        "errors": errors,
        "rps": round(requests / step_s, 4),
        "success_rate": round(100.0 * (requests - errors) / requests, 2) if requests else None,
        "latency_avg_ms": round(float(row.latency_sum) / requests, 2) if requests else None,
        "ttft_avg_ms": round(float(row.ttft_sum) / ttft_count, 2) if ttft_count else None,
        "tokens_in": int(row.tokens_in or 0),
        "tokens_out": int(row.tokens_out or 0),
        "cost": round(float(row.cost or 0), 8),
    }
    for name, q in PERCENTILES:
        point[name] = hist_percentile(hist, q, max_ms)
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
            points = self._points(conn, dialect, query, ids)
            overall = self._overall(conn, dialect, query, ids) if points else []
            totals = self._totals(conn, dialect, query, ids)
            error_rows = _error_kind_rows(conn, dialect, query, ids) if points else []
        uptime = self._uptime(query, endpoints)
        for endpoint_id, info in endpoints.items():
            info["uptime_percent"] = uptime.get(endpoint_id)
        return {
            "from": query.start.isoformat(),
            "to": query.end.isoformat(),
            "step_seconds": query.step_s,
            "latency_bounds_ms": [None if math.isinf(b) else b for b in LATENCY_BOUNDS_MS],
            "endpoints": endpoints,
            "points": points,
            "overall": overall,
            "totals": totals,
            "errors_by_kind": [
                {"t": _iso(int(slot)), "kind": kind, "count": int(count)}
                for slot, kind, count in error_rows
            ],
        }

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

    def _points(self, conn: Any, dialect: str, query: SeriesQuery, ids: Any) -> list[dict]:
        slot = _slot(dialect, query).label("slot")
        stmt = (
            sa.select(_BUCKET.c.endpoint_id, slot, *_aggregate_columns())
            .where(*_window(query, ids))
            .group_by(_BUCKET.c.endpoint_id, slot)
            .order_by(slot, _BUCKET.c.endpoint_id)
        )
        return [
            {"t": _iso(int(row.slot)), "endpoint_id": row.endpoint_id, **_point(row, query.step_s)}
            for row in conn.execute(stmt)
        ]

    def _overall(self, conn: Any, dialect: str, query: SeriesQuery, ids: Any) -> list[dict]:
        """All chosen endpoints as one: histograms merge, so percentiles stay exact per bin."""
        slot = _slot(dialect, query).label("slot")
        stmt = (
            sa.select(slot, *_aggregate_columns())
            .where(*_window(query, ids))
            .group_by(slot)
            .order_by(slot)
        )
        rows = conn.execute(stmt)
        return [{"t": _iso(int(row.slot)), **_point(row, query.step_s)} for row in rows]

    def _totals(self, conn: Any, dialect: str, query: SeriesQuery, ids: Any) -> list[dict]:
        span_s = max(1, int((query.end - query.start).total_seconds()))
        stmt = (
            sa.select(_BUCKET.c.endpoint_id, *_aggregate_columns())
            .where(*_window(query, ids))
            .group_by(_BUCKET.c.endpoint_id)
        )
        totals = []
        for row in conn.execute(stmt):
            total = {"endpoint_id": row.endpoint_id, **_point(row, span_s)}
            total["cost_per_1k_ok"] = _cost_per_1k_ok(total)
            totals.append(total)
        return totals

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
