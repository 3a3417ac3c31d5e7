"""Per-endpoint admission: a concurrency cap with a FIFO queue, and a requests-per-minute bucket.

A request under the cap is admitted at once, synchronously (the hot path pays one comparison).
Over the cap it waits in a bounded FIFO queue: a freed slot is handed straight to the oldest
waiter, so nobody overtakes it, and a waiter that is not served within the queue timeout (or
that finds the queue full) is refused with a retry hint.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from runtime.errors import CapacityExceeded

DEFAULT_QUEUE_LENGTH = 1000
DEFAULT_QUEUE_TIMEOUT_S = 30.0


class ConcurrencyGate:
    __slots__ = ("limit", "in_flight", "queue_length", "queue_timeout_s", "_waiters")

    def __init__(
        self,
        limit: int,
        *,
        queue_length: int = DEFAULT_QUEUE_LENGTH,
        queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
    ) -> None:
        self.limit = limit
        self.in_flight = 0
        self.queue_length = queue_length
        self.queue_timeout_s = queue_timeout_s
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_enter(self) -> bool:
        """Take a slot if one is free and nobody queues for it; never waits."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def enter(self, endpoint_name: str) -> None:
        """Take a slot, queueing for it in FIFO order; CapacityExceeded when refused."""
        if self.try_enter():
            return
        if len(self._waiters) >= self.queue_length:
            raise CapacityExceeded(
                f"endpoint {endpoint_name!r} is at its limit of {self.limit} concurrent "
                f"requests and {len(self._waiters)} are already queued",
                retry_after=1.0,
            )
        await self._wait(endpoint_name)

    async def _wait(self, endpoint_name: str) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await waiter
        except BaseException as exc:
            self._give_up(waiter)
            if isinstance(exc, TimeoutError):
                raise CapacityExceeded(
                    f"endpoint {endpoint_name!r} stayed at its limit of {self.limit} concurrent "
                    f"requests for {self.queue_timeout_s:g} s while this request queued",
                    retry_after=max(1.0, min(self.queue_timeout_s, 30.0)),
                ) from None
            raise

    def _give_up(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled():
            # The slot was handed over just as this waiter gave up: pass it on.
            self.leave()
            return
        waiter.cancel()
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def leave(self) -> None:
        """Release a slot: to the oldest waiter still waiting, else back to the pool."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; in_flight stays
                return
        self.in_flight -= 1


class RateLimiter:
    """Token bucket holding ``per_minute`` tokens, refilled continuously."""

    __slots__ = ("per_minute", "_tokens", "_stamp")

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._tokens = float(per_minute)
        self._stamp = time.monotonic()

    def take(self, endpoint_name: str) -> None:
        now = time.monotonic()
        rate = self.per_minute / 60.0
        self._tokens = min(self.per_minute, self._tokens + (now - self._stamp) * rate)
        self._stamp = now
        if self._tokens < 1.0:
            wait = (1.0 - self._tokens) / rate
            raise CapacityExceeded(
                f"endpoint {endpoint_name!r} is limited to {self.per_minute} requests per minute",
                retry_after=round(wait, 3),
            )
        self._tokens -= 1.0
