"""Exact cluster-wide limits in Redis (REDIS_URL), shared by every instance.

Per endpoint id, three hashes under one hash tag (so a Redis Cluster keeps them on one node):
- ``aiem:{id}:rate``: the request count of the current and the previous minute. A request is
  admitted while ``previous * (unelapsed part of this minute) + current`` stays under the limit:
  a sliding one-minute window estimated from two fixed ones, the previous carried in
  proportion, so a burst gets exactly the limit and the room comes back continuously (like the
  local token bucket);
- ``aiem:{id}:slots``: instance id -> requests it has in flight there;
- ``aiem:{id}:alive``: instance id -> until when (Redis time, ms) its count holds. Every
  instance renews its own every heartbeat, writing its true in-flight count beside it; the
  count of an instance that stopped renewing (crashed) is dropped at the next admission, so its
  slots come back within ``DEAD_AFTER_S``.
Admission is one Lua script (atomic, one round trip, Redis's clock for every instance); a
finished request's slot goes back through a background writer that batches the decrements, so
the request never waits for it.

Redis is an accelerator, never a point of failure: when a call fails the owner is told
(``on_change``) and falls back to each instance's share; a probe notices the return, writes
this instance's true counts back and tells the owner again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from runtime.cluster import DEAD_AFTER_S, HEARTBEAT_S
from runtime.errors import CapacityExceeded

if TYPE_CHECKING:
    from runtime.manager import LiveEndpoint

log = logging.getLogger("aiem.limits")

PROBE_S = 1.0
# A Redis on the same network answers in well under a millisecond: a call this slow means it is
# in trouble, and the request falls back to the local share rather than wait.
CALL_TIMEOUT_S = 0.5
KEY_TTL_MS = 3_600_000  # an endpoint deleted or stopped everywhere leaves nothing for long
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.25

ADMITTED, RATE_SPENT, SLOTS_TAKEN = 0, 1, 2

ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, per_minute, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local window, cur, prev, elapsed = 0, 0, 0, 0
if per_minute > 0 then
  window = math.floor(now / 60000)
  elapsed = now - window * 60000
  local r = redis.call('HMGET', KEYS[1], 'w', 'cur', 'prev')
  local w = tonumber(r[1])
  if w == window then
    cur, prev = tonumber(r[2]) or 0, tonumber(r[3]) or 0
  elseif w == window - 1 then
    prev = tonumber(r[2]) or 0
  end
  if prev * (60000 - elapsed) / 60000 + cur + 1 > per_minute then
    return {1, prev, cur, elapsed}
  end
end
local total = 0
local counts = redis.call('HGETALL', KEYS[2])
for i = 1, #counts, 2 do
  -- never below 0: a release can land after a renewal that already left it out
  local who, n = counts[i], math.max(tonumber(counts[i + 1]), 0)
  if who == me then
    total = total + n
  elseif tonumber(redis.call('HGET', KEYS[3], who) or '0') >= now then
    total = total + n
  else
    redis.call('HDEL', KEYS[2], who)
    redis.call('HDEL', KEYS[3], who)
  end
end
if total >= cap then
  return {2, total, 0, 0}
end
redis.call('HINCRBY', KEYS[2], me, 1)
redis.call('HSET', KEYS[3], me, now + tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
if per_minute > 0 then
  redis.call('HSET', KEYS[1], 'w', window, 'cur', cur + 1, 'prev', prev)
  redis.call('PEXPIRE', KEYS[1], 120000)
end
return {0, 0, 0, 0}
"""

RENEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], now + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""


def redacted(url: str) -> str:
    """A Redis URL fit for a log line: the password replaced, everything else kept."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def rate_retry_after(per_minute: int, prev: int, cur: int, elapsed_ms: int) -> float:
    """Seconds until the sliding estimate leaves room for one more request."""
    room = per_minute - 1 - cur
    if prev > 0 and room >= 0:
        # Within this minute, as the previous one's weight fades.
        needed_ms = 60_000 * (1 - room / prev)
        return max(needed_ms - elapsed_ms, 1.0) / 1000
    # Only in the next minute, once this one's count has faded enough.
    fade_ms = 60_000 * max(0.0, 1 - (per_minute - 1) / cur) if cur else 0.0
    return (60_000 - elapsed_ms + fade_ms) / 1000


def _keys(endpoint_id: str) -> tuple[str, str, str]:
    tag = f"aiem:{{{endpoint_id}}}"
    return f"{tag}:rate", f"{tag}:slots", f"{tag}:alive"


class RedisLimits:
    """One instance's link to the shared counters; ``up`` says whether they are in use."""

    def __init__(
        self,
        url: str,
        instance_id: str,
        *,
        endpoints: Callable[[], Iterable[LiveEndpoint]],
        on_change: Callable[[], None],
        heartbeat_s: float = HEARTBEAT_S,
        dead_after_s: float = DEAD_AFTER_S,
    ) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeout

        self.url = url
        self.me = instance_id
        self.up = False
        self._endpoints = endpoints
        self._on_change = on_change
        self.heartbeat_s = heartbeat_s
        self.alive_ms = int(dead_after_s * 1000)
        self._failures: tuple[type[BaseException], ...] = (
            RedisConnectionError,
            RedisTimeout,
            OSError,
            TimeoutError,
        )
        self.client = Redis.from_url(
            url,
            socket_timeout=CALL_TIMEOUT_S,
            socket_connect_timeout=CALL_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # never retry on the request's time: fall back
        )
        self._admit = self.client.register_script(ADMIT_LUA)
        self._renew = self.client.register_script(RENEW_LUA)
        self._releases: Counter[str] = Counter()
        # Requests that hold a local slot but wait (sleep) for a cluster-wide one: not in the
        # count this instance writes, or they would keep out the very slot they wait for.
        self._polling: Counter[str] = Counter()
        self._written: set[str] = set()  # endpoint ids with a count of ours in Redis
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (a Redis that is away now is only a warning: the shares apply meanwhile)."""
        if await self._recover():
            log.info("limits are shared exactly through Redis at %s", redacted(self.url))
        else:
            self._report_down("unreachable at start-up")
        self._task = asyncio.create_task(self._run(), name="aiem-redis-limits")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.up:
            with contextlib.suppress(*self._failures):
                await self._forget_me()
        with contextlib.suppress(*self._failures):
            await self.client.aclose()

    async def _forget_me(self) -> None:
        """A clean stop gives its slots back at once rather than when they expire."""
        async with self.client.pipeline(transaction=False) as pipe:
            for endpoint_id in self._written:
                _, slots, alive = _keys(endpoint_id)
                pipe.hdel(slots, self.me)
                pipe.hdel(alive, self.me)
            await pipe.execute()

    # ---- the request path ------------------------------------------------------------------

    async def acquire(self, live: LiveEndpoint, *, wait: bool) -> bool:
        """Take a cluster-wide slot (and a rate token) for ``live``. False when every slot is
        taken and ``wait`` is off; with ``wait``, polls for a slot up to the endpoint's queue
        timeout. CapacityExceeded when the rate is spent or the wait ran out. When Redis fails
        the request is judged by this instance's share instead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + live.gate.queue_timeout_s
        delay = POLL_FIRST_S
        while True:
            verdict = await self._call_admit(live)
            if verdict is None:  # Redis failed: the shares are in force now
                if live.limiter is not None:
                    live.limiter.take(live.name)
                return True
            if verdict[0] == ADMITTED:
                return True
            if verdict[0] == RATE_SPENT:
                raise self._rate_spent(live, verdict)
            if not wait:
                return False
            if loop.time() + delay > deadline:
                raise CapacityExceeded(
                    f"endpoint {live.name!r} stayed at its limit of {live.gate.configured} "
                    f"concurrent requests across the cluster for {live.gate.queue_timeout_s:g} s "
                    "while this request waited",
                    retry_after=1.0,
                )
            self._polling[live.id] += 1
            try:
                await asyncio.sleep(delay)
            finally:
                self._polling[live.id] -= 1
            delay = min(delay * 2, POLL_MAX_S)

    async def _call_admit(self, live: LiveEndpoint) -> list[int] | None:
        per_minute = live.limiter.configured if live.limiter is not None else 0
        args = (self.me, per_minute, live.gate.configured, self.alive_ms, KEY_TTL_MS)
        self._written.add(live.id)
        try:
            return await self._admit(keys=_keys(live.id), args=args)  # type: ignore[no-any-return]
        except self._failures as exc:
            self._went_down(exc)
            return None

    @staticmethod
    def _rate_spent(live: LiveEndpoint, verdict: list[int]) -> CapacityExceeded:
        per_minute = live.limiter.configured if live.limiter is not None else 0
        _, prev, cur, elapsed = verdict
        return CapacityExceeded(
            f"endpoint {live.name!r} is limited to {per_minute} requests per minute "
            "across the cluster",
            retry_after=round(rate_retry_after(per_minute, prev, cur, elapsed), 3),
        )

    def release(self, endpoint_id: str) -> None:
        """A request let its slot go: the decrement is written in the background."""
        self._releases[endpoint_id] += 1
        self._wake.set()

    # ---- background: releases, renewals, and coming back ------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + self.heartbeat_s
        while True:
            if not self.up:
                await asyncio.sleep(PROBE_S)
                if await self._recover():
                    log.info("Redis at %s is back: limits are exact again", redacted(self.url))
                    self._on_change()
                    renew_at = loop.time() + self.heartbeat_s
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, renew_at - loop.time())):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if loop.time() >= renew_at:
                    await self._renew_all()
                    renew_at = loop.time() + self.heartbeat_s
                elif self._releases:
                    await self._flush_releases()
            except self._failures as exc:
                self._went_down(exc)

    async def _flush_releases(self) -> None:
        releases, self._releases = self._releases, Counter()
        async with self.client.pipeline(transaction=False) as pipe:
            for endpoint_id, count in releases.items():
                pipe.hincrby(_keys(endpoint_id)[1], self.me, -count)
            await pipe.execute()

    async def _renew_all(self) -> None:
        """Write this instance's true in-flight count per endpoint and renew its liveness. The
        count is read on the loop, with the pending decrements it already reflects dropped, so
        nothing is taken off twice. (A request whose admission script is on its way counts:
        for a moment, one slot too many rather than one too few.)"""
        polling = self._polling
        counts = [(live.id, live.gate.in_flight - polling[live.id]) for live in self._endpoints()]
        self._releases.clear()
        self._written.update(endpoint_id for endpoint_id, _ in counts)
        async with self.client.pipeline(transaction=False) as pipe:
            for endpoint_id, in_flight in counts:
                _, slots, alive = _keys(endpoint_id)
                args: Any = (self.me, in_flight, self.alive_ms, KEY_TTL_MS)
                await self._renew(keys=(slots, alive), args=args, client=pipe)
            await pipe.execute()

    async def _recover(self) -> bool:
        try:
            await self.client.ping()
            await self._renew_all()
        except self._failures:
            return False
        self.up = True
        return True

    def _went_down(self, exc: BaseException) -> None:
        if not self.up:
            return
        self.up = False
        self._releases.clear()  # the counts are written whole when Redis is back
        self._report_down(type(exc).__name__)
        self._on_change()

    def _report_down(self, why: str) -> None:
        log.warning(
            "Redis at %s failed (%s): each instance enforces its share of the limits until it "
            "is back",
            redacted(self.url),
            why,
        )


__all__ = ["RedisLimits", "rate_retry_after", "redacted"]
