"""Sample a running target with py-spy and say where its time goes.

py-spy's ``raw`` format is one collapsed stack per line (``frame;frame;... count``). From it
this module ranks functions by own time and by inclusive time, and groups own time by the
package the code lives in, which is the first question when a gateway misses its goals.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

FRAME_FILE = re.compile(r"\((?P<file>[^:()]+)(?::\d+)?\)$")
PACKAGE_MARKERS = (
    "gateway",
    "runtime",
    "providers",
    "store",
    "starlette",
    "fastapi",
    "pydantic",
    "pydantic_core",
    "uvicorn",
    "httptools",
    "aiohttp",
    "httpx",
    "httpcore",
    "anyio",
    "sqlalchemy",
    "sqlmodel",
    "streamlit",
    "orjson",
    "asyncio",
    "json",
    "logging",
)


# Where a gateway request's time goes, by frames a stack passes through (inclusive shares).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "/v1 handler (parse, chat path, response)": ("(gateway/openai_compat.py",),
    "  chat path (runtime/chat.py)": ("(runtime/chat.py",),
    "    provider call (providers/, aiohttp)": ("(providers/",),
    "metrics writer thread (SQLAlchemy inserts)": ("_write (runtime/metrics.py",),
    "FastAPI telemetry checks (OpenTelemetry)": (
        "NativeTelemetry.enabled",
        "_unconfigured (fastapi/telemetry",
    ),
}


def py_spy_path() -> str | None:
    """py-spy on PATH, else next to this interpreter (installed into the same venv)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def py_spy_available() -> bool:
    return py_spy_path() is not None


def start_recording(pid: int, seconds: int, raw_path: Path) -> subprocess.Popen:
    """Start sampling ``pid``; the caller drives load meanwhile and then ``wait()``s."""
    command = [py_spy_path() or "py-spy", "record", "--pid", str(pid), "--duration", str(seconds)]
    command += ["--rate", "250", "--format", "raw", "--nonblocking", "--output", str(raw_path)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read_collapsed(raw_path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def package_of(frame: str) -> str:
    """The package a frame's file belongs to, from its path, e.g. ``starlette``."""
    match = FRAME_FILE.search(frame)
    if not match:
        return "other"
    parts = Path(match["file"]).parts
    for part in reversed(parts[:-1]):
        if part in PACKAGE_MARKERS:
            return part
    stem = Path(match["file"]).stem
    return stem if stem in PACKAGE_MARKERS else "other"


def summarize(stacks: list[tuple[list[str], int]], top: int = 20) -> dict:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        leaf = frames[-1]
        own[leaf] += count
        by_package[package_of(leaf)] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, round(100 * c / total, 1)) for name, c in counter.most_common(n)]

    return {
        "samples": total,
        "categories_pct": categorize(stacks, total),
        "own_pct": share(own, top),
        "inclusive_pct": share(inclusive, top),
        "own_by_package_pct": share(by_package, len(by_package)),
    }


def categorize(stacks: list[tuple[list[str], int]], total: int) -> list[tuple[str, float]]:
    """Inclusive share per category, plus what is left outside the handler and the writer:
    the HTTP server, middleware, routing and the event loop itself."""
    counts = dict.fromkeys(CATEGORIES, 0)
    for frames, count in stacks:
        joined = ";".join(frames)
        for name, markers in CATEGORIES.items():
            if any(marker in joined for marker in markers):
                counts[name] += count
    names = list(CATEGORIES)
    rest = total - counts[names[0]] - counts[names[3]]
    shares = [(name, round(100 * c / total, 1)) for name, c in counts.items()] if total else []
    if total:
        shares.append(
            ("server, middleware, routing, loop (the rest)", round(100 * rest / total, 1))
        )
    return shares


def render_summary(summary: dict) -> str:
    lines = [f"py-spy samples: {summary['samples']}", "where the time goes (%, inclusive):"]
    lines += [f"  {pct:5.1f}  {name}" for name, pct in summary.get("categories_pct", [])]
    lines.append("own time by package (%):")
    lines += [f"  {pct:5.1f}  {name}" for name, pct in summary["own_by_package_pct"]]
    lines.append("top functions by own time (%):")
    lines += [f"  {pct:5.1f}  {name}" for name, pct in summary["own_pct"]]
    lines.append("top functions by inclusive time (%):")
    lines += [f"  {pct:5.1f}  {name}" for name, pct in summary["inclusive_pct"]]
    return "\n".join(lines)
