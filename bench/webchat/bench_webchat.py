"""Web chat engine benchmark: overhead, first streamed chunk, 20 concurrent conversations.

Runs the fixture chat sites of tests/web_chat on 127.0.0.1 and real Chromium. The sites
report (epoch ms) when the first and the last word of each answer appeared on the page, so:

- overhead = API response received - last word on the page (goal: p50 < 100 ms);
- first chunk = first streamed chunk received - first word on the page (goal: < 150 ms);
- concurrency = 20 sessions talking at once on one endpoint: throughput and the memory
  (unique set size of the browser's processes) each open conversation adds;
- three open sessions = a turn on any of three open sessions' pages (older pages are
  background tabs) against a turn while only one page is open (goal: within 1.2x).

Both the provider in-process and the real gateway (``aiem serve --no-console`` over HTTP)
are measured. Usage: ``python -m bench.webchat.bench_webchat [--turns 30] [--no-gateway]
[--three-sessions-only]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from cryptography.fernet import Fernet

from providers.base import ChatRequest, Message
from tests.gateway_proc import GatewayProcess
from tests.web_chat.webchat_sites import SiteServer
from tests.web_chat.webchat_support import SITE_CONFIGS, make_provider, site_spec


def now_ms() -> float:
    return time.time() * 1000


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 1),
        "p90": round(pick(0.9), 1),
        "max": round(ordered[-1], 1),
    }


async def wait_mark(sites: SiteServer, prompt: str) -> dict[str, float]:
    for _ in range(100):
        mark = sites.state.marks.get(prompt)
        if mark and mark.get("done_at"):
            return mark  # type: ignore[return-value]
        await asyncio.sleep(0.02)
    raise RuntimeError(f"the page never reported {prompt!r}")


# -- in-process provider ---------------------------------------------------------------------


async def provider_overhead(sites: SiteServer, turns: int) -> list[float]:
    provider = make_provider(site_spec(sites, "textarea", name="bench_overhead"))
    await provider.start()
    samples = []
    try:
        conversation = None
        for turn in range(turns):
            prompt = f"overhead probe {turn}"
            request = ChatRequest(
                [Message("user", prompt)], session_id="o", conversation=conversation
            )
            response = await provider.chat(request)
            received = now_ms()
            conversation = response.conversation
            samples.append(received - (await wait_mark(sites, prompt))["done_at"])
    finally:
        await provider.stop()
    return samples


async def provider_first_chunk(sites: SiteServer, turns: int) -> list[float]:
    provider = make_provider(site_spec(sites, "sse", name="bench_stream"))
    await provider.start()
    samples = []
    try:
        conversation = None
        for turn in range(turns):
            prompt = f"first chunk probe {turn}"
            request = ChatRequest(
                [Message("user", prompt)], session_id="f", conversation=conversation
            )
            first = None
            async for chunk in provider.stream(request):
                if chunk.delta and first is None:
                    first = now_ms()
                conversation = chunk.conversation or conversation
            samples.append(first - (await wait_mark(sites, prompt))["first_at"])
    finally:
        await provider.stop()
    return samples


def browser_uss(marker: str) -> float:
    """Unique memory (MB) of the endpoint's Chromium: its main process and children."""
    for process in psutil.Process().children(recursive=True):
        try:
            if f"--aiem-endpoint={marker}" in process.cmdline() and not any(
                arg.startswith("--type=") for arg in process.cmdline()
            ):
                family = [process, *process.children(recursive=True)]
                return sum(p.memory_full_info().uss for p in family) / 2**20
        except psutil.Error:
            continue
    raise LookupError(marker)


async def concurrency(sites: SiteServer, sessions: int, turns: int) -> dict[str, Any]:
    spec = site_spec(
        sites,
        "textarea",
        name="bench_many",
        max_concurrent_requests=sessions,
        overrides={"idle_pages": sessions},
        persistent_session=False,
    )
    provider = make_provider(spec)
    await provider.start()
    try:
        idle_mb = browser_uss("bench_many")

        async def converse(index: int) -> int:
            conversation = None
            for turn in range(turns):
                prompt = f"session {index} turn {turn}"
                request = ChatRequest(
                    [Message("user", prompt)], session_id=f"c{index}", conversation=conversation
                )
                response = await provider.chat(request)
                assert f"turn {turn + 1}: you said '{prompt}'" in response.content
                conversation = response.conversation
            return turns

        started = time.perf_counter()
        done = sum(await asyncio.gather(*(converse(i) for i in range(sessions))))
        elapsed = time.perf_counter() - started
        busy_mb = browser_uss("bench_many")
    finally:
        await provider.stop()
    return {
        "sessions": sessions,
        "turns": done,
        "seconds": round(elapsed, 2),
        "turns_per_second": round(done / elapsed, 2),
        "browser_mb_idle": round(idle_mb, 1),
        "browser_mb_with_conversations": round(busy_mb, 1),
        "mb_per_conversation": round((busy_mb - idle_mb) / sessions, 1),
    }


async def timed_turn(provider, prompt: str, session: str, conversation) -> tuple[float, Any]:
    started = time.perf_counter()
    response = await provider.chat(
        ChatRequest([Message("user", prompt)], session_id=session, conversation=conversation)
    )
    assert prompt in response.content
    return (time.perf_counter() - started) * 1000, response.conversation


async def three_open_sessions(sites: SiteServer, turns: int) -> dict[str, Any]:
    """Turn times (send by clicking) with one page open, then on each of three open pages."""
    spec = site_spec(sites, "textarea", name="bench_three", persistent_session=False)
    provider = make_provider(spec)
    await provider.start()
    conversations: dict[str, Any] = {}
    solo: list[float] = []
    per_session: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    try:
        for turn in range(turns):
            took, conversations["a"] = await timed_turn(
                provider, f"solo {turn}", "a", conversations.get("a")
            )
            solo.append(took)
        for session in ("b", "c"):  # open the other two pages
            _, conversations[session] = await timed_turn(provider, "open", session, None)
        for turn in range(turns):
            for session in ("a", "b", "c"):
                took, conversations[session] = await timed_turn(
                    provider, f"three {turn} {session}", session, conversations[session]
                )
                per_session[session].append(took)
    finally:
        await provider.stop()
    solo_p50 = statistics.median(solo)
    worst = max(statistics.median(samples) for samples in per_session.values())
    return {
        "one_page_turn_ms": summary(solo),
        **{f"session_{name}_turn_ms": summary(v) for name, v in per_session.items()},
        "worst_session_p50_over_one_page_p50": round(worst / solo_p50, 2),
    }


# -- through the gateway ---------------------------------------------------------------------


def gateway_measure(sites: SiteServer, turns: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as data:
        gateway = GatewayProcess(Path(data), secret_key=Fernet.generate_key().decode()).start()
        try:
            with gateway.client() as api:
                return {
                    "overhead": gateway_overhead(api, sites, turns),
                    "first_chunk": gateway_first_chunk(api, sites, turns),
                }
        finally:
            gateway.stop()


def gateway_endpoint(api: httpx.Client, sites: SiteServer, site: str, name: str) -> str:
    body = {
        "name": name,
        "endpoint_type": "web_chat",
        "url": sites.url(f"/{site}/"),
        "model_name": f"{site}-bot",
        "config": SITE_CONFIGS[site],
        "browser_config": {"headless": True},
    }
    endpoint_id = api.post("/endpoints", json=body).json()["id"]
    assert api.post(f"/endpoints/{endpoint_id}/start").json()["state"] == "healthy"
    return endpoint_id


def gateway_overhead(api: httpx.Client, sites: SiteServer, turns: int) -> list[float]:
    endpoint_id = gateway_endpoint(api, sites, "textarea", "gw_overhead")
    samples = []
    for turn in range(turns):
        prompt = f"gateway overhead {turn}"
        body = {"prompt": prompt, "session_id": "gw-o"}
        assert api.post(f"/endpoints/{endpoint_id}/chat", json=body).status_code == 200
        received = now_ms()
        samples.append(received - asyncio.run(wait_mark(sites, prompt))["done_at"])
    return samples


def gateway_first_chunk(api: httpx.Client, sites: SiteServer, turns: int) -> list[float]:
    gateway_endpoint(api, sites, "sse", "gw_stream")
    samples = []
    for turn in range(turns):
        prompt = f"gateway first chunk {turn}"
        body = {
            "model": "gw_stream",
            "stream": True,
            "messages": [{"role": "user", "content": prompt}],
        }
        first = None
        with api.stream(
            "POST", "/v1/chat/completions", json=body, headers={"X-Session-Id": "gw-f"}
        ) as response:
            for line in response.iter_lines():
                if first is None and line.startswith("data: {") and '"content"' in line:
                    if json.loads(line[6:])["choices"][0]["delta"].get("content"):
                        first = now_ms()
        samples.append(first - asyncio.run(wait_mark(sites, prompt))["first_at"])
    return samples


async def in_process(sites: SiteServer, turns: int, sessions: int) -> dict[str, Any]:
    return {
        "provider_overhead_ms": summary(await provider_overhead(sites, turns)),
        "provider_first_chunk_ms": summary(await provider_first_chunk(sites, turns)),
        "concurrency": await concurrency(sites, sessions, 3),
        "three_open_sessions": await three_open_sessions(sites, turns),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--no-gateway", action="store_true")
    parser.add_argument("--three-sessions-only", action="store_true")
    args = parser.parse_args()
    sites = SiteServer().start()
    try:
        if args.three_sessions_only:
            report = {"three_open_sessions": asyncio.run(three_open_sessions(sites, args.turns))}
            print(json.dumps(report, indent=2))
            return
        report = asyncio.run(in_process(sites, args.turns, args.sessions))
        if not args.no_gateway:
            measured = gateway_measure(sites, args.turns)
            report["gateway_overhead_ms"] = summary(measured["overhead"])
            report["gateway_first_chunk_ms"] = summary(measured["first_chunk"])
    finally:
        sites.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
