"""Per-endpoint admission: a concurrency cap with a FIFO queue, and a requests-per-minute bucket.

A request under the cap is admitted at once, synchronously (the hot path pays one comparison).
Over the cap it waits in a bounded FIFO queue: a freed slot is handed straight to the oldest
waiter, so nobody overtakes it, and a waiter that is not served within the queue timeout (or
that finds the queue full) is refused with a retry hint.

In a cluster the endpoint's limits are cluster-wide: ``configured`` keeps the endpoint's own
figure and ``limit`` / ``per_minute`` what this instance enforces, its share (``share_of``),
changed with ``resize`` when the set of instances running the endpoint changes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable

from runtime.errors import CapacityExceeded

DEFAULT_QUEUE_LENGTH = 1000
DEFAULT_QUEUE_TIMEOUT_S = 30.0


def share_of(limit: int, holders: Iterable[str], me: str) -> int:
    """This instance's part of a cluster-wide ``limit`` split over ``holders`` (the ids of the
    live instances that run the endpoint; ``me`` counts whether listed or not).

    Each gets ``limit // n``; the remainder goes one apiece to the first instances in id order,
    so the parts add up to the limit exactly (every instance sorts the same heartbeats the same
    way). Never below 1: an instance that runs an endpoint serves it, so a limit smaller than
    the number of instances is exceeded, by at most one request per instance.
    """
    ordered = sorted({*holders, me})
    base, remainder = divmod(limit, len(ordered))
    return max(1, base + (1 if ordered.index(me) < remainder else 0))


def _share_note(enforced: int, configured: int) -> str:
    if enforced == configured:
        return ""
    return f" across the cluster (this instance's share: {enforced})"


class ConcurrencyGate:
    __slots__ = ("limit", "configured", "in_flight", "queue_length", "queue_timeout_s", "_waiters")

    def __init__(
        self,
        limit: int,
        *,
        queue_length: int = DEFAULT_QUEUE_LENGTH,
        queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
    ) -> None:
        self.limit = limit
        self.configured = limit
        self.in_flight = 0
        self.queue_length = queue_length
        self.queue_timeout_s = queue_timeout_s
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def described(self) -> str:
        return f"{self.configured} concurrent requests" + _share_note(self.limit, self.configured)

    def resize(self, limit: int) -> None:
        """Enforce ``limit`` from now on: a raise serves the queue at once; a cut lets the
        requests in flight finish and admits again below it."""
        self.limit = limit
        waiters = self._waiters
        while waiters and self.in_flight < limit:
            waiter = waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

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
                f"endpoint {endpoint_name!r} is at its limit of {self.described} and "
                f"{len(self._waiters)} are already queued",
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
                    f"endpoint {endpoint_name!r} stayed at its limit of {self.described} for "
                    f"{self.queue_timeout_s:g} s while this request queued",
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
        """Release a slot: to the oldest waiter still waiting, else back to the pool (also
        when the limit was cut below the requests in flight: the queue waits until under it)."""
        waiters = self._waiters
        while waiters and self.in_flight <= self.limit:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; in_flight stays
                return
        self.in_flight -= 1


class RateLimiter:
    """Token bucket holding ``per_minute`` tokens, refilled continuously."""

    __slots__ = ("per_minute", "configured", "_tokens", "_stamp")

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.configured = per_minute
        self._tokens = float(per_minute)
        self._stamp = time.monotonic()

    def _refill(self) -> float:
        now = time.monotonic()
        rate = self.per_minute / 60.0
        self._tokens = min(self.per_minute, self._tokens + (now - self._stamp) * rate)
        self._stamp = now
        return rate

    def take(self, endpoint_name: str) -> None:
        rate = self._refill()
        if self._tokens < 1.0:
            wait = (1.0 - self._tokens) / rate
            raise CapacityExceeded(
                f"endpoint {endpoint_name!r} is limited to {self.configured} requests per minute"
                + _share_note(self.per_minute, self.configured),
                retry_after=round(wait, 3),
            )
        self._tokens -= 1.0

    def resize(self, per_minute: int) -> None:
        """Enforce ``per_minute`` from now on, keeping the bucket as full (in proportion) as it
        was: an instance that served alone and is now one of three keeps a third of its
        tokens, so the cluster as a whole never starts with more than one limit's worth."""
        if per_minute == self.per_minute:
            return
        self._refill()
        self._tokens = min(float(per_minute), self._tokens * per_minute / self.per_minute)
        self.per_minute = per_minute
