"""Load generators: wrk for request throughput and latency, a raw asyncio client for streams.

wrk (C, one thread) keeps the load generator from eating the core the target needs; its Lua
``done`` hook prints the figures as one JSON line so nothing scrapes its human output. The
Python client is the fallback when wrk is missing and the only one that can see when the
first SSE event of a stream arrives.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httptools
import uvloop

WRK_MARKER = "WRK_RESULT "

WRK_DONE_HOOK = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT {\"requests\":%.0f,\"duration_us\":%.0f,\"socket_errors\":%.0f," ..
    "\"status_errors\":%.0f,\"p50_us\":%.0f,\"p90_us\":%.0f,\"p99_us\":%.0f," ..
    "\"max_us\":%.0f,\"mean_us\":%.1f}\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


@dataclass
class LoadResult:
    """One load point: how many requests completed and how fast, latencies in ms."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    generator: str
    first_chunk_p50_ms: float | None = None
    first_chunk_p99_ms: float | None = None
    first_event_p50_ms: float | None = None  # any event, even an empty role-only one

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "rps": round(self.rps, 1)}


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def wrk_script(body: str) -> str:
    """A Lua script that POSTs ``body`` as JSON and reports through ``WRK_DONE_HOOK``."""
    if "]==]" in body:
        raise ValueError("body would end the Lua long string early")
    return (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{body}]==]\n" + WRK_DONE_HOOK
    )


def parse_wrk_output(stdout: str) -> LoadResult:
    for line in stdout.splitlines():
        if line.startswith(WRK_MARKER):
            raw = json.loads(line[len(WRK_MARKER) :])
            return LoadResult(
                requests=int(raw["requests"]),
                seconds=raw["duration_us"] / 1e6,
                errors=int(raw["socket_errors"] + raw["status_errors"]),
                p50_ms=raw["p50_us"] / 1000,
                p90_ms=raw["p90_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                max_ms=raw["max_us"] / 1000,
                generator="wrk",
            )
    raise RuntimeError(f"wrk printed no result line:\n{stdout[-2000:]}")


def run_wrk(url: str, body: str, connections: int, seconds: float) -> LoadResult:
    """Drive ``url`` with ``connections`` keep-alive connections for ``seconds``."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(wrk_script(body))
        command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
        command += ["--timeout", "10s", "-s", str(script), url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
    return parse_wrk_output(done.stdout)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class _Tally:
    latencies_ms: list[float] = field(default_factory=list)
    first_chunk_ms: list[float] = field(default_factory=list)
    first_event_ms: list[float] = field(default_factory=list)
    errors: int = 0


# A delta with text in it. A relay may open a stream with an empty, role-only event before
# the upstream has said anything; the first chunk that counts is the first one with text.
CONTENT_DELTA = re.compile(rb'"content"\s*:\s*"[^"]')


class _ResponseReader:
    """httptools callbacks for one response; notes when the first SSE event and the first
    event carrying text arrive."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.body = bytearray()
        self.first_event_at: float | None = None
        self.first_chunk_at: float | None = None
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.body += body
        if self.first_event_at is None and b"data:" in self.body:
            self.first_event_at = time.perf_counter()
        if self.first_event_at is not None and self.first_chunk_at is None:
            if CONTENT_DELTA.search(self.body):
                self.first_chunk_at = time.perf_counter()

    def on_message_complete(self) -> None:
        self.complete = True


def _request_bytes(url: str, body: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    payload = body.encode()
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return parts.hostname or "127.0.0.1", parts.port or 80, head.encode() + payload


async def _one_request(reader, writer, request: bytes, tally: _Tally) -> None:
    """One POST on a kept-alive connection, timed to the first SSE event and to the end."""
    started = time.perf_counter()
    writer.write(request)
    response = _ResponseReader()
    while not response.complete:
        data = await reader.read(65536)
        if not data:
            raise ConnectionResetError("server closed the connection mid-response")
        response.parser.feed_data(data)
    finished = time.perf_counter()
    streamed = response.first_event_at is not None
    ok = response.parser.get_status_code() == 200 and (not streamed or b"[DONE]" in response.body)
    if not ok:
        tally.errors += 1
        return
    tally.latencies_ms.append((finished - started) * 1000)
    if streamed:
        tally.first_event_ms.append((response.first_event_at - started) * 1000)
        if response.first_chunk_at is not None:
            tally.first_chunk_ms.append((response.first_chunk_at - started) * 1000)


async def _worker(url: str, body: str, deadline: float, tally: _Tally) -> None:
    host, port, request = _request_bytes(url, body)
    writer = None
    while time.perf_counter() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            await asyncio.wait_for(_one_request(reader, writer, request, tally), 30)
        except (OSError, TimeoutError, httptools.HttpParserError):
            tally.errors += 1
            if writer is not None:
                writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def python_load(url: str, body: str, connections: int, seconds: float) -> LoadResult:
    """Closed-loop load from ``connections`` keep-alive clients for ``seconds``.

    A raw asyncio client with httptools parsing, so the client's own cost stays small
    next to the figures it measures.
    """
    tally = _Tally()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(_worker(url, body, deadline, tally) for _ in range(connections)))
    return _tally_result(tally, time.perf_counter() - started)


def _tally_result(tally: _Tally, elapsed: float) -> LoadResult:
    lat, first = tally.latencies_ms, tally.first_chunk_ms
    return LoadResult(
        requests=len(lat),
        seconds=elapsed,
        errors=tally.errors,
        p50_ms=percentile(lat, 50),
        p90_ms=percentile(lat, 90),
        p99_ms=percentile(lat, 99),
        max_ms=max(lat, default=0.0),
        generator="python",
        first_chunk_p50_ms=percentile(first, 50) if first else None,
        first_chunk_p99_ms=percentile(first, 99) if first else None,
        first_event_p50_ms=percentile(tally.first_event_ms, 50) if tally.first_event_ms else None,
    )


def run_load(url: str, body: str, connections: int, seconds: float) -> LoadResult:
    """wrk when installed, else the Python client."""
    if wrk_available():
        return run_wrk(url, body, connections, seconds)
    return uvloop.run(python_load(url, body, connections, seconds))


def run_stream_probe(url: str, body: str, connections: int, seconds: float) -> LoadResult:
    """Time to first SSE event and to the end of the stream, from the Python client."""
    return uvloop.run(python_load(url, body, connections, seconds))
