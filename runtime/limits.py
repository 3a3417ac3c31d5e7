"""Per-endpoint admission: a concurrency cap and a requests-per-minute token bucket.

Both answer at once (admit or refuse with a retry hint) so a refused request costs nothing.
"""

from __future__ import annotations

import time

from runtime.errors import CapacityExceeded


class ConcurrencyGate:
    __slots__ = ("limit", "in_flight")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def enter(self, endpoint_name: str) -> None:
        if self.in_flight >= self.limit:
            raise CapacityExceeded(
                f"endpoint {endpoint_name!r} is at its limit of {self.limit} concurrent requests",
                retry_after=1.0,
            )
        self.in_flight += 1

    def leave(self) -> None:
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
