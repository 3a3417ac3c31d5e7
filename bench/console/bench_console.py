"""Console benchmark: the Portfolio with 500 endpoints, the series API over a million requests.

    .venv/bin/python -m bench.console.bench_console [--endpoints 500] [--requests 1000000]
        [--series-endpoints 10] [--days 7] [--rounds 5] [--database-url URL]

Builds a store directly (endpoint rows and per-minute MetricBucket rows, as the metrics writer
would leave them after that much traffic), starts `aiem serve --no-console` on it, and times:
- `GET /endpoints` with every endpoint listed;
- the Portfolio page's script run (Streamlit's AppTest, in this process, against that API);
- `GET /metrics/series` over the whole week (default step) and over the last day;
- the Reports page's script run over the last week.
Each figure is the median of ``--rounds`` runs after one warm-up. Results go to stdout and to
bench/results/console.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from runtime.metrics import LATENCY_BOUNDS_MS  # noqa: E402
from store.db import Store  # noqa: E402
from store.models import Endpoint, MetricBucket, MetricHourBucket  # noqa: E402
from tests.gateway_proc import GatewayProcess  # noqa: E402

CONSOLE_APP = REPO / "console" / "app.py"
RESULTS = REPO / "bench" / "results" / "console.json"


def build_store(store: Store, args: argparse.Namespace) -> list[str]:
    """``args.endpoints`` endpoints; the first ``series_endpoints`` carry a week of buckets."""
    rows = [
        Endpoint(
            name=f"bench-{i:04d}", display_name=f"Bench endpoint {i}", endpoint_type="openai_api",
            url="http://127.0.0.1:9/v1", model_name="bench", group_name=f"g{i % 5}",
            input_cost_per_1k=0.1 * (1 + i % 3), output_cost_per_1k=0.3,
            created_at=datetime.now(UTC) - timedelta(days=args.days + 1),
        )
        for i in range(args.endpoints)
    ]
    with store.session() as session:
        session.add_all(rows)
        session.commit()
        ids = [row.id for row in rows]
    write_buckets(store, ids[: args.series_endpoints], args)
    return ids


def write_buckets(store: Store, ids: list[str], args: argparse.Namespace) -> int:
    minutes = args.days * 24 * 60
    per_bucket = args.requests / (minutes * len(ids))
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes)
    rng = random.Random(7)
    table = MetricBucket.__table__  # type: ignore[attr-defined]
    hour_table = MetricHourBucket.__table__  # type: ignore[attr-defined]
    total = 0
    with store.engine.begin() as conn:
        for endpoint_id in ids:
            batch: list[dict[str, Any]] = []
            for minute in range(minutes):
                requests = max(1, round(rng.uniform(0.5, 1.5) * per_bucket))
                total += requests
                errors = sum(1 for _ in range(requests) if rng.random() < 0.02)
                hist = [0] * len(LATENCY_BOUNDS_MS)
                for _ in range(requests):
                    hist[min(len(hist) - 1, int(rng.lognormvariate(5.5, 0.6) // 90))] += 1
                batch.append({
                    "endpoint_id": endpoint_id, "minute": start + timedelta(minutes=minute),
                    "requests": requests, "errors": errors, "latency_sum_ms": 300.0 * requests,
                    "latency_max_ms": 2400.0, "tokens_in": 40 * requests,
                    "tokens_out": 120 * requests, "cost": 0.00004 * requests,
                    "latency_hist": hist, "ttft_sum_ms": 90.0 * requests,
                    "ttft_count": requests,
                    "error_kinds": {"timeout": errors} if errors else {},
                })
            conn.execute(table.insert(), batch)
            conn.execute(hour_table.insert(), roll_up(batch))
    return total


def roll_up(minutes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hourly rows the metrics writer keeps beside the minute rows."""
    hours: dict[datetime, dict[str, Any]] = {}
    for row in minutes:
        hour = row["minute"].replace(minute=0)
        acc = hours.get(hour)
        if acc is None:
            hours[hour] = {**row, "hour": hour, "latency_hist": list(row["latency_hist"]),
                           "error_kinds": dict(row["error_kinds"])}
            del hours[hour]["minute"]
            continue
        for name in ("requests", "errors", "latency_sum_ms", "tokens_in", "tokens_out", "cost",
                     "ttft_sum_ms", "ttft_count"):
            acc[name] += row[name]
        acc["latency_max_ms"] = max(acc["latency_max_ms"], row["latency_max_ms"])
        acc["latency_hist"] = [a + b for a, b in zip(acc["latency_hist"], row["latency_hist"],
                                                     strict=True)]
        for kind, count in row["error_kinds"].items():
            acc["error_kinds"][kind] = acc["error_kinds"].get(kind, 0) + count
    return list(hours.values())


def median_ms(fn: Any, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(times), 1)


def page_run_ms(page: str, rounds: int, setup: Any = None) -> float:
    from streamlit.testing.v1 import AppTest

    def run() -> None:
        at = AppTest.from_file(str(CONSOLE_APP), default_timeout=120)
        at.switch_page(page)
        if setup:
            at.run()
            setup(at)
        at.run()
        assert not at.exception, at.exception

    return median_ms(run, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=500)
    parser.add_argument("--series-endpoints", type=int, default=10)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="aiem-bench-console-"))
    key = Fernet.generate_key().decode()
    url = args.database_url or f"sqlite:///{data_dir / 'aiem.db'}"
    store = Store.open(url=url, data_dir=data_dir, secret_key=key)
    began = time.perf_counter()
    build_store(store, args)
    with store.session() as session:
        from sqlalchemy import func, select

        buckets, requests = session.execute(
            select(func.count(), func.sum(MetricBucket.requests))
        ).one()
    store.dispose()
    print(f"store: {args.endpoints} endpoints, {buckets} buckets holding {requests} requests "
          f"over {args.days} days ({time.perf_counter() - began:.1f} s to build)")

    env = {"DATABASE_URL": args.database_url} if args.database_url else {}
    gateway = GatewayProcess(data_dir, secret_key=key, env=env).start(timeout=120)
    os.environ["AIEM_API_URL"] = gateway.url
    os.environ.pop("AIEM_ADMIN_TOKEN", None)
    try:
        results = measure(gateway.url, args)
    finally:
        gateway.stop()
    results.update(endpoints=args.endpoints, buckets=buckets, requests=requests,
                   days=args.days, store=url.split(":", 1)[0], rounds=args.rounds)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def measure(base: str, args: argparse.Namespace) -> dict[str, Any]:
    client = httpx.Client(base_url=base, timeout=120)
    now = datetime.now(UTC)
    week = {"from": (now - timedelta(days=args.days)).isoformat(), "to": now.isoformat()}
    day = {"from": (now - timedelta(days=1)).isoformat(), "to": now.isoformat(), "step": 300}
    points = len(client.get("/metrics/series", params=week).json()["points"])
    hours = {"from": (now - timedelta(hours=2)).isoformat(), "to": now.isoformat(),
             "step": 3600, "align": "false"}
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    days = {"from": (midnight - timedelta(days=1)).isoformat(), "to": now.isoformat(),
            "step": 86400}
    ids = [e["id"] for e in client.get("/endpoints").json()[:50]]
    spark = {"from": (now - timedelta(hours=1)).isoformat(), "to": now.isoformat(),
             "step": 300, "align": "false", "endpoint": ",".join(ids)}

    def get(path: str, params: dict[str, Any] | None = None) -> Any:
        return lambda: client.get(path, params=params).raise_for_status()

    results = {
        "system_metrics_ms": median_ms(get("/system/metrics"), args.rounds),
        "portfolio_kpi_hours_ms": median_ms(get("/metrics/series", hours), args.rounds),
        "portfolio_kpi_days_ms": median_ms(get("/metrics/series", days), args.rounds),
        "portfolio_sparklines_ms": median_ms(get("/metrics/series", spark), args.rounds),
        "get_endpoints_ms": median_ms(lambda: client.get("/endpoints").raise_for_status(),
                                      args.rounds),
        "series_week_ms": median_ms(
            lambda: client.get("/metrics/series", params=week).raise_for_status(), args.rounds),
        "series_week_points": points,
        "series_day_5min_ms": median_ms(
            lambda: client.get("/metrics/series", params=day).raise_for_status(), args.rounds),
        "portfolio_page_ms": page_run_ms("pages/portfolio.py", args.rounds),
        "reports_page_week_ms": page_run_ms(
            "pages/reports.py", args.rounds,
            setup=lambda at: at.segmented_control(key="reports-range").set_value("Last week"),
        ),
    }
    client.close()
    return results


if __name__ == "__main__":
    main()
