"""Endpoint limits that hold across the cluster (``rate_limit_per_minute``,
``max_concurrent_requests``).

Two ways, chosen per instance by REDIS_URL:
- shares (the default): every instance enforces its part of each limit (runtime/limits.py
  ``share_of``) among the live instances that run the endpoint, read from the heartbeats every
  few seconds and applied when that view changes; the request path stays local, with no
  network round trip. SQLite (one instance) keeps the whole limit.
- Redis: exact shared counters (runtime/redis_limits.py); while Redis is away the shares
  apply, and the counters again when it is back.
The live endpoint's gate and limiter are resized in place, on the event loop, so the request
path reads them as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from runtime.cluster import DEAD_AFTER_S, HEARTBEAT_S, Cluster
from runtime.limits import share_of
from runtime.redis_limits import RedisLimits

if TYPE_CHECKING:
    from runtime.manager import EndpointManager, LiveEndpoint

log = logging.getLogger("aiem.limits")


class ClusterLimits:
    def __init__(
        self,
        manager: EndpointManager,
        cluster: Cluster,
        *,
        redis_url: str | None = None,
        refresh_s: float = HEARTBEAT_S,
        redis_heartbeat_s: float = HEARTBEAT_S,
        redis_dead_after_s: float = DEAD_AFTER_S,
    ) -> None:
        self.manager = manager
        self.cluster = cluster
        self.refresh_s = refresh_s
        # Endpoint name -> the other live instances that run it (from their heartbeats).
        self.others: dict[str, tuple[str, ...]] = {}
        self.redis = (
            RedisLimits(
                redis_url,
                cluster.id,
                endpoints=lambda: manager.live.values(),
                on_change=self.apply_all,
                heartbeat_s=redis_heartbeat_s,
                dead_after_s=redis_dead_after_s,
            )
            if redis_url
            else None
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        if self.redis is not None and self.redis.up:
            return "redis"
        return "share" if self.cluster.postgres else "local"

    async def start(self) -> None:
        """Before the endpoints start, so each starts with its share already known."""
        if self.cluster.postgres:
            with contextlib.suppress(Exception):  # the store may blip: the loop tries again
                self.others = await asyncio.to_thread(self._read_others)
            self._task = asyncio.create_task(self._follow_heartbeats(), name="aiem-limit-shares")
        if self.redis is not None:
            await self.redis.start()
            self.apply_all()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.redis is not None:
            await self.redis.stop()

    # ---- the heartbeat view ----------------------------------------------------------------

    async def _follow_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                others = await asyncio.to_thread(self._read_others)
            except Exception:  # noqa: BLE001 - a store blip keeps the last view
                log.debug("could not read the heartbeats for the limit shares", exc_info=True)
                continue
            if others != self.others:
                self.others = others
                self.apply_all()

    def _read_others(self) -> dict[str, tuple[str, ...]]:
        me = self.cluster.id
        return {
            name: tuple(sorted(i for i in ids if i != me))
            for name, ids in self.cluster.running_on().items()
        }

    # ---- applying --------------------------------------------------------------------------

    def apply_all(self) -> None:
        for live in list(self.manager.live.values()):
            self.apply(live)

    def apply(self, live: LiveEndpoint) -> None:
        """Set what this instance enforces for ``live`` now (and whether Redis decides)."""
        gate, limiter = live.gate, live.limiter
        if self.redis is not None and self.redis.up:
            live.shared = self.redis
            gate.resize(gate.configured)
            if limiter is not None:
                limiter.resize(limiter.configured)
            return
        live.shared = None
        others = self.others.get(live.name, ())
        gate.resize(share_of(gate.configured, others, self.cluster.id))
        if limiter is not None:
            limiter.resize(share_of(limiter.configured, others, self.cluster.id))

    def describe(self, live: LiveEndpoint | None) -> dict[str, Any]:
        """For the endpoint's API row: how its limits are kept, and this instance's part."""
        if live is None:
            return {"mode": self.mode}
        return {
            "mode": "redis" if live.shared is not None else self.mode,
            "instances": 1 + len(self.others.get(live.name, ())),
            "max_concurrent_requests": live.gate.limit,
            "rate_limit_per_minute": live.limiter.per_minute if live.limiter else None,
        }


__all__ = ["ClusterLimits"]
