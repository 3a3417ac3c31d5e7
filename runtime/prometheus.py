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
from prometheus_client.core import CollectorRegistry
from sqlalchemy import func
from sqlmodel import select

from runtime.events import EndpointEventNote, EventBus
from runtime.health import ProbeRecord
from runtime.metrics import LATENCY_BOUNDS_MS, MetricsHub
from store.db import Store
from store.models import Endpoint, EndpointState, WebhookDelivery

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = [s.value for s in EndpointState]
LE = [("+Inf" if math.isinf(b) else repr(b / 1000)) for b in LATENCY_BOUNDS_MS]


class EjectionCounter:
    """Breaker ejections per endpoint since the process started: its ``breaker_open`` events
    (the breaker's own count resets after a healthy spell, so it cannot be a counter)."""

    def __init__(self, events: EventBus) -> None:
        self.counts: dict[str, int] = {}
        events.subscribe(self.on_event)

    def on_event(self, note: EndpointEventNote) -> None:
        if note.kind == "breaker_open":
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
    probe: ProbeRecord | None = None


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
    probes: dict[str, ProbeRecord],
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
        sample.probe = probes.get(endpoint_id)
        samples.append(sample)
    return samples


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


class TextWriter:
    """The runtime's own families in the text format, written directly: with hundreds of
    endpoints the client library's generic path costs ~1 ms per endpoint, this a tenth."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, doc: str) -> None:
        self.lines.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}")

    def sample(self, name: str, labels: str, value: float) -> None:
        self.lines.append(f"{name}{{{labels}}} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def write_endpoints(out: TextWriter, eps: list[tuple[str, EndpointSample]]) -> None:
    out.family("aiem_requests_total", "counter", "Chat requests by outcome (ok or error kind).")
    for e, ep in eps:
        out.sample("aiem_requests_total", f'{e},outcome="ok"', ep.requests - ep.errors)
        for kind, n in sorted(ep.errors_by_kind.items()):
            out.sample("aiem_requests_total", f'{e},outcome="{_label(kind)}"', n)
        # Errors carried over from before a restart (the stored buckets) have no kind.
        unknown = ep.errors - sum(ep.errors_by_kind.values())
        if unknown > 0:
            out.sample("aiem_requests_total", f'{e},outcome="error"', unknown)
    write_latency(out, eps)
    out.family("aiem_tokens_total", "counter", "Tokens per endpoint and direction.")
    for e, ep in eps:
        out.sample("aiem_tokens_total", f'{e},direction="in"', ep.tokens_in)
        out.sample("aiem_tokens_total", f'{e},direction="out"', ep.tokens_out)
    per_endpoint = (
        ("aiem_cost_total", "counter", "Cost per endpoint (pricing units).", "cost"),
        ("aiem_in_flight_requests", "gauge", "Requests being answered now.", "in_flight"),
        ("aiem_breaker_ejections_total", "counter", "Breaker openings since start.", "ejections"),
    )
    for name, kind, doc, attr in per_endpoint:
        out.family(name, kind, doc)
        for e, ep in eps:
            out.sample(name, e, getattr(ep, attr))
    write_probes(out, eps)
    out.family("aiem_endpoint_state", "gauge", "1 for the endpoint's current state, else 0.")
    for e, ep in eps:
        typed = f'{e},endpoint_type="{_label(ep.endpoint_type)}"'
        for state in STATES:
            out.sample("aiem_endpoint_state", f'{typed},state="{state}"', int(ep.state == state))


def write_probes(out: TextWriter, eps: list[tuple[str, EndpointSample]]) -> None:
    """The last health probe of each endpoint that had one (runtime/health.py keeps it)."""
    probed = [(e, ep.probe) for e, ep in eps if ep.probe is not None]
    out.family("aiem_probe_success", "gauge", "1 when the last health probe passed, else 0.")
    for e, probe in probed:
        out.sample("aiem_probe_success", e, int(probe.ok))
    out.family("aiem_probe_latency_seconds", "gauge", "How long the last health probe took.")
    for e, probe in probed:
        if probe.latency_ms is not None:
            out.sample("aiem_probe_latency_seconds", e, probe.latency_ms / 1000)
    out.family("aiem_probe_timestamp_seconds", "gauge", "When the last health probe ran.")
    for e, probe in probed:
        out.sample("aiem_probe_timestamp_seconds", e, probe.at.timestamp())


def write_latency(out: TextWriter, eps: list[tuple[str, EndpointSample]]) -> None:
    name = "aiem_request_latency_seconds"
    out.family(name, "histogram", "Chat request latency (since start; trails by ~1 s).")
    zeros = [0] * len(LE)
    for e, ep in eps:
        cumulative = 0
        for le, n in zip(LE, ep.latency_counts or zeros, strict=True):
            cumulative += n
            out.sample(f"{name}_bucket", f'{e},le="{le}"', cumulative)
        out.sample(f"{name}_count", e, cumulative)
        out.sample(f"{name}_sum", e, ep.latency_sum_s)


def render(scrape: Scrape) -> bytes:
    out = TextWriter()
    labelled = [(f'endpoint="{_label(ep.name)}"', ep) for ep in scrape.endpoints]
    write_endpoints(out, labelled)
    out.family("aiem_webhook_deliveries", "gauge", "Webhook deliveries by status.")
    for status in ("pending", "delivered", "dead"):
        out.sample(
            "aiem_webhook_deliveries",
            f'status="{status}"',
            scrape.webhook_deliveries.get(status, 0),
        )
    return out.text().encode() + generate_latest(_PROCESS)


# The process, the interpreter and the collector, from the client library.
_PROCESS = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=_PROCESS)
PlatformCollector(registry=_PROCESS)
GCCollector(registry=_PROCESS)


__all__ = ["CONTENT_TYPE", "EjectionCounter", "Scrape", "read_store", "render", "sample_endpoints"]
