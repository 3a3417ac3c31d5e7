"""/system/metrics over the cluster: this instance's live counters plus the others' buckets.

The window is "since this instance started", as the figures always were. This instance's part
comes from memory: exact, current, and there while the store is away. Every other instance's
part comes from its per-minute buckets (each instance writes rows under its own name), read at
most every ``refresh_s`` and kept incrementally: minutes older than ``settle_s`` are summed once
into a running base (whole hours from the hourly rollup), and a refresh reads only the recent
tail again. So most calls touch no bucket at all, and a refresh reads a few minutes of rows
however long the instance has run.

A bucket written later than ``settle_s`` after its minute (a writer that waited out a long
store outage) is not seen here until this instance restarts; the reports read the buckets
themselves and always see it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from runtime.chat import STORE_ERRORS
from runtime.metrics import MetricsHub, success_rate
from runtime.reports import Source, Sums, aggregate_columns, hist_percentile
from store.db import Store
from store.models import MetricBucket, MetricHourBucket

REFRESH_S = 2.0
SETTLE_S = 600
RATE_WINDOW_S = 60
_BUCKET = MetricBucket.__table__  # type: ignore[attr-defined]
_HOUR = MetricHourBucket.__table__  # type: ignore[attr-defined]


def _minute_floor(epoch: float) -> datetime:
    return datetime.fromtimestamp(int(epoch // 60) * 60, UTC)


def _aware(value: datetime) -> datetime:
    # Core queries skip the ORM type's conversion on some drivers; stored values are UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


MINUTES = Source(_BUCKET, _BUCKET.c.minute)
HOURS = Source(_HOUR, _HOUR.c.hour)


def _spans(start: datetime, end: datetime) -> list[tuple[Source, datetime, datetime]]:
    """[start, end) as minute rows at the ragged ends and hourly rows for the whole hours
    between (60x fewer rows when this instance has run for long before the first read)."""
    if end <= start:
        return []
    first_hour = start.replace(minute=0) + (timedelta(hours=1) if start.minute else timedelta())
    last_hour = end.replace(minute=0)
    if first_hour >= last_hour:
        return [(MINUTES, start, end)]
    spans = [
        (MINUTES, start, first_hour),
        (HOURS, first_hour, last_hour),
        (MINUTES, last_hour, end),
    ]
    return [(source, a, b) for source, a, b in spans if a < b]


class PeerSums:
    """The other instances' bucket sums since ``since``, refreshed incrementally."""

    def __init__(self, store: Store, me: str, since: datetime, settle_s: float) -> None:
        self.store = store
        self.me = me
        self.since = since
        self.settle_s = settle_s
        self.settled = since  # minutes before this are in ``base`` for good
        self.base: dict[str, Sums] = {}
        self.tail: dict[str, Sums] = {}
        self.recent: dict[str, int] = {}  # requests in the rate window, per instance

    def refresh(self, now: float) -> None:
        """Read the newly settled minutes into the base and the tail afresh; all or nothing."""
        settle_to = max(self.settled, _minute_floor(now - self.settle_s))
        recent_from = _minute_floor(now - RATE_WINDOW_S)
        dialect = self.store.engine.dialect.name
        settled: dict[str, Sums] = {}
        tail: dict[str, Sums] = {}
        recent: dict[str, int] = {}
        with self.store.engine.connect() as conn:
            for source, start, end in _spans(self.settled, settle_to):
                for row in conn.execute(self._query(dialect, source, start, end)):
                    settled.setdefault(row.instance, Sums()).add(Sums.of(row))
            tail_query = self._query(dialect, MINUTES, settle_to, None, by_minute=True)
            for row in conn.execute(tail_query):
                tail.setdefault(row.instance, Sums()).add(Sums.of(row))
                if _aware(row.minute) >= recent_from:
                    recent[row.instance] = recent.get(row.instance, 0) + int(row.requests or 0)
        for name, sums in settled.items():
            self.base.setdefault(name, Sums()).add(sums)
        self.settled, self.tail, self.recent = settle_to, tail, recent

    def _query(
        self,
        dialect: str,
        source: Source,
        start: datetime,
        end: datetime | None,
        by_minute: bool = False,
    ) -> Any:
        table = source.table
        keys = [table.c.instance, *([source.at] if by_minute else [])]
        where = [source.at >= start, table.c.instance != self.me]
        if end is not None:
            where.append(source.at < end)
        return sa.select(*keys, *aggregate_columns(source, dialect)).where(*where).group_by(*keys)

    def totals(self) -> dict[str, Sums]:
        result: dict[str, Sums] = {}
        for part in (self.base, self.tail):
            for name, sums in part.items():
                result.setdefault(name, Sums()).add(sums)
        return result


class ClusterTotals:
    """What /system/metrics says about traffic: the cluster's, or one instance's."""

    def __init__(
        self,
        store: Store,
        hub: MetricsHub,
        *,
        refresh_s: float = REFRESH_S,
        settle_s: float = SETTLE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hub = hub
        self.refresh_s = refresh_s
        self.clock = clock
        self.peers = PeerSums(store, hub.instance, _minute_floor(hub.started_at), settle_s)
        self.as_of: float | None = None  # when the others' figures were last read
        self._tried_at: float | None = None
        self._lock = asyncio.Lock()

    async def snapshot(self, instance: str | None = None) -> dict[str, Any]:
        """Traffic figures since this instance started, over every instance or ``instance``."""
        # Held while reading too: a refresh updates the sums in a worker thread.
        async with self._lock:
            await self._refresh()
            return self._figures_for(instance)

    def _figures_for(self, instance: str | None) -> dict[str, Any]:
        others = self.peers.totals()
        me = self.hub.instance
        if instance == me:
            figures, covered = self._local(), [me]
        elif instance is not None:
            figures = self._merged(None, {instance: others[instance]} if instance in others else {})
            covered = [instance] if instance in others else []
        else:
            figures, covered = self._merged(self.hub, others), [me, *sorted(others)]
        return {
            **figures,
            "instance": me,
            "instances": covered,
            "since": self.peers.since.isoformat(),
            "others_as_of": _iso(self.as_of),
            "by_instance": self._by_instance(others) if instance is None else None,
        }

    async def _refresh(self) -> None:
        now = self.clock()
        if self._tried_at is not None and now - self._tried_at < self.refresh_s:
            return
        self._tried_at = now
        try:
            await asyncio.to_thread(self.peers.refresh, now)
        except STORE_ERRORS:
            # The store is away: the last figures stand, and ``others_as_of`` dates them.
            self.hub.store_errors += 1
            return
        self.as_of = now

    def _by_instance(self, others: dict[str, Sums]) -> dict[str, dict[str, Any]]:
        keys = ("total_requests", "errors", "success_rate", "requests_per_second")
        parts = {self.hub.instance: self._local()}
        for name, sums in others.items():
            parts[name] = self._merged(None, {name: sums})
        return {name: {k: figures[k] for k in keys} for name, figures in sorted(parts.items())}

    def _local(self) -> dict[str, Any]:
        snap = self.hub.system_snapshot()
        keys = (
            "total_requests",
            "errors",
            "success_rate",
            "avg_latency_ms",
            "p95_latency_ms",
            "tokens_in",
            "tokens_out",
            "cost",
            "requests_per_second",
        )
        return {key: snap[key] for key in keys}

    def _merged(self, hub: MetricsHub | None, others: dict[str, Sums]) -> dict[str, Any]:
        """This instance's live counters (when ``hub``) plus the others' bucket sums."""
        now = self.clock()
        total = Sums()
        for sums in others.values():
            total.add(sums)
        rate = sum(self.peers.recent.get(name, 0) for name in others) / self._rate_span(now)
        if hub is None:
            return _figures(total, rate, hist_percentile(total.hist, 0.95, total.latency_max))
        others_requests = total.requests
        total.add(_local_sums(hub))
        rate += hub.rate.per_second(now, hub.started_at)
        if others_requests == 0:
            p95 = hub.totals.p95()  # this instance alone: the exact figure from its samples
        else:
            p95 = hist_percentile(total.hist, 0.95, total.latency_max)
        return _figures(total, rate, p95)

    def _rate_span(self, now: float) -> float:
        """Seconds the others' recent minutes cover (buckets are per minute)."""
        start = max(_minute_floor(now - RATE_WINDOW_S), self.peers.since)
        return max(1.0, now - start.timestamp())


def _local_sums(hub: MetricsHub) -> Sums:
    """This instance's counters as bucket sums; its histogram trails them by one flush."""
    stats = hub.totals
    sums = Sums(
        requests=stats.requests,
        errors=stats.errors,
        latency_sum=stats.latency_sum,
        tokens_in=stats.tokens_in,
        tokens_out=stats.tokens_out,
        cost=stats.cost,
    )
    for latency in hub.latency.values():
        sums.hist = [a + b for a, b in zip(sums.hist, latency.counts, strict=True)]
        sums.latency_max = max(sums.latency_max, latency.max_ms)
    return sums


def _figures(total: Sums, rate: float, p95: float | None) -> dict[str, Any]:
    requests = total.requests
    return {
        "total_requests": requests,
        "errors": total.errors,
        "success_rate": success_rate(requests, total.errors),
        "avg_latency_ms": round(total.latency_sum / requests, 2) if requests else None,
        "p95_latency_ms": p95,
        "tokens_in": total.tokens_in,
        "tokens_out": total.tokens_out,
        "cost": round(total.cost, 6),
        "requests_per_second": round(rate, 3),
    }


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()
