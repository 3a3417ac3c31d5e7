"""Turn measured figures into tables, ratios, a memory trend and goal verdicts.

Works on the plain dict the run builds (the same one written as JSON), so a saved result file
can be printed again: ``python bench/gateway/report.py bench/results/<file>.json``.
"""

from __future__ import annotations

import json
import sys

GATEWAY_TARGETS = ("serve", "group", "up")
RSS_LIMIT_MB = 150.0
ADDED_P50_LIMIT_MS = 1.0
THROUGHPUT_SHARE_GOAL = 0.70
TTFC_LIMIT_MS = 1.0
STREAM_SHARE_GOAL = 0.80


def least_squares_slope(xs: list[float], ys: list[float]) -> float:
    """Slope of the best straight line through the points (0.0 when it is undefined)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def memory_trend(samples: list[dict]) -> dict:
    """Slopes in MB per 10k requests, over the whole series and over its second half.

    The first half includes allocator and cache warm-up, so the verdict reads the second
    half: growth is a trend when its fitted rise exceeds max(2 MB, 2% of the RSS).
    """
    xs = [s["requests"] / 10_000 for s in samples]
    ys = [s["rss_mb"] for s in samples]
    half = len(samples) // 2
    tail_x, tail_y = xs[half:], ys[half:]
    tail_slope = least_squares_slope(tail_x, tail_y)
    tail_rise = tail_slope * (tail_x[-1] - tail_x[0]) if len(tail_x) > 1 else 0.0
    final = ys[-1] if ys else 0.0
    return {
        "slope_mb_per_10k": round(least_squares_slope(xs, ys), 3),
        "tail_slope_mb_per_10k": round(tail_slope, 3),
        "tail_rise_mb": round(tail_rise, 2),
        "final_rss_mb": round(final, 1),
        "growth_trend": tail_rise > max(2.0, 0.02 * final),
    }


def _load(result: dict, target: str, concurrency: int) -> dict | None:
    return result["targets"].get(target, {}).get("load", {}).get(str(concurrency))


def _stream(result: dict, target: str, key: str) -> dict | None:
    return result["targets"].get(target, {}).get(key)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:6.2f}x" if a and b else "     -"


def _delta(a: float | None, b: float | None) -> str:
    return f"{a - b:+7.3f}" if a is not None and b is not None else "      -"


def load_table(result: dict) -> list[str]:
    head = f"{'target':<10}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>10}"
    head += f"{'p50-direct':>12}{'rps/direct':>12}{'rps/fwd':>10}{'errors':>8}{'other%':>8}"
    lines = [head]
    for target in result["targets"]:
        for conc in result["settings"]["concurrency"]:
            row = _load(result, target, conc)
            if row is None:
                continue
            direct = _load(result, "direct", conc) or {}
            fwd = _load(result, "forwarder", conc) or {}
            line = f"{target:<10}{conc:>5}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}"
            line += f"{row['rps']:>10.0f}{_delta(row['p50_ms'], direct.get('p50_ms')):>12}"
            line += f"{_ratio(row['rps'], direct.get('rps')):>12}"
            line += f"{_ratio(row['rps'], fwd.get('rps')):>10}{row['errors']:>8}"
            line += f"{row.get('other_cpu_pct', 0):>8.0f}"
            lines.append(line)
    return lines


def stream_table(result: dict) -> list[str]:
    head = f"{'target':<10}{'event p50':>10}{'TTFC p50':>10}{'TTFC p99':>10}{'TTFC-direct':>13}"
    head += f"{'end p50':>9}{'c64 req/s':>11}{'rps/fwd':>9}{'errors':>8}{'other%':>8}"
    lines = [head]
    direct = _stream(result, "direct", "stream_c1") or {}
    fwd_bulk = _stream(result, "forwarder", "stream_c64") or {}
    for target in result["targets"]:
        probe = _stream(result, target, "stream_c1")
        if probe is None:
            continue
        bulk = _stream(result, target, "stream_c64") or {}
        ttfc = probe["first_chunk_p50_ms"]
        line = f"{target:<10}{probe.get('first_event_p50_ms') or 0:>10.3f}"
        line += f"{ttfc or 0:>10.3f}{probe['first_chunk_p99_ms'] or 0:>10.3f}"
        line += f"{_delta(ttfc, direct.get('first_chunk_p50_ms')):>13}{probe['p50_ms']:>9.3f}"
        line += f"{bulk.get('rps', 0):>11.0f}{_ratio(bulk.get('rps'), fwd_bulk.get('rps')):>9}"
        line += f"{probe['errors'] + bulk.get('errors', 0):>8}"
        other = max(probe.get("other_cpu_pct", 0), bulk.get("other_cpu_pct", 0))
        line += f"{other:>8.0f}"
        lines.append(line)
    return lines


def memory_lines(result: dict) -> list[str]:
    lines = []
    for target, data in result["targets"].items():
        if "rss_after_load_mb" in data:
            rss, served = data["rss_after_load_mb"], data.get("requests_served", 0)
            lines.append(f"{target:<10} RSS {rss:.1f} MB after its load points ({served} req)")
    series = result.get("memory")
    if series:
        points = ", ".join(f"{s['requests'] // 1000}k:{s['rss_mb']:.1f}" for s in series["samples"])
        trend = series["trend"]
        lines.append(f"{series['target']} RSS series (requests:MB): {points}")
        first, last = series["samples"][0], series["samples"][-1]
        if "anon_mb" in first and "anon_mb" in last:
            lines.append(
                f"anonymous {first['anon_mb']:.1f} -> {last['anon_mb']:.1f} MB, "
                f"file-backed {first.get('file_mb', 0):.1f} -> {last.get('file_mb', 0):.1f} MB"
            )
        lines.append(
            f"slope {trend['slope_mb_per_10k']:+.3f} MB/10k req overall, "
            f"{trend['tail_slope_mb_per_10k']:+.3f} MB/10k over the second half "
            f"(fitted rise {trend['tail_rise_mb']:+.2f} MB); "
            f"growth trend: {'YES' if trend['growth_trend'] else 'no'}"
        )
    return lines


def goal_verdicts(result: dict) -> list[dict]:
    """One verdict per goal and gateway target that was measured."""
    verdicts = []
    for target in GATEWAY_TARGETS:
        if target not in result["targets"]:
            continue
        verdicts += _latency_goals(result, target)
    series = result.get("memory")
    if series:
        trend = series["trend"]
        ok = trend["final_rss_mb"] <= RSS_LIMIT_MB and not trend["growth_trend"]
        figure = f"{trend['final_rss_mb']:.1f} MB after {series['samples'][-1]['requests']} req"
        figure += f", tail slope {trend['tail_slope_mb_per_10k']:+.3f} MB/10k"
        goal = f"RSS <= {RSS_LIMIT_MB:.0f} MB, no growth trend"
        verdicts.append(_verdict(series["target"], goal, figure, ok))
    return verdicts


def _latency_goals(result: dict, target: str) -> list[dict]:
    out = []
    own, direct = _load(result, target, 1), _load(result, "direct", 1)
    if own and direct:
        added = own["p50_ms"] - direct["p50_ms"]
        goal = f"c1 p50 <= direct + {ADDED_P50_LIMIT_MS} ms"
        out.append(_verdict(target, goal, f"+{added:.3f} ms", added <= ADDED_P50_LIMIT_MS))
    own, fwd = _load(result, target, 64), _load(result, "forwarder", 64)
    if own and fwd and fwd["rps"]:
        share = own["rps"] / fwd["rps"]
        goal = f"c64 req/s >= {THROUGHPUT_SHARE_GOAL:.0%} of forwarder"
        out.append(_verdict(target, goal, f"{share:.0%}", share >= THROUGHPUT_SHARE_GOAL))
    own, fwd = _stream(result, target, "stream_c64"), _stream(result, "forwarder", "stream_c64")
    if own and fwd and fwd["rps"]:
        share = own["rps"] / fwd["rps"]
        goal = f"stream c64 req/s >= {STREAM_SHARE_GOAL:.0%} of forwarder"
        out.append(_verdict(target, goal, f"{share:.0%}", share >= STREAM_SHARE_GOAL))
    own, direct = _stream(result, target, "stream_c1"), _stream(result, "direct", "stream_c1")
    if own and direct and own["first_chunk_p50_ms"] and direct["first_chunk_p50_ms"]:
        added = own["first_chunk_p50_ms"] - direct["first_chunk_p50_ms"]
        goal = f"stream TTFC p50 <= direct + {TTFC_LIMIT_MS} ms"
        out.append(_verdict(target, goal, f"+{added:.3f} ms", added <= TTFC_LIMIT_MS))
    return out


def _verdict(target: str, goal: str, figure: str, ok: bool) -> dict:
    return {"target": target, "goal": goal, "figure": figure, "met": ok}


def render(result: dict) -> str:
    settings = result["settings"]
    machine = result["machine"]
    out = [
        f"Gateway benchmark {result['started_at']} on {machine['cpu']} "
        f"({machine['cores']} cores), Python {machine['python']}, "
        f"code {result.get('code', {}).get('commit', '?')}"
        + (
            " with uncommitted changes" if result.get("code", {}).get("uncommitted_changes") else ""
        ),
        f"{settings['rounds']} round(s) of {settings['seconds']:.0f} s per point (median round "
        f"shown), generator {settings['generator']}, stream gap {settings['stream_gap_ms']} ms",
        "other% = CPU used meanwhile by processes outside the benchmark, % of one core "
        f"(points re-measured above {settings.get('max_other_cpu_pct', '-')}%; "
        f"{settings.get('waited_for_quiet_s', 0):.0f} s spent waiting for quiet)",
        "",
        "Non-streaming POST /v1/chat/completions",
        *load_table(result),
        "",
        "Streaming at c1 from the Python client: first SSE event of any kind, TTFC = first",
        "event carrying text, end of stream; req/s of streamed requests at c64 (load tool)",
        *stream_table(result),
        "",
        "Memory",
        *memory_lines(result),
        "",
        "Goals",
    ]
    for v in result.get("goals", []):
        mark = "MET " if v["met"] else "MISS"
        out.append(f"  [{mark}] {v['target']:<6} {v['goal']:<42} {v['figure']}")
    return "\n".join(out)


if __name__ == "__main__":
    with open(sys.argv[1]) as saved:
        print(render(json.load(saved)))
