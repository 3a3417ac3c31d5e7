"""Gateway benchmark: the mock upstream direct, a calibration forwarder and the gateway
(``aiem serve --no-console``, a group of three endpoints on it, and ``aiem up``) measured
side by side in one run.

    .venv/bin/python bench/gateway/run.py            # full run, about 10 minutes
    .venv/bin/python bench/gateway/run.py --quick    # about 1-2 minutes
    .venv/bin/python bench/gateway/run.py --targets direct,forwarder
    .venv/bin/python bench/gateway/run.py --profile  # also sample the gateway with py-spy

All targets are started first and stay up; then every point (c1, c16, c64, the stream probe,
streams at c64) is measured on each target in turn, for several rounds, so a burst of load
from elsewhere on the machine hits all targets alike rather than one. Each figure is the
round with the median result. Only one target is under load at any moment.

Prints tables with ratios against direct and against the forwarder, the gateway's memory
series and the goal verdicts, and writes everything as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import cpu_watch
import loadgen
import profile_stacks
import report
import targets

RESULTS_DIR = targets.PROJECT_ROOT / "bench" / "results"
ALL_TARGETS = ("direct", "forwarder", "serve", "group", "up")
MB = 1024 * 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gateway benchmark")
    parser.add_argument("--quick", action="store_true", help="one short round, ~1 minute")
    parser.add_argument("--seconds", type=float, help="seconds per point (5; quick 2)")
    parser.add_argument("--rounds", type=int, help="rounds over all points (3; quick 1)")
    parser.add_argument("--targets", default=",".join(ALL_TARGETS))
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rss-requests", type=int, help="requests in the memory series")
    parser.add_argument("--rss-samples", type=int, default=20)
    parser.add_argument("--stream-gap-ms", type=float, default=1.0)
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway at c64")
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=25.0,
        help="re-measure a point when other processes used more CPU (%% of one core)",
    )
    parser.add_argument("--retries", type=int, default=2, help="re-measurements per point")
    parser.add_argument(
        "--quiet-budget", type=float, help="seconds the run may spend waiting out other load"
    )
    parser.add_argument("--output", type=Path, help="JSON result path")
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for both gateway targets, for A/B runs (repeatable)",
    )
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.rss_requests = args.rss_requests or (20_000 if args.quick else 100_000)
    if args.quiet_budget is None:
        args.quiet_budget = 60.0 if args.quick else 300.0
    args.targets = [t for t in args.targets.split(",") if t]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    unknown = set(args.targets) - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return args


def machine_description() -> dict:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def code_version() -> dict:
    """The commit the targets ran from, and whether the gateway's own packages differed."""

    def git(*argv: str) -> str:
        done = subprocess.run(
            ["git", *argv], cwd=targets.PROJECT_ROOT, capture_output=True, text=True
        )
        return done.stdout.strip()

    changed = git("status", "--porcelain", "gateway", "runtime", "providers", "store")
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_changes": bool(changed)}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def point_names(args: argparse.Namespace) -> list[str]:
    return [f"c{c}" for c in args.concurrency] + ["stream_c1", "stream_c64"]


def measure_point(target: targets.Target, point: str, seconds: float) -> loadgen.LoadResult:
    """``cN``: plain requests at concurrency N; ``stream_c1``: the Python client's time to
    first event; ``stream_c64``: streamed requests at c64 through the load tool."""
    url = target.completions_url
    if point == "stream_c1":
        return loadgen.run_stream_probe(url, target.body(stream=True), 1, seconds)
    if point == "stream_c64":
        return loadgen.run_load(url, target.body(stream=True), 64, seconds)
    return loadgen.run_load(url, target.body(stream=False), int(point[1:]), seconds)


def describe(target: str, point: str, entry: dict) -> str:
    figure = f"p50 {entry['p50_ms']:.3f} ms  {entry['rps']:,.0f} req/s"
    if point == "stream_c1":
        ttfc = entry["first_chunk_p50_ms"] or 0
        figure = f"TTFC p50 {ttfc:.3f} ms  end p50 {entry['p50_ms']:.3f}"
    errors = f"  ERRORS {entry['errors']}" if entry["errors"] else ""
    noise = f"other CPU {entry['other_cpu_pct']:.0f}%, probe x{entry['slowdown_before']:.2f}"
    return f"{target:<9} {point:<10} {figure}  ({noise}){errors}"


def measure_quietly(target, point: str, args, gate: cpu_watch.QuietGate) -> dict:
    """Measure once the machine is quiet; measure again (up to ``--retries`` times) when
    other processes used much CPU meanwhile, keeping the quietest attempt."""
    best: dict | None = None
    for _ in range(args.retries + 1):
        gate.wait()
        # Idle targets count as "other": a target busy while another is measured disturbs it.
        with cpu_watch.CpuWatch([*gate.pids, target.pid]) as watch:
            result = measure_point(target, point, args.seconds)
        entry = {**result.as_dict(), "other_cpu_pct": round(watch.foreign_pct, 1)}
        entry["slowdown_before"] = round(gate.last_slowdown, 2)
        if best is None or entry["other_cpu_pct"] < best["other_cpu_pct"]:
            best = entry
        if watch.foreign_pct <= gate.threshold_pct or gate.exhausted:
            break
        gate.waited_s += args.seconds  # a discarded attempt spends the budget too
    assert best is not None
    return best


def run_rounds(live: dict[str, targets.Target], gate: cpu_watch.QuietGate, args) -> dict:
    """Every point on every target, round after round; returns the runs per target/point."""
    runs: dict[str, dict[str, list[dict]]] = {name: {} for name in live}
    for target in live.values():  # warm-up: connections, caches, lazy imports
        loadgen.run_load(target.completions_url, target.body(False), 16, 1.0)
    for round_number in range(1, args.rounds + 1):
        log(f"round {round_number}/{args.rounds}")
        for point in point_names(args):
            for name, target in live.items():
                entry = measure_quietly(target, point, args, gate)
                log(describe(name, point, entry))
                runs[name].setdefault(point, []).append(entry)
    return runs


def median_run(entries: list[dict], point: str) -> dict:
    """The round whose key figure is the median, so a figure's p50, p99 and req/s agree."""
    if point == "stream_c1":
        ordered = sorted(entries, key=lambda e: e["first_chunk_p50_ms"] or 0.0)
    else:
        ordered = sorted(entries, key=lambda e: e["rps"])
    return {**ordered[(len(ordered) - 1) // 2], "rounds": len(entries)}


def summarize_runs(runs: dict[str, dict], live: dict[str, targets.Target]) -> dict:
    summary = {}
    for name, points in runs.items():
        chosen = {point: median_run(entries, point) for point, entries in points.items()}
        summary[name] = {
            "load": {p[1:]: r for p, r in chosen.items() if p.startswith("c")},
            "stream_c1": chosen.get("stream_c1"),
            "stream_c64": chosen.get("stream_c64"),
            "requests_served": sum(e["requests"] for es in points.values() for e in es),
            "rss_after_load_mb": round(targets.process_tree_rss(live[name].pid) / MB, 1),
            "all_rounds": points,
        }
    return summary


def memory_sample(target: targets.Target, requests: int) -> dict:
    rss_mb = round(targets.process_tree_rss(target.pid) / MB, 2)
    return {"requests": requests, "rss_mb": rss_mb, **targets.rss_breakdown_mb(target.pid)}


def memory_series(target: targets.Target, args: argparse.Namespace, c64_rps: float) -> dict:
    """Drive ``rss_requests`` at c64 in slices, sampling the target's RSS after each."""
    per_slice = args.rss_requests / args.rss_samples
    slice_seconds = max(1.0, per_slice / max(c64_rps, 1.0))
    samples = [memory_sample(target, 0)]
    done = errors = 0
    while done < args.rss_requests:
        result = loadgen.run_load(target.completions_url, target.body(False), 64, slice_seconds)
        done, errors = done + result.requests, errors + result.errors
        sample = memory_sample(target, done)
        samples.append(sample)
        parts = f"anon {sample.get('anon_mb', 0):.1f}, file {sample.get('file_mb', 0):.1f}"
        log(f"{target.name:<9} memory {done:>7} req  {sample['rss_mb']:.1f} MB ({parts})")
    trend = report.memory_trend(samples)
    return {"target": target.name, "samples": samples, "errors": errors, "trend": trend}


def profile(target: targets.Target, args: argparse.Namespace, out_dir: Path) -> dict | None:
    """Sample the target with py-spy while it serves c64 plain requests."""
    if not profile_stacks.py_spy_available():
        log("py-spy is not installed; skipping the profile")
        return None
    raw_path = out_dir / f"profile-{target.name}.txt"
    seconds = max(3, round(args.seconds))
    recorder = profile_stacks.start_recording(target.pid, seconds + 1, raw_path)
    time.sleep(0.5)  # let py-spy attach before the load starts
    loadgen.run_load(target.completions_url, target.body(False), 64, seconds)
    _, stderr = recorder.communicate(timeout=seconds + 60)
    if not raw_path.exists():
        log(f"py-spy produced nothing: {stderr.decode(errors='replace')[-500:]}")
        return None
    summary = profile_stacks.summarize(profile_stacks.read_collapsed(raw_path))
    print(f"--- profile of {target.name} at c64 ---", flush=True)
    print(profile_stacks.render_summary(summary), flush=True)
    return summary


def start_targets(stack: contextlib.ExitStack, args, logs: Path) -> dict[str, targets.Target]:
    direct = stack.enter_context(targets.mock_upstream(logs, args.stream_gap_ms))
    live = {"direct": direct} if "direct" in args.targets else {}
    if "forwarder" in args.targets:
        live["forwarder"] = stack.enter_context(targets.forwarder(logs, direct))
    for mode in ("serve", "up"):
        if mode not in args.targets and not (mode == "serve" and "group" in args.targets):
            continue
        if not targets.gateway_available():
            log(f"{mode}: gateway/cli.py is not there yet; skipped")
            continue
        gateway = stack.enter_context(targets.gateway(logs, direct, mode, args.gateway_env))
        log(f"{mode}: gateway ready, endpoint registered and answering")
        if mode in args.targets:
            live[mode] = gateway
        if mode == "serve" and "group" in args.targets:
            live["group"] = targets.group_of_three(gateway)
            log("group: three more endpoints in one group on the serve process, answering")
    live["_mock"] = direct
    return live


def run(args: argparse.Namespace) -> dict:
    started = datetime.now(UTC)
    out_dir = RESULTS_DIR / started.strftime("gateway-%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine_description(),
        "code": code_version(),
        "settings": _settings(args),
    }
    with contextlib.ExitStack() as stack:
        live = start_targets(stack, args, out_dir / "logs")
        mock_pid = live.pop("_mock").pid
        gate = cpu_watch.QuietGate([mock_pid], args.max_other_cpu, args.quiet_budget)
        result["targets"] = summarize_runs(run_rounds(live, gate, args), live)
        result["settings"]["waited_for_quiet_s"] = round(gate.waited_s, 1)
        for mode in ("serve", "group", "up"):
            if mode in live and args.profile:
                result["targets"][mode]["profile"] = profile(live[mode], args, out_dir)
        if "serve" in live:
            c64 = result["targets"]["serve"]["load"].get("64", {}).get("rps", 1000.0)
            result["memory"] = memory_series(live["serve"], args, c64)
    result["goals"] = report.goal_verdicts(result)
    path = args.output or out_dir / "result.json"
    path.write_text(json.dumps(result, indent=2))
    result["result_path"] = str(path)
    return result


def _settings(args: argparse.Namespace) -> dict:
    return {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "rss_requests": args.rss_requests,
        "stream_gap_ms": args.stream_gap_ms,
        "generator": "wrk -t1" if loadgen.wrk_available() else "python raw asyncio",
        "quick": args.quick,
        "max_other_cpu_pct": args.max_other_cpu,
        "gateway_env": args.gateway_env,
        "retries": args.retries,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print()
    print(report.render(result))
    print(f"\nresults: {result['result_path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
