"""Requests/s through nginx with 1, 2 and 3 ``aiem serve --no-console`` instances on one
PostgreSQL, beside the same load sent straight to one instance.

Everything runs on this machine and is started here, on free ports:
- a PostgreSQL server of its own (initdb + pg_ctl in a temp dir, tests/cluster/pg_server.py),
  or ``--database-url`` to use one that is already running;
- the gateway benchmark's mock upstream (bench/gateway/mock_upstream.py: uvloop + httptools,
  so it costs little next to what is measured);
- three instances sharing the store, one ``openai_api`` endpoint on the mock upstream;
- Debian's nginx with the shipped site (deploy/nginx/aiem.conf: keep-alive to the upstreams,
  no buffering), one nginx per point whose upstream block lists the first N instances.

Each round measures every point in turn (``direct``: wrk to instance 1; ``nginx-1``..``nginx-3``)
with wrk at c64 (bench/gateway/loadgen.py); a figure is the round with the median req/s, so a
burst of other load on the shared machine does not land on one point only. Before each point
the run waits, within a budget, for other processes to quiet down (bench/gateway/cpu_watch.py)
and measures a disturbed point once more, keeping the quieter attempt; each point reports the
CPU others used meanwhile. All three instances run throughout: the idle ones only heartbeat
and flush empty metric queues.

This machine has 2 cores shared by the instances, nginx, the upstream, PostgreSQL and wrk, so
more instances cannot add cores: beside req/s the report gives req/s per busy core, i.e. the
requests divided by the CPU seconds the aiem processes used (and by the CPU seconds of every
process on the request path), which is what more cores would multiply.

Run: ``.venv/bin/python bench/cluster/run.py [--seconds 8] [--rounds 3]`` (3 to 6 minutes,
depending on how long it waits for quiet), or ``--quick`` (one round of 3 s, under a minute).
Figures go to stdout and to bench/results/cluster-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench" / "gateway")]

import cpu_watch  # noqa: E402  (bench/gateway/cpu_watch.py)
import loadgen  # noqa: E402
import targets  # noqa: E402

from store.db import Store  # noqa: E402
from tests.cluster.pg_server import PgServer, postgres_bindir  # noqa: E402
from tests.ops.nginx_support import write_nginx_conf  # noqa: E402

RESULTS = ROOT / "bench" / "results"
INSTANCES = 3


@dataclass
class Point:
    name: str
    url: str  # the chat completions URL wrk drives
    instances: list[int]  # pids of the aiem instances that serve it
    nginx_pid: int | None = None


def cpu_seconds(pid: int | None) -> float:
    """CPU seconds of ``pid`` and its children (0 once gone, or for None)."""
    if pid is None:
        return 0.0

    def used(proc: psutil.Process) -> float:
        times = proc.cpu_times()
        return float(times.user + times.system)

    return cpu_watch.tree_total(pid, used)


def children_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for children: the wrk runs."""
    times = os.times()
    return times.children_user + times.children_system


# ---- the processes -------------------------------------------------------------------------


@contextlib.contextmanager
def postgres(database_url: str | None) -> Iterator[tuple[str, int | None]]:
    """(URL, postmaster pid or None): the given server, or one of our own for the run."""
    if database_url:
        yield database_url, None
        return
    bindir = postgres_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL (initdb, pg_ctl) is not installed; or pass --database-url")
    server = PgServer(bindir).init()
    try:
        server.start()
        postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
        yield server.url, postmaster
    finally:
        server.destroy()


@contextlib.contextmanager
def instance(index: int, url: str, secret: str, logs: Path) -> Iterator[tuple[str, int]]:
    """One ``aiem serve --no-console`` on the shared store: (base URL, pid)."""
    port = targets.free_port()
    base = f"http://127.0.0.1:{port}"
    command = [*targets.gateway_command(), "serve", "--no-console"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with tempfile.TemporaryDirectory(prefix=f"aiem-cluster-{index}-") as data_dir:
        env = {
            "DATABASE_URL": url,
            "AIEM_DATA_DIR": data_dir,
            "AIEM_SECRET_KEY": secret,
            "AIEM_CONFIG_FILE": str(Path(data_dir) / "none.json"),
            "AIEM_ADVERTISE_URL": base,
            "AIEM_LOG_LEVEL": "warning",
        }
        with targets.spawned(command, logs / f"instance-{index}.log", env) as pid:
            targets.wait_until_serving(port, pid, timeout=120, path="/readyz")
            yield base, pid


@contextlib.contextmanager
def nginx(workdir: Path, ports: list[int]) -> Iterator[tuple[str, int]]:
    """nginx in front of ``ports``: (base URL, pid)."""
    workdir.mkdir(parents=True, exist_ok=True)
    listen = targets.free_port()
    conf = write_nginx_conf(workdir, ports, listen)
    binary = "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "nginx"
    command = [binary, "-c", str(conf), "-p", str(workdir)]
    with targets.spawned(command, workdir / "nginx.log") as pid:
        targets.wait_until_serving(listen, pid, timeout=20, path="/healthz")
        yield f"http://127.0.0.1:{listen}", pid


def start_points(stack: contextlib.ExitStack, args: argparse.Namespace, logs: Path) -> dict:
    """Everything up and answering; returns the points to measure and the pids to watch."""
    database_url, postmaster = stack.enter_context(postgres(args.database_url))
    from cryptography.fernet import Fernet

    secret = Fernet.generate_key().decode()
    # The schema first, so the instances start side by side without racing on migrations.
    Store.open(url=database_url, data_dir=logs / "prepare", secret_key=secret).dispose()
    upstream = stack.enter_context(targets.mock_upstream(logs, stream_gap_ms=1.0))
    bases, pids = [], []
    for index in range(1, INSTANCES + 1):
        base, pid = stack.enter_context(instance(index, database_url, secret, logs))
        bases.append(base)
        pids.append(pid)
    targets.register_upstream(bases[0], targets.upstream_base(upstream))
    for base, pid in zip(bases, pids, strict=True):  # every instance runs it (NOTIFY)
        targets.wait_until_answering(_target(base, pid))
    points = [Point("direct", f"{bases[0]}/v1/chat/completions", pids[:1])]
    for n in range(1, INSTANCES + 1):
        ports = [int(b.rsplit(":", 1)[1]) for b in bases[:n]]
        front, nginx_pid = stack.enter_context(nginx(logs / f"nginx-{n}", ports))
        point = Point(f"nginx-{n}", f"{front}/v1/chat/completions", pids[:n], nginx_pid)
        targets.wait_until_answering(_target(front, nginx_pid))
        points.append(point)
    return {
        "points": points,
        "upstream": upstream.pid,
        "postmaster": postmaster,
        "all": pids,
        "nginx": [p.nginx_pid for p in points if p.nginx_pid],
    }


def _target(base: str, pid: int) -> targets.Target:
    return targets.Target("cluster", f"{base}/v1/chat/completions", targets.GATEWAY_MODEL, pid)


# ---- measuring -----------------------------------------------------------------------------


def cpu_snapshot(point: Point, procs: dict) -> dict[str, float]:
    """CPU seconds so far of each part on the request path."""
    return {
        "aiem": sum(cpu_seconds(p) for p in procs["all"]),
        "nginx": cpu_seconds(point.nginx_pid),
        "upstream": cpu_seconds(procs["upstream"]),
        "postgres": cpu_seconds(procs["postmaster"]),
        "wrk": children_cpu_seconds(),
    }


def measure(point: Point, procs: dict, args: argparse.Namespace) -> dict[str, Any]:
    """One wrk run at ``args.connections`` on ``point`` with the CPU each part used."""
    body = _target(point.url, 0).body(stream=False)
    procs["gate"].wait()
    before = cpu_snapshot(point, procs)
    with cpu_watch.CpuWatch(procs["gate"].pids) as watch:
        result = loadgen.run_load(point.url, body, args.connections, args.seconds)
    after = cpu_snapshot(point, procs)
    spent = {part: after[part] - before[part] for part in before}
    path_cpu = sum(spent.values())
    return {
        **result.as_dict(),
        "cpu_s": {k: round(v, 2) for k, v in spent.items()},
        "aiem_busy_cores": round(spent["aiem"] / result.seconds, 2),
        "rps_per_aiem_core": round(result.requests / spent["aiem"], 1) if spent["aiem"] else None,
        "rps_per_busy_core": round(result.requests / path_cpu, 1) if path_cpu else None,
        # CPU other processes on the machine used meanwhile, in % of one core.
        "other_cpu_pct": round(watch.foreign_pct, 1),
    }


def measure_quietly(point: Point, procs: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Measure again (up to ``--retries`` times) when other processes used much CPU meanwhile,
    keeping the quietest attempt."""
    gate = procs["gate"]
    best: dict[str, Any] | None = None
    for _ in range(args.retries + 1):
        entry = measure(point, procs, args)
        if best is None or entry["other_cpu_pct"] < best["other_cpu_pct"]:
            best = entry
        if entry["other_cpu_pct"] <= gate.threshold_pct or gate.exhausted:
            break
        gate.waited_s += args.seconds  # a discarded attempt spends the budget too
    assert best is not None
    return best


def run_rounds(points: list[Point], procs: dict, args: argparse.Namespace) -> dict[str, list]:
    runs: dict[str, list] = {p.name: [] for p in points}
    for point in points:  # warm-up: connections, keep-alive pools, lazy imports
        loadgen.run_load(point.url, _target(point.url, 0).body(False), args.connections, 1.0)
    for round_number in range(1, args.rounds + 1):
        for point in points:
            entry = measure_quietly(point, procs, args)
            runs[point.name].append(entry)
            log(f"round {round_number} {describe(point.name, entry)}")
    return runs


def median_run(entries: list[dict]) -> dict:
    ordered = sorted(entries, key=lambda e: e["rps"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds": len(entries)}


def describe(name: str, e: dict) -> str:
    errors = f"  ERRORS {e['errors']}" if e["errors"] else ""
    return (
        f"{name:<8} {e['rps']:>7,.0f} req/s  p50 {e['p50_ms']:6.2f} ms  p99 {e['p99_ms']:6.2f} ms"
        f"  aiem {e['aiem_busy_cores']:.2f} cores  {e['rps_per_aiem_core'] or 0:>6,.0f} req/s "
        f"per aiem core  {e['rps_per_busy_core'] or 0:>6,.0f} per busy core  "
        f"(other CPU {e['other_cpu_pct']:.0f}%){errors}"
    )


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def report(result: dict) -> str:
    lines = [
        f"aiem cluster on one PostgreSQL, wrk c{result['connections']}, "
        f"{result['seconds']:g} s x {result['rounds']} rounds (median), {result['cores']} cores, "
        f"commit {result['commit']}",
    ]
    lines += [describe(name, entry) for name, entry in result["points"].items()]
    lines.append(
        "req/s per aiem core = requests / CPU seconds of the aiem processes; per busy core = "
        "requests / CPU seconds of aiem + nginx + upstream + PostgreSQL + wrk. On this machine "
        "the instances share its cores, so more instances cannot raise req/s much; the "
        "per-core figures are what more cores would multiply."
    )
    return "\n".join(lines)


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--database-url", help="use this PostgreSQL instead of starting one")
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=25.0,
        help="wait before a point while other processes use more CPU (%% of one core)",
    )
    parser.add_argument(
        "--quiet-budget", type=float, default=60.0, help="seconds the run may spend waiting"
    )
    parser.add_argument("--retries", type=int, default=1, help="re-measurements per point")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s, little waiting")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.quiet_budget, args.retries = 3.0, 1, 10.0, 0
    if not loadgen.wrk_available():
        log("wrk is not installed: the Python load client stands in (it costs more CPU)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result: dict[str, Any] = {
        "started_at": stamp,
        "commit": commit(),
        "cores": os.cpu_count(),
        "connections": args.connections,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    logs = RESULTS / f"cluster-{stamp}"
    with contextlib.ExitStack() as stack:
        procs = start_points(stack, args, logs)
        ours = [*procs["all"], procs["upstream"], *procs["nginx"]]
        ours += [procs["postmaster"]] if procs["postmaster"] else []
        # Each point waits (within a budget for the whole run) for the machine to be quiet.
        procs["gate"] = cpu_watch.QuietGate(ours, args.max_other_cpu, args.quiet_budget)
        log("PostgreSQL, the mock upstream, 3 instances and 3 nginx are up and answering")
        runs = run_rounds(procs["points"], procs, args)
        result["waited_for_quiet_s"] = round(procs["gate"].waited_s, 1)
    result["points"] = {name: median_run(entries) for name, entries in runs.items()}
    result["all_rounds"] = runs
    result["rps_spread"] = {
        name: round(statistics.pstdev(e["rps"] for e in entries), 1)
        for name, entries in runs.items()
    }
    print()
    print(report(result))
    path = RESULTS / f"cluster-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nresults: {path} (process logs in {logs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
