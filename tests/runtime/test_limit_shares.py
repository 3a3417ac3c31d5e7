"""Each instance's share of an endpoint's cluster-wide limits: the arithmetic, and resizing the
gate and the bucket in place when the set of instances changes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from runtime.cluster_limits import ClusterLimits
from runtime.errors import CapacityExceeded
from runtime.limits import ConcurrencyGate, RateLimiter, share_of
from runtime.manager import LiveEndpoint


def shares(limit: int, instances: int) -> list[int]:
    ids = [f"instance-{i}" for i in range(instances)]
    return [share_of(limit, ids, me) for me in ids]


@pytest.mark.parametrize("limit", [1, 2, 5, 7, 8, 10, 59, 60, 61, 100, 1000, 999_999])
@pytest.mark.parametrize("instances", [1, 2, 3, 4, 7, 16])
def test_shares_add_up_to_the_limit_and_never_fall_below_one(limit, instances):
    parts = shares(limit, instances)
    assert min(parts) >= 1
    assert max(parts) - min(parts) <= 1  # as even as whole numbers allow
    if limit >= instances:
        assert sum(parts) == limit  # exact, so well within 10 %
    else:
        assert parts == [1] * instances  # every instance still serves: at most one each


def test_shares_of_sixty_and_eight_over_three():
    assert shares(60, 3) == [20, 20, 20]
    assert shares(8, 3) == [3, 3, 2]  # the remainder to the first ids, the same on every one
    assert share_of(60, [], "alone") == 60  # single instance: the whole limit
    assert share_of(8, ["b", "c"], "a") == 3 and share_of(8, ["a", "b"], "c") == 2


def test_a_share_counts_this_instance_whether_listed_or_not():
    assert share_of(60, ["a", "b"], "a") == share_of(60, ["b"], "a") == 30


async def test_a_raised_gate_serves_its_queue_at_once():
    gate = ConcurrencyGate(1, queue_timeout_s=5)
    assert gate.try_enter()
    waiters = [asyncio.create_task(gate.enter("ep")) for _ in range(3)]
    await asyncio.sleep(0)
    assert gate.waiting == 3
    gate.resize(3)
    await asyncio.wait_for(asyncio.gather(*waiters[:2]), 1)
    assert (gate.in_flight, gate.waiting) == (3, 1)
    gate.resize(1)  # a cut lets the ones in flight finish: the queue moves only below it
    for _ in range(2):
        gate.leave()
    assert not waiters[2].done() and gate.in_flight == 1
    gate.leave()
    await asyncio.wait_for(waiters[2], 1)
    assert gate.in_flight == 1


async def test_refusals_name_the_cluster_limit_and_this_instances_share():
    gate = ConcurrencyGate(8, queue_length=0)
    gate.resize(3)
    for _ in range(3):
        assert gate.try_enter()
    with pytest.raises(CapacityExceeded) as refused:
        await gate.enter("ep")
    assert "limit of 8 concurrent requests across the cluster (this instance's share: 3)" in str(
        refused.value
    )
    limiter = RateLimiter(60)
    limiter.resize(20)
    for _ in range(20):
        limiter.take("ep")
    with pytest.raises(CapacityExceeded) as spent:
        limiter.take("ep")
    message = str(spent.value)
    assert "limited to 60 requests per minute across the cluster" in message
    assert "this instance's share: 20" in message
    assert 2.5 < spent.value.retry_after <= 3.0  # type: ignore[operator]  # 20/min: one per 3 s


def test_a_resized_bucket_keeps_its_fill_in_proportion():
    limiter = RateLimiter(60)
    for _ in range(30):
        limiter.take("ep")  # half full
    limiter.resize(20)  # two more instances joined: a third of the limit, still half full
    taken = 0
    with pytest.raises(CapacityExceeded):
        while True:
            limiter.take("ep")
            taken += 1
    assert taken == 10
    limiter.resize(60)  # alone again: the bucket grows back in proportion
    assert limiter.per_minute == 60 and limiter.configured == 60


def make_live(name: str, *, concurrent: int, per_minute: int | None) -> LiveEndpoint:
    return LiveEndpoint(
        id=name + "-id",
        name=name,
        endpoint_type="scripted",
        model_name="",
        priority=0,
        provider=None,  # type: ignore[arg-type]  # limits never reach the provider
        gate=ConcurrencyGate(concurrent),
        limiter=RateLimiter(per_minute) if per_minute else None,
        timeout=30.0,
        input_cost_per_1k=0.0,
        output_cost_per_1k=0.0,
    )


def test_the_heartbeat_view_sets_each_endpoints_share():
    chat = make_live("chat", concurrent=8, per_minute=60)
    solo = make_live("solo", concurrent=4, per_minute=None)
    manager = SimpleNamespace(live={chat.id: chat, solo.id: solo})
    cluster = SimpleNamespace(id="b", postgres=True)
    limits = ClusterLimits(manager, cluster)  # type: ignore[arg-type]
    limits.others = {"chat": ("a", "c")}
    limits.apply_all()
    assert (chat.gate.limit, chat.limiter.per_minute) == (3, 20)  # type: ignore[union-attr]
    assert solo.gate.limit == 4  # nobody else runs it
    assert limits.describe(chat) == {
        "mode": "share",
        "instances": 3,
        "max_concurrent_requests": 3,
        "rate_limit_per_minute": 20,
    }
    limits.others = {"chat": ("c",)}  # a died
    limits.apply_all()
    assert (chat.gate.limit, chat.limiter.per_minute) == (4, 30)  # type: ignore[union-attr]
    assert (chat.gate.configured, chat.limiter.configured) == (8, 60)  # type: ignore[union-attr]
