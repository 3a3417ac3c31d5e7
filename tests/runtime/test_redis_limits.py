"""Exact cluster-wide limits in a real redis-server: two instances' admission sharing one Redis,
and the fall back to the shares while Redis is away."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

import pytest
import redis

from runtime.cluster_limits import ClusterLimits
from runtime.core import Runtime, RuntimeOptions
from runtime.errors import CapacityExceeded
from runtime.limits import ConcurrencyGate, RateLimiter
from runtime.manager import LiveEndpoint
from runtime.redis_limits import rate_retry_after, redacted
from runtime.router import Attempts, RoutingOptions
from tests.fakes import registry_with_scripted
from tests.fixtures.redis_server import redis_server_fixture  # noqa: F401
from tests.runtime.test_manager import ask, create

ENDPOINT = "0123456789abcdef0123456789abcdef"


class Instance:
    """One instance's admission of one endpoint: its own gate and limiter, its own link to
    Redis, through the same Attempts walk the chat path takes."""

    def __init__(
        self, url: str, me: str, *, per_minute: int | None, concurrent: int, wait_s: float = 5.0
    ) -> None:
        self.live = LiveEndpoint(
            id=ENDPOINT,
            name="shared",
            endpoint_type="scripted",
            model_name="",
            priority=0,
            provider=None,  # type: ignore[arg-type]  # admission never reaches the provider
            gate=ConcurrencyGate(concurrent, queue_timeout_s=wait_s),
            limiter=RateLimiter(per_minute) if per_minute else None,
            timeout=30.0,
            input_cost_per_1k=0.0,
            output_cost_per_1k=0.0,
        )
        manager = SimpleNamespace(live={ENDPOINT: self.live})
        cluster = SimpleNamespace(id=me, postgres=False)
        self.limits = ClusterLimits(
            manager,  # type: ignore[arg-type]
            cluster,  # type: ignore[arg-type]
            redis_url=url,
            redis_heartbeat_s=0.2,
            redis_dead_after_s=0.6,
        )

    async def admit(self) -> Attempts:
        attempts = Attempts([self.live], RoutingOptions(), {})
        await attempts.admit()
        return attempts

    async def try_once(self) -> bool:
        try:
            (await self.admit()).release()
        except CapacityExceeded:
            return False
        return True


@pytest.fixture
async def two(redis_server):
    made: list[Instance] = []

    async def make(**limits: object) -> tuple[Instance, Instance]:
        for me in ("instance-a", "instance-b"):
            instance = Instance(redis_server.url, me, **limits)  # type: ignore[arg-type]
            await instance.limits.start()
            assert instance.live.shared is not None  # Redis decides
            made.append(instance)
        return made[-2], made[-1]

    yield make
    for instance in made:
        await instance.limits.stop()


def slots(redis_server) -> dict[str, int]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        return {k: int(v) for k, v in client.hgetall(f"aiem:{{{ENDPOINT}}}:slots").items()}
    finally:
        client.close()


async def test_exactly_the_limit_per_minute_across_two_instances(two):
    a, b = await two(per_minute=60, concurrent=100)
    outcomes = [await (a if i % 2 == 0 else b).try_once() for i in range(120)]
    assert sum(outcomes) == 60
    # Each alone stays far below its local bucket of 60: the shared count refused them.
    assert sum(outcomes[0::2]) == 30 and sum(outcomes[1::2]) == 30
    with pytest.raises(CapacityExceeded) as refused:
        await b.admit()
    assert "60 requests per minute across the cluster" in str(refused.value)
    assert 0 < refused.value.retry_after <= 60  # type: ignore[operator]


@pytest.mark.parametrize("minutes_ago", [1, 2])
async def test_the_previous_minute_carries_over_in_proportion(two, redis_server, minutes_ago):
    """A full previous minute leaves room for as much of the limit as this minute has run (a
    sliding window); a full minute two minutes back leaves the whole limit."""
    a, _ = await two(per_minute=60, concurrent=100)
    client = redis.Redis.from_url(redis_server.url)
    try:
        seconds, micros = client.time()
        now_ms = seconds * 1000 + micros // 1000
        window, elapsed_ms = divmod(now_ms, 60_000)
        client.hset(f"aiem:{{{ENDPOINT}}}:rate", mapping={"w": window - minutes_ago, "cur": 60})
    finally:
        client.close()
    admitted = sum([await a.try_once() for _ in range(70)])
    if window != time.time() * 1000 // 60_000:
        pytest.skip("a minute boundary passed during the test")
    expected = 60 if minutes_ago == 2 else 60 * elapsed_ms // 60_000
    assert abs(admitted - expected) <= 1, (admitted, expected)


async def test_concurrency_is_counted_across_instances_and_a_crash_gives_slots_back(
    two, redis_server
):
    a, b = await two(per_minute=None, concurrent=3, wait_s=1.5)
    held = [await a.admit(), await a.admit(), await b.admit()]
    assert slots(redis_server) == {"instance-a": 2, "instance-b": 1}
    with pytest.raises(CapacityExceeded, match="3 concurrent requests across the cluster"):
        await b.admit()  # b has local room, the cluster has none
    assert b.live.gate.in_flight == 1  # the refused one gave its local slot back

    waiting = asyncio.create_task(b.admit())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    held.pop(0).release()  # a's slot is written back in the background: b's waiter gets it
    held.append(await asyncio.wait_for(waiting, 2))
    assert slots(redis_server) == {"instance-a": 1, "instance-b": 2}

    # a dies holding a slot (no more renewals, no release): b's waiter gets it once a's
    # liveness (0.6 s here, 15 s in production) runs out.
    task = a.limits.redis._task  # type: ignore[union-attr]
    assert task is not None
    task.cancel()
    crashed = time.monotonic()
    held.append(await b.admit())
    assert 0.3 < time.monotonic() - crashed < 1.5
    assert slots(redis_server) == {"instance-b": 3}
    for attempts in held[-3:]:
        attempts.release()


async def test_redis_killed_mid_run_falls_back_then_recovers(
    redis_server, data_dir, secret_key, caplog
):
    options = RuntimeOptions(
        database_url=f"sqlite:///{data_dir / 'aiem.db'}",
        data_dir=data_dir,
        secret_key=secret_key,
        redis_url=redis_server.url,
    )
    rt = Runtime(options, registry=registry_with_scripted())
    await rt.start()
    try:
        row = await rt.manager.create(create(rate_limit_per_minute=600, start=True))
        live = rt.manager.live[row.id]
        assert live.shared is rt.limits.redis
        assert (await rt.get_endpoint(row.id))["limits"]["mode"] == "redis"
        for i in range(3):
            await rt.chat(live, ask(f"before {i}"))
        assert rate_count(redis_server, row.id) == 3

        caplog.set_level(logging.INFO, logger="aiem.limits")
        redis_server.kill()
        answers = [await rt.chat(live, ask(f"during {i}")) for i in range(5)]
        assert all(a.content.startswith("turn 1: during") for a in answers)  # never failed
        assert live.shared is None and live.limiter.per_minute == 600  # the whole: one instance
        assert (await rt.get_endpoint(row.id))["limits"]["mode"] == "local"
        ours = [r for r in caplog.records if r.name == "aiem.limits"]
        failed = [r for r in ours if r.levelno == logging.WARNING]
        assert len(failed) == 1 and redacted(redis_server.url) in failed[0].getMessage()
        assert redis_server.password not in caplog.text

        redis_server.start()
        started = time.monotonic()
        while live.shared is None:
            assert time.monotonic() - started < 5, "Redis not used again after it came back"
            await asyncio.sleep(0.05)
        await rt.chat(live, ask("after"))
        assert rate_count(redis_server, row.id) == 1  # a fresh Redis: counting again
        assert any("is back" in r.getMessage() for r in caplog.records if r.name == "aiem.limits")
    finally:
        await rt.stop()


def rate_count(redis_server, endpoint_id: str) -> int:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        return int(client.hget(f"aiem:{{{endpoint_id}}}:rate", "cur") or 0)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("prev", "cur", "elapsed_ms", "expected_s"),
    [
        (60, 0, 0, 1.0),  # the previous minute full: room once 1/60 of its weight has faded
        (60, 0, 30_000, 0.001),  # (estimate says full only by rounding: at once)
        (0, 60, 20_000, 41.0),  # this minute full: the next, once 1/60 of this one faded
    ],
)
def test_retry_after_of_the_sliding_window(prev, cur, elapsed_ms, expected_s):
    assert rate_retry_after(60, prev, cur, elapsed_ms) == pytest.approx(expected_s, abs=0.01)


def test_redacted_url_hides_only_the_password():
    assert redacted("redis://:s3cret@cache:6380/2") == "redis://:***@cache:6380/2"
    assert redacted("rediss://app:s3cret@[::1]/0") == "rediss://app:***@[::1]/0"
    assert redacted("redis://cache:6379/0") == "redis://cache:6379/0"
