"""The health monitor on both stores with the scripted provider: passive signals, probes that
find a provider dead, the crash limit of auto-restart, and the states each step records."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import pytest

from providers.base import HealthResult, Message
from providers.errors import AuthError, InvalidRequest, RateLimited, Unavailable
from runtime.chat import ChatInput
from runtime.core import Runtime
from runtime.errors import Conflict, EndpointCooling
from store.models import EndpointCreate
from tests.fakes import ScriptedProvider
from tests.gateway.test_faults import break_the_store

FAST = {"restart_backoff_s": 0.01, "health_check_interval_s": 3600.0}


def create(name: str = "fake", **fields: object) -> EndpointCreate:
    return EndpointCreate(name=name, endpoint_type="scripted", start=True, **fields)  # type: ignore[arg-type]


def ask(prompt: str = "hi") -> ChatInput:
    return ChatInput(messages=[Message("user", prompt)])


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


def transitions(rt: Runtime, endpoint_id: str) -> list[tuple[str, str | None, str]]:
    """(kind, to_state, reason) of every state change since creation, oldest first."""
    history = rt.repo.state_history(endpoint_id)
    return [(e["kind"], e["to_state"], e["reason"]) for e in history if e["kind"] != "created"][
        ::-1
    ]


async def fail_with(rt: Runtime, live, *errors: Exception) -> None:
    ScriptedProvider.enqueue(*errors)
    for error in errors:
        with pytest.raises(type(error)):
            await rt.chat(live, ask())


async def test_stop_passes_through_stopping(make_runtime):
    rt = await make_runtime(**FAST)
    row = await rt.manager.create(create())
    await rt.manager.stop(row.id)
    states = [to for _, to, _ in transitions(rt, row.id)]
    assert states == ["starting", "healthy", "stopping", "stopped"]


async def test_caller_errors_never_count_but_a_404_does(make_runtime):
    rt = await make_runtime(**FAST)
    row = await rt.manager.create(create(health_config={"failure_threshold": 3}))
    live = await rt.live_endpoint(row.id)
    await fail_with(rt, live, *[InvalidRequest("bad field", status=400) for _ in range(6)])
    await fail_with(rt, live, InvalidRequest("unprocessable", status=422))
    assert live.breaker.failures == 0 and live.state == "healthy"
    await fail_with(rt, live, *[InvalidRequest("no such model", status=404) for _ in range(3)])
    assert live.state == "cooling" and live.breaker.state == "open"


async def test_failures_degrade_then_cool_and_a_cooling_endpoint_is_not_called(make_runtime):
    rt = await make_runtime(**FAST)
    row = await rt.manager.create(create())
    live = await rt.live_endpoint(row.id)
    await fail_with(rt, live, Unavailable("HTTP 502"), Unavailable("HTTP 502"))
    assert live.state == "degraded"
    await rt.chat(live, ask())  # a success ends the streak
    assert live.state == "healthy"
    await fail_with(rt, live, *[Unavailable("HTTP 503") for _ in range(5)])
    assert live.state == "cooling" and not live.routable()
    sent = len(ScriptedProvider.requests)
    with pytest.raises(EndpointCooling) as refused:
        await rt.chat(live, ask())
    assert 29 <= refused.value.retry_after <= 30
    with pytest.raises(EndpointCooling):
        await rt.open_stream(live, ask())
    assert len(ScriptedProvider.requests) == sent and live.gate.in_flight == 0
    await rt.health.settle()
    stored = rt.repo.get(row.id)
    assert stored.state == "cooling" and stored.state_until is not None
    assert "5 consecutive failures (last: unavailable: HTTP 503)" in stored.state_reason
    kinds = [(kind, to) for kind, to, _ in transitions(rt, row.id)]
    assert kinds[-4:] == [
        ("state_change", "degraded"),
        ("state_change", "healthy"),
        ("state_change", "degraded"),
        ("breaker_open", "cooling"),
    ]


async def test_upstream_rate_limits_degrade_without_opening_the_breaker(make_runtime):
    rt = await make_runtime(**FAST)
    row = await rt.manager.create(create(health_config={"failure_threshold": 1}))
    live = await rt.live_endpoint(row.id)
    # Without an HTTP 429 the runtime does not wait the limit out itself: it reaches the caller.
    await fail_with(rt, live, RateLimited("slow down", retry_after=0.3, status=None))
    assert live.state == "degraded" and live.breaker.state == "closed"
    await rt.health.settle()
    assert rt.repo.get(row.id).state_reason == "upstream rate limit: rate_limited: slow down"
    await asyncio.sleep(0.35)
    await rt.chat(live, ask())
    assert live.state == "healthy"


async def test_slow_answers_and_a_low_success_rate_degrade(make_runtime):
    rt = await make_runtime(**FAST)
    config = {"window_s": 0.6, "min_samples": 3, "slow_ms": 20, "degrade_after_failures": 99}
    row = await rt.manager.create(create(config={"delay": 0.03}, health_config=config))
    live = await rt.live_endpoint(row.id)
    for _ in range(8):
        await rt.chat(live, ask())
    assert live.state == "degraded"
    await rt.health.settle()
    assert "slow: mean latency" in rt.repo.get(row.id).state_reason

    fast = await rt.manager.create(create("flaky", health_config={**config, "slow_ms": 5000}))
    flaky = await rt.live_endpoint(fast.id)
    for _ in range(4):
        await fail_with(rt, flaky, Unavailable("HTTP 500"))
        await rt.chat(flaky, ask())
    assert flaky.state == "degraded"
    assert "success rate 50%" in rt.health.watched[fast.id].reason


async def test_rejected_credentials_fail_the_endpoint_without_restarts(make_runtime):
    rt = await make_runtime(auto_restart=True, **FAST)
    row = await rt.manager.create(create())
    live = await rt.live_endpoint(row.id)
    await fail_with(rt, live, AuthError("invalid api key", status=401))
    assert not live.routable()
    await eventually(lambda: row.id not in rt.manager.live)
    await asyncio.sleep(0.1)
    stored = rt.repo.get(row.id)
    assert stored.state == "failed"
    assert stored.state_reason == "credentials rejected: invalid api key"
    assert ScriptedProvider.starts == 1 and not rt.manager._restarts
    with pytest.raises(Conflict, match="not running"):
        await rt.live_endpoint(row.id)


async def test_a_failing_first_probe_starts_degraded_and_a_passing_one_heals(make_runtime):
    rt = await make_runtime(restart_backoff_s=0.01, health_check_interval_s=0.05)
    ScriptedProvider.enqueue_health(HealthResult(ok=False, detail="backend warming up"))
    row = await rt.manager.create(create())
    await eventually(lambda: rt.repo.get(row.id).state == "healthy")
    steps = [(to, reason) for _, to, reason in transitions(rt, row.id)]
    assert steps[:2] == [("starting", ""), ("degraded", "first probe failed: backend warming up")]
    assert [to for to, _ in steps] == ["starting", "degraded", "healthy"]
    report = await rt.endpoint_health("fake")
    assert report["last_probe"]["ok"] and report["last_probe"]["detail"] == (
        "scripted backend is fine"
    )


async def test_a_probe_that_finds_the_provider_dead_restarts_it(make_runtime):
    rt = await make_runtime(restart_backoff_s=0.01, health_check_interval_s=0.05)
    config = {"probe_failures_to_fail": 3, "failure_threshold": 50}
    row = await rt.manager.create(create(health_config=config))
    ScriptedProvider.enqueue_health(*[HealthResult(ok=False, detail="browser gone")] * 3)
    await eventually(lambda: ScriptedProvider.starts == 2 and row.id in rt.manager.live)
    await eventually(lambda: rt.repo.get(row.id).state == "healthy")
    steps = transitions(rt, row.id)
    assert ("state_change", "failed", "3 probes failed in a row: browser gone") in steps
    assert "auto_restart" in [e["kind"] for e in rt.repo.events(row.id)]
    assert steps[-1][1] == "healthy"


async def test_five_crashes_in_ten_minutes_stop_auto_restart_until_an_operator_acts(
    make_runtime,
):
    rt = await make_runtime(auto_restart=True, **FAST)
    row = await rt.manager.create(create())
    for crash in range(1, 6):
        await rt.manager.on_provider_state(row.id, "failed", "browser crashed")
        if crash < 5:
            await eventually(lambda: row.id in rt.manager.live)
    stored = rt.repo.get(row.id)
    assert stored.state == "failed"
    assert stored.state_reason.startswith(
        "restarts exhausted: 5 crashes in 10 minutes (last: browser crashed)"
    )
    assert transitions(rt, row.id)[-1][0] == "restarts_exhausted"
    await asyncio.sleep(0.1)
    assert row.id not in rt.manager.live and ScriptedProvider.starts == 5
    assert await rt.manager.reconcile() == 0  # left for an operator
    assert (await rt.endpoint_health("fake"))["restarts"]["recent_crashes"] == 5
    assert (await rt.manager.start(row.id)).state == "healthy"
    assert (await rt.endpoint_health("fake"))["restarts"]["recent_crashes"] == 0


async def test_auto_restart_off_leaves_a_crashed_endpoint_failed(make_runtime):
    rt = await make_runtime(auto_restart=False, **FAST)
    row = await rt.manager.create(create())
    await rt.manager.on_provider_state(row.id, "failed", "browser crashed")
    await asyncio.sleep(0.1)
    assert row.id not in rt.manager.live and ScriptedProvider.starts == 1
    assert rt.repo.get(row.id).state_reason == "browser crashed"


async def test_transitions_reach_the_event_bus_in_order(make_runtime):
    rt = await make_runtime(**FAST)
    notes = []
    rt.events.subscribe(notes.append)
    row = await rt.manager.create(create(health_config={"failure_threshold": 3}))
    live = await rt.live_endpoint(row.id)
    await fail_with(rt, live, *[Unavailable("HTTP 502") for _ in range(3)])
    await rt.health.settle()
    seen = [(n.kind, n.from_state, n.to_state) for n in notes if n.endpoint_id == row.id]
    assert seen[-3:] == [
        ("state_change", "starting", "healthy"),
        ("state_change", "healthy", "degraded"),
        ("breaker_open", "degraded", "cooling"),
    ]
    assert "3 consecutive failures" in notes[-1].detail


async def test_probes_are_spread_and_bounded(make_runtime):
    class Slow:
        running = peak = 0
        started: list[float] = []

    async def slow_health(self) -> HealthResult:
        Slow.running += 1
        Slow.peak = max(Slow.peak, Slow.running)
        Slow.started.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.05)
        Slow.running -= 1
        return HealthResult(ok=True)

    rt = await make_runtime(health_check_interval_s=0.4)
    rt.health._slots = asyncio.Semaphore(2)
    rt.health.jitter = itertools.cycle([0.0, 0.25, 0.5, 0.75, 1.0]).__next__
    original = ScriptedProvider.health
    ScriptedProvider.health = slow_health  # type: ignore[method-assign]
    first_due = []
    try:
        for i in range(8):
            row = await rt.manager.create(create(f"ep{i}"))
            first_due.append(rt.health.watched[row.id].due - time.monotonic())
        Slow.started.clear()
        await asyncio.sleep(0.9)
    finally:
        ScriptedProvider.health = original  # type: ignore[method-assign]
    assert Slow.peak == 2  # never more at once than the concurrency bound
    assert len(Slow.started) >= 8  # every endpoint probed again within about an interval
    # The first scheduled probes of endpoints started together spread over the interval.
    assert max(first_due) - min(first_due) >= 0.25


async def test_a_state_decided_while_the_store_is_away_is_written_when_it_is_back(
    make_runtime, tmp_path
):
    rt = await make_runtime(**FAST)
    row = await rt.manager.create(create())
    live = await rt.live_endpoint(row.id)
    await rt.health.settle()
    working = break_the_store(rt, tmp_path)
    try:
        await fail_with(rt, live, Unavailable("HTTP 502"), Unavailable("HTTP 502"))
        assert live.state == "degraded"  # chats without a session need no store
        await asyncio.sleep(0.2)  # the writer has tried, and keeps the change
    finally:
        rt.store.engine.dispose()
        rt.store.engine = working
    await asyncio.wait_for(rt.health.settle(), 10)
    stored = rt.repo.get(row.id)
    assert stored.state == "degraded" and "HTTP 502" in stored.state_reason
