"""Live metrics by value: a percentile from the wrong end or a lost counter shows here."""

from __future__ import annotations

import random

import pytest

from runtime.metrics import EndpointStats, RequestRecord, percentile


def record(latency: float, *, ok: bool = True, cost: float = 0.0) -> RequestRecord:
    return RequestRecord(
        endpoint_id="e", at=1000.0, ok=ok, latency_ms=latency, tokens_in=2, tokens_out=3, cost=cost
    )


def test_percentile_takes_the_high_end():
    values = [float(v) for v in range(1, 101)]
    random.Random(7).shuffle(values)
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0], 0.95) == 3.0 and percentile([], 0.95) is None


def test_endpoint_stats_by_value():
    stats = EndpointStats()
    latencies = [float(v) for v in range(1, 101)]
    random.Random(3).shuffle(latencies)
    for index, latency in enumerate(latencies):
        stats.add(record(latency, ok=index % 25 != 0, cost=0.01))
    snap = stats.snapshot(in_flight=2)
    assert snap["requests"] == 100 and snap["errors"] == 4
    assert snap["success_rate"] == 96.0
    assert snap["avg_latency_ms"] == 50.5 and snap["p95_latency_ms"] == 95.0
    assert snap["tokens_in"] == 200 and snap["tokens_out"] == 300
    assert snap["cost"] == pytest.approx(1.0) and snap["in_flight"] == 2
