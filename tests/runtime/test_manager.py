"""The manager on both stores, with a scripted provider: lifecycle, limits, sessions, metrics."""

from __future__ import annotations

import asyncio

import pytest
from sqlmodel import select

from providers.base import HealthResult, Message
from providers.errors import AuthError, RateLimited
from runtime.chat import ChatInput
from runtime.errors import CapacityExceeded, Conflict, InvalidConfig, NotFound
from store.models import EndpointCreate, EndpointEvent, EndpointUpdate, MetricBucket, RequestLog
from tests.fakes import ScriptedProvider
from tests.runtime.test_health import eventually


def create(name: str = "fake", endpoint_type: str = "scripted", **fields: object) -> EndpointCreate:
    return EndpointCreate(name=name, endpoint_type=endpoint_type, **fields)  # type: ignore[arg-type]


def ask(prompt: str, session_id: str | None = None) -> ChatInput:
    return ChatInput(messages=[Message("user", prompt)], session_id=session_id)


async def test_start_stop_restart_record_states_and_events(rt):
    row = await rt.manager.create(create())
    assert row.state == "stopped"
    assert (await rt.manager.start(row.id)).state == "healthy"
    assert (await rt.manager.restart(row.id)).state == "healthy"
    stopped = await rt.manager.stop(row.id)
    assert (stopped.state, stopped.desired_state) == ("stopped", "stopped")
    kinds = [e["kind"] for e in rt.repo.events(row.id)]
    assert kinds.count("state_change") >= 4 and "restart" in kinds and "created" in kinds
    assert ScriptedProvider.starts == 2


async def test_validation_errors(rt):
    with pytest.raises(InvalidConfig, match="known types: .*scripted"):
        await rt.manager.create(EndpointCreate(name="x", endpoint_type="nope"))
    with pytest.raises(InvalidConfig, match="config.delay"):
        await rt.manager.create(create(config={"delay": -1}))
    await rt.manager.create(create())
    with pytest.raises(Conflict, match="already exists"):
        await rt.manager.create(create())
    with pytest.raises(NotFound):
        await rt.manager.start("missing")


async def test_running_endpoints_come_back_after_a_restart(make_runtime):
    first = await make_runtime()
    up = await first.manager.create(create("up", start=True))
    down = await first.manager.create(create("down"))
    await first.stop()
    second = await make_runtime()
    assert up.id in second.manager.live and down.id not in second.manager.live
    assert second.repo.get(up.id).state == "healthy"


async def test_failed_start_is_retried_with_backoff(make_runtime):
    rt = await make_runtime(auto_restart=True)
    row = await rt.manager.create(create(config={"fail_start": 1}))
    started = await rt.manager.start(row.id)
    assert started.state == "failed" and "backend refused" in started.state_reason
    for _ in range(40):
        if row.id in rt.manager.live and rt.repo.get(row.id).state == "healthy":
            break
        await asyncio.sleep(0.1)
    assert rt.repo.get(row.id).state == "healthy"
    assert "auto_restart" in [e["kind"] for e in rt.repo.events(row.id)]


async def test_chat_on_a_stopped_endpoint_is_a_conflict(rt):
    row = await rt.manager.create(create())
    with pytest.raises(Conflict, match="not running"):
        await rt.live_endpoint(row.id)


async def test_concurrency_cap_queues_the_excess(rt):
    row = await rt.manager.create(
        create(max_concurrent_requests=2, config={"delay": 0.3}, start=True)
    )
    live = await rt.live_endpoint(row.id)
    results = await asyncio.gather(*(rt.chat(live, ask(f"q{i}")) for i in range(3)))
    assert [r.content for r in results] == ["turn 1: q0", "turn 1: q1", "turn 1: q2"]
    assert live.gate.in_flight == 0


async def test_concurrency_cap_without_a_queue_refuses_the_excess(make_runtime):
    rt = await make_runtime(queue_length=0)
    row = await rt.manager.create(
        create(max_concurrent_requests=2, config={"delay": 0.3}, start=True)
    )
    live = await rt.live_endpoint(row.id)
    results = await asyncio.gather(
        *(rt.chat(live, ask(f"q{i}")) for i in range(3)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, CapacityExceeded)]
    assert len(refused) == 1 and "2 concurrent" in str(refused[0])
    assert live.gate.in_flight == 0


async def test_rate_limit_per_minute(rt):
    row = await rt.manager.create(create(rate_limit_per_minute=2, start=True))
    live = await rt.live_endpoint(row.id)
    await rt.chat(live, ask("a"))
    await rt.chat(live, ask("b"))
    with pytest.raises(CapacityExceeded) as info:
        await rt.chat(live, ask("c"))
    assert info.value.retry_after and 0 < info.value.retry_after <= 30


async def test_session_history_is_sent_and_committed(make_runtime):
    rt = await make_runtime()
    row = await rt.manager.create(create(start=True))
    live = await rt.live_endpoint(row.id)
    first = await rt.chat(live, ask("hello", "s-1"))
    second = await rt.chat(live, ask("again", "s-1"))
    assert (first.content, second.content) == ("turn 1: hello", "turn 2: again")
    sent = ScriptedProvider.requests[-1]
    assert [m.content for m in sent.messages] == ["hello", "turn 1: hello", "again"]
    assert sent.conversation == {"turns": 1}
    stored = rt.sessions.get("s-1")
    assert [m["content"] for m in stored["messages"]] == [
        "hello",
        "turn 1: hello",
        "again",
        "turn 2: again",
    ]
    await rt.stop()
    again = await make_runtime()
    third = await again.chat(await again.live_endpoint(row.id), ask("more", "s-1"))
    assert third.content == "turn 3: more"


async def test_resent_history_is_not_duplicated(rt):
    row = await rt.manager.create(create(start=True))
    live = await rt.live_endpoint(row.id)
    await rt.chat(live, ask("one", "s-2"))
    full = [
        Message("system", "be brief"),
        Message("user", "one"),
        Message("assistant", "turn 1: one"),
        Message("user", "two"),
    ]
    result = await rt.chat(live, ChatInput(messages=full, session_id="s-2"))
    assert result.content == "turn 2: two"
    assert ScriptedProvider.requests[-1].messages[0] == Message("system", "be brief")
    assert rt.sessions.get("s-2")["message_count"] == 4


async def test_failed_turn_is_not_committed(rt):
    row = await rt.manager.create(create(start=True))
    live = await rt.live_endpoint(row.id)
    ScriptedProvider.enqueue(RateLimited("slow down", retry_after=3))
    with pytest.raises(RateLimited):
        await rt.chat(live, ask("lost", "s-3"))
    with pytest.raises(NotFound):
        rt.sessions.get("s-3")
    assert rt.metrics.endpoint_snapshot(row.id)["errors"] == 1


async def test_streaming_commits_and_records(rt):
    row = await rt.manager.create(create(start=True))
    live = await rt.live_endpoint(row.id)
    stream = await rt.open_stream(live, ask("stream me", "s-4"))
    deltas = [c.delta async for c in stream.chunks()]
    assert "".join(deltas).strip() == "turn 1: stream me"
    assert stream.result is not None and stream.result.ttft_ms is not None
    assert rt.sessions.get("s-4")["message_count"] == 2
    assert live.gate.in_flight == 0


async def test_metrics_are_written_in_batches_and_survive_restart(make_runtime):
    rt = await make_runtime()
    row = await rt.manager.create(create(start=True, input_cost_per_1k=1.0, output_cost_per_1k=2.0))
    live = await rt.live_endpoint(row.id)
    for i in range(5):
        result = await rt.chat(live, ask(f"m{i}"))
    assert result.cost == pytest.approx((5 * 1.0 + 7 * 2.0) / 1000)
    assert await rt.metrics.flush() == 5
    with rt.store.session() as session:
        assert len(session.exec(select(RequestLog)).all()) == 5
        bucket = session.exec(select(MetricBucket)).one()
    assert bucket.requests == 5 and bucket.tokens_out == 35 and sum(bucket.latency_hist) == 5
    await rt.stop()
    again = await make_runtime()
    snap = again.metrics.endpoint_snapshot(row.id)
    assert snap["requests"] == 5 and snap["success_rate"] == 100.0


async def test_update_restarts_a_running_endpoint(rt):
    row = await rt.manager.create(create(start=True))
    updated = await rt.manager.update(row.id, EndpointUpdate(display_name="Renamed"))
    assert updated.display_name == "Renamed" and updated.state == "healthy"
    assert ScriptedProvider.starts == 2
    with pytest.raises(InvalidConfig):
        await rt.manager.update(row.id, EndpointUpdate(config={"nope": 1}))
    assert rt.repo.get(row.id).config == {}


async def test_delete_stops_and_removes(rt):
    row = await rt.manager.create(create(start=True))
    await rt.manager.delete(row.id)
    assert row.id not in rt.manager.live
    with pytest.raises(NotFound):
        rt.repo.get(row.id)
    with rt.store.session() as session:
        assert session.exec(select(EndpointEvent)).all() == []


async def test_provider_reported_failure_restarts(make_runtime):
    rt = await make_runtime(auto_restart=True)
    row = await rt.manager.create(create(start=True))
    await rt.manager.on_provider_state(row.id, "failed", "browser crashed")
    assert rt.repo.get(row.id).state_reason == "browser crashed"
    for _ in range(40):
        if row.id in rt.manager.live and rt.repo.get(row.id).state == "healthy":
            break
        await asyncio.sleep(0.1)
    assert rt.repo.get(row.id).state == "healthy"


async def test_sessions_expire(make_runtime):
    rt = await make_runtime(session_timeout_s=0.5)
    row = await rt.manager.create(create(start=True))
    await rt.chat(await rt.live_endpoint(row.id), ask("x", "old"))
    await asyncio.sleep(0.7)
    assert rt.sessions.sweep() == 1
    assert rt.sessions.recent() == []


async def test_the_runtime_ends_a_slow_answer_at_the_endpoint_timeout(rt):
    from providers.errors import ProviderTimeout

    row = await rt.manager.create(create(request_timeout=0.2, config={"delay": 2}, start=True))
    live = await rt.live_endpoint(row.id)
    with pytest.raises(ProviderTimeout, match="0.2 s"):
        await rt.chat(live, ask("slow"))
    stream = await rt.open_stream(live, ask("slow stream"))
    with pytest.raises(ProviderTimeout):
        async for _chunk in stream.chunks():
            pass
    assert live.gate.in_flight == 0
    assert rt.metrics.endpoint_snapshot(row.id)["errors"] == 2


async def test_an_edit_swaps_a_running_endpoint_without_refusing_a_chat(rt):
    """Make before break: the old provider answers what it admitted, then is closed; no chat
    in between finds the endpoint missing."""
    row = await rt.manager.create(create(config={"delay": 0.4}, start=True))
    old = ScriptedProvider.instances[-1]
    slow = asyncio.create_task(rt.chat(await rt.live_endpoint(row.id), ask("before")))
    await asyncio.sleep(0.05)  # admitted by the old provider
    refused: list[Exception] = []
    done = asyncio.Event()

    async def keep_routing() -> int:
        routed = 0
        while not done.is_set():
            try:
                (live,) = await rt.route("fake")
                routed += 1
            except Conflict as exc:
                refused.append(exc)
            await asyncio.sleep(0.005)
        return routed

    router = asyncio.create_task(keep_routing())
    updated = await rt.manager.update(row.id, EndpointUpdate(config={"delay": 0.0}))
    done.set()
    assert await router > 0 and refused == []
    assert updated.state == "healthy" and ScriptedProvider.starts == 2
    new = ScriptedProvider.instances[-1]
    assert new is not old and not new.stopped
    # The chat admitted before the edit is answered by the old provider, still open.
    assert not old.stopped
    assert (await slow).content == "turn 1: before" and old.answered == 1
    after = await rt.chat(await rt.live_endpoint(row.id), ask("after"))
    assert after.content == "turn 1: after" and new.answered == 1
    await eventually(lambda: old.stopped, timeout=2.0)  # closed once its last request was answered


async def test_a_change_made_elsewhere_is_applied_without_a_gap(rt):
    """Another instance edited the row: this one swaps its copy the same way."""
    row = await rt.manager.create(create(start=True))
    old = ScriptedProvider.instances[-1]
    await asyncio.to_thread(rt.repo.update, row.id, EndpointUpdate(model_name="second"))
    applying = asyncio.create_task(rt.manager.apply_change(row.id))
    while not applying.done():
        (live,) = await rt.route("fake")  # never a Conflict meanwhile
        await asyncio.sleep(0)
    await applying
    (live,) = await rt.route("fake")
    assert live.model_name == "second" and live.provider is not old
    assert (await rt.chat(live, ask("x"))).content == "turn 1: x"


async def test_a_failing_edit_closes_the_old_copy_and_says_why(make_runtime):
    rt = await make_runtime(auto_restart=False)
    row = await rt.manager.create(create(start=True))
    old = ScriptedProvider.instances[-1]
    await rt.manager.update(row.id, EndpointUpdate(config={"fail_start": 2}))
    stored = rt.repo.get(row.id)
    assert stored.state == "failed"
    assert stored.state_reason == "start failed: backend refused to start"
    assert row.id not in rt.manager.live
    await eventually(lambda: old.stopped, timeout=2.0)
    with pytest.raises(Conflict, match="not running"):
        await rt.route("fake")


async def test_an_edit_whose_credentials_are_rejected_fails_without_retries(rt):
    row = await rt.manager.create(create(start=True))
    old = ScriptedProvider.instances[-1]
    ScriptedProvider.enqueue_health(
        HealthResult(ok=False, detail="invalid api key", kind=AuthError.kind)
    )
    await rt.manager.update(row.id, EndpointUpdate(credentials={"api_key": "wrong"}))
    stored = rt.repo.get(row.id)
    assert stored.state == "failed"
    assert stored.state_reason == "credentials rejected: invalid api key"
    assert ScriptedProvider.instances[-1].stopped and not rt.manager._restarts
    await eventually(lambda: old.stopped, timeout=2.0)  # the old copy too: nothing in flight
    with pytest.raises(Conflict, match="state: failed"):
        await rt.route("fake")


async def test_a_chat_for_a_browser_endpoint_being_restarted_waits_for_it(rt):
    """A browser endpoint restarts stop-first (one browser per profile); a chat that comes
    meanwhile waits for it instead of being refused."""
    row = await rt.manager.create(
        create(
            endpoint_type="scripted_browser",
            config={"start_delay": 0.5},
            group_name="pilots",
            start=True,
        )
    )
    old = ScriptedProvider.instances[-1]
    restarting = asyncio.create_task(rt.manager.restart(row.id))
    await asyncio.sleep(0.1)
    assert old.stopped and row.id not in rt.manager.live  # closed before the new one opens
    (live,) = await rt.route("fake")  # by name, waiting for the relaunch
    assert live.provider is ScriptedProvider.instances[-1] and live.provider is not old
    assert (await rt.chat(live, ask("hi"))).content == "turn 1: hi"
    await restarting
    # By its group too.
    restarting = asyncio.create_task(rt.manager.restart(row.id))
    await asyncio.sleep(0.1)
    assert row.id not in rt.manager.live
    (member,) = await rt.route("pilots")
    assert member.provider is ScriptedProvider.instances[-1] and member is not live
    await restarting
    # By id on the per-endpoint route too; one that does not come back ends the wait with
    # a refusal that says why.
    editing = asyncio.create_task(
        rt.manager.update(row.id, EndpointUpdate(config={"start_delay": 0.5, "fail_start": 9}))
    )
    await asyncio.sleep(0.1)
    with pytest.raises(Conflict, match="state: failed"):
        await asyncio.wait_for(rt.live_endpoint(row.id), 5)
    await editing
