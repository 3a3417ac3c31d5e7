"""Hundreds of endpoints in one process: start time, API latency, probe spread and memory.

A real ``aiem serve --no-console`` process and a fixture upstream (tests/fixtures/upstreams.py,
an aiohttp server in this process's background thread that records every request):

1. start the gateway on an empty data dir (``HEALTH_CHECK_INTERVAL`` one day: endpoints are
   probed once as they start, so the API figures below carry no probe work); its RSS once
   settled is the baseline;
2. create N ``openai_api`` endpoints through the API, then start them all through the API;
3. time ``GET /endpoints``, ``GET /system/metrics`` and ``GET /metrics`` (sequential calls,
   keep-alive client), with the server's CPU time per call, and sample the RSS with N running;
4. stop the process and start it again on the same data dir with ``--probe-interval``: the
   time (and CPU) from spawning it to all N endpoints running, beside the same for the empty
   instance, which is the cost of importing the frameworks;
5. watch the upstream for ``--probe-seconds``: health probes (``GET /v1/models``) per second,
   so a burst shows against the mean; time the API again while the probes run;
6. one chat completion through an endpoint, to show they answer.

Run: ``.venv/bin/python bench/scale/run.py [--endpoints 500] [--probe-interval 30]``.
Figures go to stdout and to bench/results/scale-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench" / "gateway")]

import targets  # noqa: E402  (bench/gateway/targets.py)

from tests.fixtures.upstreams import OpenAIUpstream  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def spec(n: int, upstream_url: str) -> dict[str, Any]:
    return {
        "name": f"ep-{n:04d}",
        "endpoint_type": "openai_api",
        "url": upstream_url,
        "model_name": "fixture-model",
        "credentials": {"api_key": f"bench-key-{n}"},
    }


@contextlib.contextmanager
def gateway(data_dir: Path, secret: str, env: dict[str, str], log: Path) -> Iterator[Any]:
    port = targets.free_port()
    # This checkout's code (the installed script may point at another one).
    command = [sys.executable, "-m", "gateway.cli", "serve", "--no-console"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    full_env = {
        **env,
        "AIEM_DATA_DIR": str(data_dir),
        "AIEM_SECRET_KEY": secret,
        "AIEM_CONFIG_FILE": str(data_dir / "none.json"),
        "AIEM_LOG_LEVEL": "warning",
    }
    spawned_at = time.monotonic()
    with targets.spawned(command, log, full_env) as pid:
        yield f"http://127.0.0.1:{port}", port, pid, spawned_at


def wait_ready(base: str, port: int, pid: int) -> None:
    targets.wait_until_serving(port, pid, timeout=180, path="/readyz")


def wait_running(client: httpx.Client, count: int, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = client.get("/system/metrics").json()["running_endpoints"]
        if running >= count:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"fewer than {count} endpoints running after {timeout:.0f} s")


def settled_rss_mb(pid: int, seconds: float = 3.0) -> float:
    time.sleep(seconds)
    return round(targets.process_tree_rss(pid) / 1024 / 1024, 1)


def cpu_s(pid: int) -> float:
    """CPU seconds the process has used: a figure other load on the machine does not move."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def timings(client: httpx.Client, path: str, count: int, pid: int) -> dict[str, float]:
    client.get(path)  # warm
    cpu_before = cpu_s(pid)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    cpu_ms = (cpu_s(pid) - cpu_before) * 1000 / count
    ordered = sorted(samples)
    return {
        "server_cpu_ms": round(cpu_ms, 2),
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
        "max_ms": round(max(samples), 2),
        "bytes": len(response.content),
    }


async def fan_out(base: str, calls: list[tuple[str, str, Any]], concurrency: int) -> float:
    """Run the calls ``concurrency`` at a time; seconds taken. Any failure stops the run."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:

        async def one(method: str, path: str, body: Any) -> None:
            async with limit:
                response = await client.request(method, path, json=body)
            if response.status_code >= 300:
                raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text}")

        started = time.perf_counter()
        await asyncio.gather(*(one(*call) for call in calls))
        return time.perf_counter() - started


def probe_spread(upstream: OpenAIUpstream, seconds: float) -> dict[str, Any]:
    upstream.requests.clear()
    started = time.monotonic()
    time.sleep(seconds)
    probes = [r.at - started for r in upstream.requests if r.path.endswith("/models")]
    per_second = Counter(int(at) for at in probes if 0 <= at < seconds)
    counts = [per_second.get(s, 0) for s in range(int(seconds))]
    return {
        "seconds": seconds,
        "probes": len(probes),
        "mean_per_s": round(statistics.fmean(counts), 1) if counts else 0,
        "max_per_s": max(counts, default=0),
        "min_per_s": min(counts, default=0),
        "per_second": counts,
    }


def first_phase(
    args: argparse.Namespace,
    data_dir: Path,
    secret: str,
    env: dict,
    up_url: str,
    result: dict[str, Any],
) -> None:
    with gateway(data_dir, secret, env, RESULTS / "scale-gateway-1.log") as (base, port, pid, t0):
        wait_ready(base, port, pid)
        result["empty_start_s"] = round(time.monotonic() - t0, 2)
        result["empty_start_cpu_s"] = round(cpu_s(pid), 2)
        result["empty_rss_mb"] = settled_rss_mb(pid)
        calls = [("POST", "/endpoints", spec(n, up_url)) for n in range(args.endpoints)]
        result["create_s"] = round(asyncio.run(fan_out(base, calls, 8)), 2)
        starts = [("POST", f"/endpoints/ep-{n:04d}/start", None) for n in range(args.endpoints)]
        result["api_start_all_s"] = round(asyncio.run(fan_out(base, starts, 32)), 2)
        with httpx.Client(base_url=base, timeout=60) as client:
            wait_running(client, args.endpoints)
            result["running_rss_mb"] = settled_rss_mb(pid)
            for path in ("/endpoints", "/system/metrics", "/metrics"):
                result[f"GET {path}"] = timings(client, path, args.calls, pid)


def second_phase(
    args: argparse.Namespace,
    data_dir: Path,
    secret: str,
    env: dict,
    upstream: OpenAIUpstream,
    result: dict[str, Any],
) -> None:
    with gateway(data_dir, secret, env, RESULTS / "scale-gateway-2.log") as (base, port, pid, t0):
        wait_ready(base, port, pid)
        ready = time.monotonic()
        with httpx.Client(base_url=base, timeout=60) as client:
            running = wait_running(client, args.endpoints)
            result["restart_ready_s"] = round(ready - t0, 2)
            result["restart_all_running_s"] = round(running - t0, 2)
            result["restart_all_running_cpu_s"] = round(cpu_s(pid), 2)
            result["restart_rss_mb"] = settled_rss_mb(pid)
            result["probes"] = probe_spread(upstream, args.probe_seconds)
            body = {"model": "ep-0123", "messages": [{"role": "user", "content": "hi"}]}
            answer = client.post("/v1/chat/completions", json=body)
            result["chat_status"] = answer.status_code
            # With probes running (the server CPU figure includes their work meanwhile).
            result["GET /endpoints (restarted)"] = timings(client, "/endpoints", args.calls, pid)
            result["GET /system/metrics (restarted)"] = timings(
                client, "/system/metrics", args.calls, pid
            )


def report(result: dict[str, Any]) -> None:
    n = result["endpoints"]
    print(f"{n} openai_api endpoints, one `aiem serve` process ({result['commit']})")
    print(
        f"  empty instance: ready in {result['empty_start_s']} s, RSS {result['empty_rss_mb']} MB"
    )
    print(
        f"  create {n} via API: {result['create_s']} s; start all via API: "
        f"{result['api_start_all_s']} s"
    )
    print(
        f"  RSS with {n} running: {result['running_rss_mb']} MB "
        f"(+{result['running_rss_mb'] - result['empty_rss_mb']:.1f} MB over empty)"
    )
    for key in (
        "GET /endpoints",
        "GET /system/metrics",
        "GET /metrics",
        "GET /endpoints (restarted)",
        "GET /system/metrics (restarted)",
    ):
        t = result[key]
        print(
            f"  {key}: p50 {t['p50_ms']} ms, p95 {t['p95_ms']} ms, max {t['max_ms']} ms, "
            f"server CPU {t['server_cpu_ms']} ms per call, {t['bytes']} bytes"
        )
    print(
        f"  restart with {n} desired running: ready {result['restart_ready_s']} s, all running "
        f"{result['restart_all_running_s']} s after spawn (empty: {result['empty_start_s']} s); "
        f"CPU {result['restart_all_running_cpu_s']} s (empty: {result['empty_start_cpu_s']} s); "
        f"RSS {result['restart_rss_mb']} MB"
    )
    p = result["probes"]
    print(
        f"  probes over {p['seconds']:.0f} s: {p['probes']} ({p['mean_per_s']}/s mean, "
        f"{p['min_per_s']}..{p['max_per_s']} per second)"
    )
    print(f"  a chat through ep-0123: HTTP {result['chat_status']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=500)
    parser.add_argument("--calls", type=int, default=30, help="timed calls per API path")
    parser.add_argument(
        "--probe-interval",
        type=float,
        default=30.0,
        help="HEALTH_CHECK_INTERVAL of the restarted gateway (the first one probes only at "
        "start, so its API figures are not mixed with probe work)",
    )
    parser.add_argument("--probe-seconds", type=float, default=30.0)
    args = parser.parse_args()
    from cryptography.fernet import Fernet

    RESULTS.mkdir(parents=True, exist_ok=True)
    secret = Fernet.generate_key().decode()
    quiet = {"HEALTH_CHECK_INTERVAL": "86400"}
    probing = {"HEALTH_CHECK_INTERVAL": str(args.probe_interval)}
    commit = targets.subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result: dict[str, Any] = {
        "endpoints": args.endpoints,
        "commit": commit,
        "probe_interval_s": args.probe_interval,
    }
    with OpenAIUpstream() as upstream, tempfile.TemporaryDirectory(prefix="aiem-scale-") as tmp:
        data_dir = Path(tmp)
        first_phase(args, data_dir, secret, quiet, upstream.url, result)
        second_phase(args, data_dir, secret, probing, upstream, result)
    report(result)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"scale-{stamp}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
