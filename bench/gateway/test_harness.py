"""Checks of the benchmark's own parts: ``.venv/bin/python -m pytest bench/gateway -q``.

The mock upstream and the forwarder run as real processes and are driven by the real
``openai`` client, so the benchmark's upstream is known to speak the protocol it stands in for.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import cpu_watch
import loadgen
import openai
import profile_stacks
import pytest
import report
import targets


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> targets.Target:
    with targets.mock_upstream(tmp_path_factory.mktemp("logs"), stream_gap_ms=2.0) as direct:
        yield direct


@pytest.fixture(scope="module")
def forwarder(upstream, tmp_path_factory) -> targets.Target:
    with targets.forwarder(tmp_path_factory.mktemp("logs"), upstream) as fwd:
        yield fwd


def _client(target: targets.Target) -> openai.OpenAI:
    base = target.completions_url.removesuffix("/chat/completions")
    return openai.OpenAI(base_url=base, api_key="unused", max_retries=0)


@pytest.mark.parametrize("which", ["upstream", "forwarder"])
def test_openai_client_reads_a_completion(which, request):
    target = request.getfixturevalue(which)
    answer = _client(target).chat.completions.create(
        model=target.model, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "Hello from the mock upstream"
    assert answer.usage.total_tokens == 14


@pytest.mark.parametrize("which", ["upstream", "forwarder"])
def test_openai_client_reads_a_stream(which, request):
    target = request.getfixturevalue(which)
    words, usage = [], None
    stream = _client(target).chat.completions.create(
        model=target.model, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            words.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(words) == "Hello from the mock upstream"
    assert usage is not None and usage.completion_tokens == 5


def test_wrk_result_line_is_parsed(upstream):
    if not loadgen.wrk_available():
        pytest.skip("wrk is not installed")
    result = loadgen.run_wrk(upstream.completions_url, upstream.body(False), 4, 1)
    assert result.requests > 100
    assert result.errors == 0
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms


def test_wrk_counts_error_statuses(upstream):
    if not loadgen.wrk_available():
        pytest.skip("wrk is not installed")
    missing = upstream.completions_url.replace("/chat/completions", "/nowhere")
    result = loadgen.run_wrk(missing, upstream.body(False), 2, 1)
    assert result.requests > 0 and result.errors == result.requests


@pytest.mark.parametrize("which", ["upstream", "forwarder"])
def test_stream_probe_sees_first_event_before_the_end(which, request):
    target = request.getfixturevalue(which)
    result = loadgen.run_stream_probe(target.completions_url, target.body(True), 1, 1.0)
    assert result.errors == 0 and result.requests > 10
    # The first event leaves with the headers and the remaining seven follow 2 ms apart,
    # so a relay that buffered the stream would show a first event as late as the end.
    assert result.first_chunk_p50_ms < 5.0
    assert result.p50_ms - result.first_chunk_p50_ms >= 10.0


def test_python_load_counts_failures_instead_of_timing_them(upstream):
    missing = upstream.completions_url.replace("/chat/completions", "/nowhere")
    result = loadgen.run_stream_probe(missing, upstream.body(False), 2, 0.5)
    assert result.requests == 0 and result.errors > 0


def test_lua_script_refuses_a_body_that_would_escape_it():
    with pytest.raises(ValueError):
        loadgen.wrk_script('{"content": "]==]"}')


def test_memory_trend_tells_growth_from_a_plateau():
    requests = [i * 5_000 for i in range(21)]
    flat = [
        {"requests": r, "rss_mb": 120.0 + (0.3 if i % 2 else 0)} for i, r in enumerate(requests)
    ]
    rising = [{"requests": r, "rss_mb": 120.0 + r / 10_000} for r in requests]
    assert not report.memory_trend(flat)["growth_trend"]
    trend = report.memory_trend(rising)
    assert trend["growth_trend"] and trend["tail_slope_mb_per_10k"] == pytest.approx(1.0)


def test_goal_verdicts_compare_against_direct_and_forwarder():
    def load(p50, rps):
        return {"p50_ms": p50, "rps": rps}

    def probe(ttfc):
        return {"first_chunk_p50_ms": ttfc}

    result = {
        "targets": {
            "direct": {"load": {"1": load(0.1, 9000)}, "stream_c1": probe(0.2)},
            "forwarder": {"load": {"64": load(5.0, 3000)}},
            "serve": {
                "load": {"1": load(0.9, 900), "64": load(40.0, 2000)},
                "stream_c1": probe(1.5),
            },
        }
    }
    verdicts = {
        v["goal"].split()[0] + v["goal"].split()[1]: v["met"] for v in report.goal_verdicts(result)
    }
    assert verdicts == {"c1p50": True, "c64req/s": False, "streamTTFC": False}


def test_profile_summary_groups_own_time_by_package(tmp_path: Path):
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "run (asyncio/base_events.py:600);chat_completions (gateway/openai_compat.py:40) 3\n"
        "run (asyncio/base_events.py:600);validate (pydantic/main.py:10) 1\n"
    )
    summary = profile_stacks.summarize(profile_stacks.read_collapsed(raw))
    assert summary["samples"] == 4
    assert dict(summary["own_by_package_pct"]) == {"gateway": 75.0, "pydantic": 25.0}
    assert dict(summary["inclusive_pct"])["run (asyncio/base_events.py:600)"] == 100.0
    categories = dict(summary["categories_pct"])
    assert categories["/v1 handler (parse, chat path, response)"] == 75.0
    assert categories["server, middleware, routing, loop (the rest)"] == 25.0


def test_cpu_watch_sees_a_busy_process_outside_the_benchmark():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        with cpu_watch.CpuWatch([]) as watch:
            time.sleep(1.0)
    finally:
        busy.kill()
        busy.wait()
    assert watch.foreign_pct > 50


def test_quiet_gate_waits_out_other_load_within_its_budget():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        gate = cpu_watch.QuietGate([], threshold_pct=25.0, budget_s=1.0)
        started = time.perf_counter()
        foreign = gate.wait(window_s=0.25)
    finally:
        busy.kill()
        busy.wait()
    assert foreign > 25.0  # it gave up on quiet rather than pretending
    assert gate.exhausted and time.perf_counter() - started >= 1.0


def test_first_chunk_is_the_first_event_with_text_not_an_empty_opener():
    reader = loadgen._ResponseReader()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 1000\r\n\r\n"
    reader.parser.feed_data(
        head + b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    )
    time.sleep(0.02)
    reader.parser.feed_data(b'data: {"choices":[{"delta":{"content":"Hello"}}]}\n\n')
    assert reader.first_event_at is not None and reader.first_chunk_at is not None
    assert reader.first_chunk_at - reader.first_event_at >= 0.015
