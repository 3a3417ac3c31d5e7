"""The concurrency gate's FIFO queue: order, a full queue, timeouts and cancellation."""

from __future__ import annotations

import asyncio

import pytest

from runtime.errors import CapacityExceeded
from runtime.limits import ConcurrencyGate


async def test_waiters_get_slots_in_arrival_order():
    gate = ConcurrencyGate(1, queue_length=10, queue_timeout_s=5)
    assert gate.try_enter()
    served: list[int] = []

    async def waiter(n: int) -> None:
        await gate.enter("ep")
        served.append(n)
        await asyncio.sleep(0)
        gate.leave()

    tasks = [asyncio.create_task(waiter(n)) for n in range(5)]
    await asyncio.sleep(0.01)
    assert gate.waiting == 5 and not gate.try_enter()  # nobody overtakes the queue
    gate.leave()
    await asyncio.gather(*tasks)
    assert served == [0, 1, 2, 3, 4]
    assert gate.in_flight == 0 and gate.waiting == 0


async def test_a_full_queue_refuses_at_once():
    gate = ConcurrencyGate(1, queue_length=1, queue_timeout_s=5)
    gate.try_enter()
    queued = asyncio.create_task(gate.enter("ep"))
    await asyncio.sleep(0)
    with pytest.raises(CapacityExceeded, match="1 are already queued") as info:
        await gate.enter("ep")
    assert info.value.retry_after == 1.0
    gate.leave()
    await queued
    assert gate.in_flight == 1


async def test_a_waiter_times_out_and_leaves_the_queue():
    gate = ConcurrencyGate(1, queue_length=5, queue_timeout_s=0.05)
    gate.try_enter()
    with pytest.raises(CapacityExceeded, match="0.05 s") as info:
        await gate.enter("ep")
    assert info.value.retry_after == 1.0
    assert gate.waiting == 0
    gate.leave()
    assert gate.in_flight == 0 and gate.try_enter()


async def test_a_cancelled_waiter_hands_its_slot_on():
    gate = ConcurrencyGate(1, queue_length=5, queue_timeout_s=5)
    gate.try_enter()
    first = asyncio.create_task(gate.enter("ep"))
    second = asyncio.create_task(gate.enter("ep"))
    await asyncio.sleep(0)
    gate.leave()  # the slot goes to ``first``...
    first.cancel()  # ...which is cancelled before it runs: it must pass the slot to ``second``
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert gate.in_flight == 1 and gate.waiting == 0
