"""GET /metrics in the Prometheus text format, read from the runtime's own counters.

Nothing here runs per request: the chat path already keeps per-endpoint counters
(runtime/metrics.py) and the concurrency gates know what is in flight. A scrape copies those
numbers on the event loop (cheap, and consistent with the loop's own updates), reads the
endpoints' states with one narrow query, and renders the text in a worker thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client import (
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import func
from sqlmodel import select

from runtime.events import EndpointEventNote, EventBus
from runtime.metrics import LATENCY_BOUNDS_MS, MetricsHub
from store.db import Store
from store.models import Endpoint, EndpointState, WebhookDelivery

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = [s.value for s in EndpointState]
LE = [("+Inf" if math.isinf(b) else repr(b / 1000)) for b in LATENCY_BOUNDS_MS]


class EjectionCounter:
    """Breaker ejections per endpoint since the process started: transitions into cooling."""

    def __init__(self, events: EventBus) -> None:
        self.counts: dict[str, int] = {}
        events.subscribe(self.on_event)

    def on_event(self, note: EndpointEventNote) -> None:
        if note.to_state == EndpointState.cooling and note.from_state != EndpointState.cooling:
            self.counts[note.endpoint_id] = self.counts.get(note.endpoint_id, 0) + 1


@dataclass(slots=True)
class EndpointSample:
    id: str
    name: str
    endpoint_type: str
    state: str
    requests: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    in_flight: int = 0
    latency_counts: list[int] | None = None
    latency_sum_s: float = 0.0
    ejections: int = 0


@dataclass(slots=True)
class Scrape:
    endpoints: list[EndpointSample]
    webhook_deliveries: dict[str, int]


def read_store(store: Store) -> tuple[list[tuple[str, str, str, str]], dict[str, int]]:
    """Every endpoint's id, name, type and state; webhook deliveries by status."""
    columns = select(Endpoint.id, Endpoint.name, Endpoint.endpoint_type, Endpoint.state)
    by_status = select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
    with store.session() as session:
        rows = [tuple(r) for r in session.exec(columns.order_by(Endpoint.name)).all()]
        deliveries = {status: int(n) for status, n in session.exec(by_status).all()}
    return rows, deliveries  # type: ignore[return-value]


def sample_endpoints(
    rows: list[tuple[str, str, str, str]],
    metrics: MetricsHub,
    in_flight: dict[str, int],
    ejections: dict[str, int],
) -> list[EndpointSample]:
    """Copy the live numbers (on the event loop, where they change)."""
    samples = []
    for endpoint_id, name, endpoint_type, state in rows:
        sample = EndpointSample(endpoint_id, name, endpoint_type, state)
        stats = metrics.stats.get(endpoint_id)
        if stats is not None:
            sample.requests, sample.errors = stats.requests, stats.errors
            sample.errors_by_kind = dict(stats.errors_by_kind)
            sample.tokens_in, sample.tokens_out, sample.cost = (
                stats.tokens_in,
                stats.tokens_out,
                stats.cost,
            )
        latency = metrics.latency.get(endpoint_id)
        if latency is not None:
            sample.latency_counts = list(latency.counts)
            sample.latency_sum_s = latency.sum_ms / 1000
        sample.in_flight = in_flight.get(endpoint_id, 0)
        sample.ejections = ejections.get(endpoint_id, 0)
        samples.append(sample)
    return samples


class ScrapeCollector:
    """The runtime's families for one scrape (a registry is built per scrape)."""

    def __init__(self, scrape: Scrape) -> None:
        self.scrape = scrape

    def collect(self) -> list[Metric]:
        eps = self.scrape.endpoints
        return [
            self._requests(eps),
            self._latency(eps),
            *self._usage(eps),
            self._gauge(
                eps, "aiem_in_flight_requests", "Requests being answered now.", "in_flight"
            ),
            self._states(eps),
            self._counter(
                eps, "aiem_breaker_ejections", "Breaker openings since start.", "ejections"
            ),
            self._deliveries(),
        ]

    @staticmethod
    def _requests(eps: list[EndpointSample]) -> Metric:
        family = CounterMetricFamily(
            "aiem_requests",
            "Chat requests per endpoint by outcome (ok or the error kind).",
            labels=["endpoint", "outcome"],
        )
        for ep in eps:
            family.add_metric([ep.name, "ok"], ep.requests - ep.errors)
            for kind, n in sorted(ep.errors_by_kind.items()):
                family.add_metric([ep.name, kind], n)
            # Errors carried over from before a restart (from the stored buckets) have no kind.
            unknown = ep.errors - sum(ep.errors_by_kind.values())
            if unknown > 0:
                family.add_metric([ep.name, "error"], unknown)
        return family

    @staticmethod
    def _latency(eps: list[EndpointSample]) -> Metric:
        family = HistogramMetricFamily(
            "aiem_request_latency_seconds",
            "Chat request latency per endpoint (since start; trails the counters by ~1 s).",
            labels=["endpoint"],
        )
        for ep in eps:
            counts = ep.latency_counts or [0] * len(LE)
            cumulative, buckets = 0, []
            for le, n in zip(LE, counts, strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            family.add_metric([ep.name], buckets, ep.latency_sum_s)
        return family

    @classmethod
    def _usage(cls, eps: list[EndpointSample]) -> list[Metric]:
        tokens = CounterMetricFamily(
            "aiem_tokens", "Tokens per endpoint and direction.", labels=["endpoint", "direction"]
        )
        for ep in eps:
            tokens.add_metric([ep.name, "in"], ep.tokens_in)
            tokens.add_metric([ep.name, "out"], ep.tokens_out)
        cost = cls._counter(eps, "aiem_cost", "Cost per endpoint (pricing units).", "cost")
        return [tokens, cost]

    @staticmethod
    def _counter(eps: list[EndpointSample], name: str, doc: str, attr: str) -> Metric:
        family = CounterMetricFamily(name, doc, labels=["endpoint"])
        for ep in eps:
            family.add_metric([ep.name], getattr(ep, attr))
        return family

    @staticmethod
    def _gauge(eps: list[EndpointSample], name: str, doc: str, attr: str) -> Metric:
        family = GaugeMetricFamily(name, doc, labels=["endpoint"])
        for ep in eps:
            family.add_metric([ep.name], getattr(ep, attr))
        return family

    @staticmethod
    def _states(eps: list[EndpointSample]) -> Metric:
        family = GaugeMetricFamily(
            "aiem_endpoint_state",
            "1 for the endpoint's current state, 0 for the others.",
            labels=["endpoint", "endpoint_type", "state"],
        )
        for ep in eps:
            for state in STATES:
                family.add_metric([ep.name, ep.endpoint_type, state], 1 if ep.state == state else 0)
        return family

    def _deliveries(self) -> Metric:
        family = GaugeMetricFamily(
            "aiem_webhook_deliveries", "Webhook deliveries by status.", labels=["status"]
        )
        for status in ("pending", "delivered", "dead"):
            family.add_metric([status], self.scrape.webhook_deliveries.get(status, 0))
        return family


def render(scrape: Scrape) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector(scrape))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return generate_latest(registry)


__all__ = ["CONTENT_TYPE", "EjectionCounter", "Scrape", "read_store", "render", "sample_endpoints"]
