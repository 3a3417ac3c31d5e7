"""Cluster benchmark for web chat endpoints: the cost of forwarding to the owner, failover.

Two ``aiem serve --no-console`` instances on one fresh PostgreSQL database, the fixture chat
site with a login (tests/web_chat) on 127.0.0.1 and real Chromium, which runs on instance A,
the owner of the endpoint's lease. Measured:

- forwarding: the same session's turns alternately through A (served where the browser is)
  and through B (forwarded to A), JSON (request to whole answer) and streamed (request to
  the first content chunk); the added latency is B minus A, p50 and p90. A web chat turn
  varies by a hundred ms and more, which hides the forwarding; so the bare cost is measured
  too, on a request the owner answers at once without the browser (a field web chats refuse:
  the owner's own 400), through A and through B;
- failover: SIGKILL A, then ask B every 0.5 s: the time from the kill until B holds the lease
  and the time until B's first answer (the browser started from the stored storage state).

Both instances, Chromium and this client share the machine's cores. Usage:
``AIEM_TEST_POSTGRES_URL=... python -m bench.cluster.webchat [--turns 20]``; figures are
printed and written to bench/results/cluster_webchat.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from cryptography.fernet import Fernet

from tests.gateway_proc import REPO_ROOT, GatewayProcess
from tests.web_chat.webchat_sites import SiteServer
from tests.web_chat.webchat_support import members_endpoint

RESULTS = REPO_ROOT / "bench" / "results" / "cluster_webchat.json"


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 1),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1),
        "max": round(ordered[-1], 1),
    }


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    name = "aiem_bench_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(
        "postgresql+psycopg://" + server_url.split("://", 1)[1], isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server_url.rpartition("/")[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def chat_body(prompt: str, stream: bool = False) -> dict[str, Any]:
    return {"model": "members", "stream": stream, "messages": [{"role": "user", "content": prompt}]}


def json_turn(client: httpx.Client, url: str, prompt: str, session: str) -> float:
    started = time.perf_counter()
    response = client.post(
        url + "/v1/chat/completions", json=chat_body(prompt), headers={"X-Session-Id": session}
    )
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed


def first_chunk(client: httpx.Client, url: str, prompt: str, session: str) -> float:
    started = time.perf_counter()
    first: float | None = None
    with client.stream(
        "POST",
        url + "/v1/chat/completions",
        json=chat_body(prompt, stream=True),
        headers={"X-Session-Id": session},
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: ") and '"content":"' in line:
                if '"content":""' not in line:
                    first = (time.perf_counter() - started) * 1000
    assert first is not None, "no content chunk"
    return first


def refused_at_once(client: httpx.Client, url: str, forwarded: bool) -> float:
    body = {**chat_body("seed is not for web chats"), "seed": 7}
    started = time.perf_counter()
    response = client.post(url + "/v1/chat/completions", json=body)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 400, response.text
    assert ("x-aiem-owner" in response.headers) == forwarded, response.headers
    return elapsed


def bare_forwarding(a: GatewayProcess, b: GatewayProcess, requests: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"a": [], "b": []}
    with httpx.Client(timeout=30) as client:
        for _ in range(20):  # warm: connections, the forwarder's pool
            refused_at_once(client, a.url, forwarded=False)
            refused_at_once(client, b.url, forwarded=True)
        for _ in range(requests):
            samples["a"].append(refused_at_once(client, a.url, forwarded=False))
            samples["b"].append(refused_at_once(client, b.url, forwarded=True))
    result: dict[str, Any] = {k: summary(v) for k, v in samples.items()}
    result["added_ms"] = {q: round(result["b"][q] - result["a"][q], 1) for q in ("p50", "p90")}
    return result


def forwarding(a: GatewayProcess, b: GatewayProcess, turns: int) -> dict[str, Any]:
    """Turns alternately through A and B, so a conversation growing longer weighs on both."""
    samples: dict[str, list[float]] = {k: [] for k in ("json_a", "json_b", "ttfc_a", "ttfc_b")}
    with httpx.Client(timeout=60) as client:
        for warm in range(2):
            json_turn(client, a.url, f"warm a {warm}", "warm")
            json_turn(client, b.url, f"warm b {warm}", "warm")
        for turn in range(turns):
            for side, gw in (("a", a), ("b", b)):
                samples[f"json_{side}"].append(json_turn(client, gw.url, f"j{turn}", "json"))
                samples[f"ttfc_{side}"].append(first_chunk(client, gw.url, f"s{turn}", "sse"))
    result: dict[str, Any] = {k: summary(v) for k, v in samples.items()}
    for kind in ("json", "ttfc"):
        result[f"{kind}_added_ms"] = {
            q: round(result[f"{kind}_b"][q] - result[f"{kind}_a"][q], 1) for q in ("p50", "p90")
        }
    return result


def failover(a: GatewayProcess, b: GatewayProcess) -> dict[str, Any]:
    b_id = httpx.get(b.url + "/cluster", timeout=5).json()["instance"]
    with httpx.Client(timeout=60) as client:
        json_turn(client, b.url, "before the kill", "failover")
        a.kill()
        killed = time.monotonic()
        owned_at = answered_at = None
        refusals: dict[int, int] = {}
        while answered_at is None and time.monotonic() - killed < 90:
            if owned_at is None:
                owner = client.get(b.url + "/endpoints/members").json().get("owner") or {}
                if owner.get("instance") == b_id and not owner.get("expired"):
                    owned_at = time.monotonic()
            response = client.post(
                b.url + "/v1/chat/completions",
                json=chat_body("after the kill"),
                headers={"X-Session-Id": "failover"},
            )
            if response.status_code == 200:
                answered_at = time.monotonic()
            else:
                refusals[response.status_code] = refusals.get(response.status_code, 0) + 1
                time.sleep(0.5)
    if answered_at is None:
        raise RuntimeError("B never answered after the kill")
    return {
        "kill_to_lease_s": round((owned_at or answered_at) - killed, 1),
        "kill_to_first_answer_s": round(answered_at - killed, 1),
        "refusals_meanwhile": refusals,
    }


def run(turns: int, server_url: str) -> dict[str, Any]:
    sites = SiteServer().start()
    key = Fernet.generate_key().decode()
    try:
        with fresh_database(server_url) as db, tempfile.TemporaryDirectory() as tmp:
            env = {"DATABASE_URL": db}
            if os.environ.get("AIEM_BROWSER_EXECUTABLE"):
                env["AIEM_BROWSER_EXECUTABLE"] = os.environ["AIEM_BROWSER_EXECUTABLE"]
            a = GatewayProcess(Path(tmp) / "a", secret_key=key, env=env).start()
            b = GatewayProcess(Path(tmp) / "b", secret_key=key, env=env).start()
            try:
                created = httpx.post(a.url + "/endpoints", json=members_endpoint(sites), timeout=60)
                created.raise_for_status()
                logins = sites.state.logins
                result = {
                    "bare_forwarding": bare_forwarding(a, b, 200),
                    "forwarding": forwarding(a, b, turns),
                    "failover": failover(a, b),
                }
                result["failover"]["new_logins"] = sites.state.logins - logins
            finally:
                b.stop()
                a.stop()
    finally:
        sites.stop()
    result["cpus"] = os.cpu_count()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--pg-url", default=os.environ.get("AIEM_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    if not args.pg_url:
        parser.error("a PostgreSQL server is needed: --pg-url or AIEM_TEST_POSTGRES_URL")
    result = run(args.turns, args.pg_url)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
