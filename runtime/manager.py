"""The endpoint manager: desired state in the store, reconciled to live providers.

Lifecycle only (start / stop / restart, auto-restart with backoff, a periodic reconcile that
repairs any drift between desired and actual state). A start ends with the health monitor's
first probe (runtime/health.py), which decides between healthy and degraded; an endpoint the
monitor or its provider finds dead comes back here to be failed and, with auto-restart, started
again, until it crashed ``crash_limit`` times within ``crash_window_s``.

The chat path is in runtime/chat.py and uses the ``LiveEndpoint`` objects this manager keeps;
the facade (runtime/core.py) is what the HTTP surface and the CLI call.

Every change of an endpoint's desired state happens under that endpoint's lock, together with
the transition it asks for, so concurrent start / stop calls always leave the two in agreement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from providers.base import EndpointSpec, Provider, ProviderContext
from providers.errors import ProviderError
from runtime.errors import CapacityExceeded, NotFound
from runtime.health import EndpointHealth, HealthMonitor
from runtime.limits import (
    DEFAULT_QUEUE_LENGTH,
    DEFAULT_QUEUE_TIMEOUT_S,
    ConcurrencyGate,
    RateLimiter,
)
from runtime.redis_limits import RedisLimits
from runtime.repository import EndpointRepository
from runtime.state_store import EncryptedStateStore
from runtime.throttle import LogThrottle, warn_of_failure
from store.db import Store
from store.models import DesiredState, Endpoint, EndpointCreate, EndpointState, EndpointUpdate

log = logging.getLogger("aiem.manager")

START_TIMEOUT_S = 120.0
# How long a chat waits for a browser endpoint being restarted before it is refused (409).
RELAUNCH_WAIT_S = 30.0
RECONCILE_INTERVAL_S = 15.0


@dataclass(slots=True, eq=False)
class LiveEndpoint:
    id: str
    name: str
    endpoint_type: str
    model_name: str
    priority: int
    provider: Provider
    gate: ConcurrencyGate
    limiter: RateLimiter | None
    timeout: float
    input_cost_per_1k: float
    output_cost_per_1k: float
    group_name: str | None = None
    display_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # The endpoint's live health state and its circuit breaker, kept current by the health
    # monitor so the chat path and the router decide without touching the store.
    state: str = EndpointState.healthy
    breaker: Any = None
    # The row's updated_at this instance was started from: a newer one means it was edited.
    updated_at: datetime | None = None
    # The cluster-wide counters (runtime/redis_limits.py) while they decide: the rate, and the
    # concurrency after ``gate`` (which then holds the endpoint's whole limit; ``limiter`` is
    # left unused until Redis fails). None: ``gate`` and ``limiter`` decide alone.
    shared: RedisLimits | None = None

    def routable(self) -> bool:
        """Whether a request may be sent here now (False while its breaker is open)."""
        return self.breaker is None or bool(self.breaker.allows())

    def try_admit(self) -> bool:
        """Take the way through the breaker and a concurrency slot now, if both are free (the
        caller must release the slot); never waits. False when only the slot is busy; raises
        CapacityExceeded (rate limit spent) or EndpointUnavailable (breaker open: 503)."""
        breaker = self.breaker
        if breaker is not None and breaker.blocking:  # one attribute read while closed
            breaker.acquire(self.name)  # the half-open trial, or a refusal
            try:
                free = self._try_slot()
            except BaseException:
                breaker.release_trial()  # refused here: the trial never went out
                raise
            if not free:
                breaker.release_trial()
            return free
        return self._try_slot()

    def _try_slot(self) -> bool:
        # The slot first: a request that finds it busy queues in ``admit``, which takes the
        # rate token then, so a queued request never spends two.
        if not self.gate.try_enter():
            return False
        if self.limiter is not None and self.shared is None:  # else Redis counts the rate
            try:
                self.limiter.take(self.name)
            except CapacityExceeded:
                self.gate.leave()
                raise
        return True

    async def admit(self) -> None:
        """Take the way through the breaker and a concurrency slot, queueing for the slot;
        raises what ``try_admit`` raises, or CapacityExceeded when the queue refuses."""
        breaker = self.breaker
        if breaker is not None and breaker.blocking:
            breaker.acquire(self.name)
        try:
            if self.limiter is not None and self.shared is None:
                self.limiter.take(self.name)
            await self.gate.enter(self.name)
        except BaseException:
            if breaker is not None:
                breaker.release_trial()
            raise
        if self.shared is not None:
            await self.take_shared(wait=True)

    async def take_shared(self, *, wait: bool) -> bool:
        """After this instance admitted a request (``try_admit`` or ``admit``): the
        cluster-wide slot and rate token. False when the cluster's slots are all taken and
        ``wait`` is off; on False or a refusal, what the local admission took is given back."""
        shared = self.shared
        if shared is None:  # Redis went away meanwhile: the local share already decided
            return True
        try:
            if await shared.acquire(self, wait=wait):
                return True
        except BaseException:
            self._give_back()
            raise
        self._give_back()
        return False

    def _give_back(self) -> None:
        self.gate.leave()
        if self.breaker is not None:
            self.breaker.release_trial()

    def leave(self) -> None:
        """An admitted request is done: its slot goes back here and across the cluster."""
        self.gate.leave()
        if self.shared is not None:
            self.shared.release(self.id)

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input_cost_per_1k + tokens_out * self.output_cost_per_1k) / 1000


@dataclass(slots=True)
class ManagerOptions:
    auto_restart: bool = True
    session_timeout_s: float = 3600.0
    session_cleanup_interval_s: float = 300.0
    log_requests: bool = True
    reconcile_interval_s: float = RECONCILE_INTERVAL_S
    # Admission: requests over an endpoint's concurrency cap wait in a FIFO queue this long.
    queue_length: int = DEFAULT_QUEUE_LENGTH
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    health_check_interval_s: float = 30.0
    # Auto-restart gives up after this many crashes within the window, until an operator acts.
    crash_limit: int = 5
    crash_window_s: float = 600.0
    restart_backoff_s: float = 1.0  # doubled per attempt, at most a minute


class EndpointManager:
    def __init__(
        self,
        store: Store,
        repo: EndpointRepository,
        options: ManagerOptions | None = None,
        health: HealthMonitor | None = None,
    ) -> None:
        self.store = store
        self.repo = repo
        self.options = options or ManagerOptions()
        self.health = health or HealthMonitor(repo, interval_s=self.options.health_check_interval_s)
        self.health.on_failed = self.fail_live
        self._crashes: dict[str, deque[float]] = {}
        self.live: dict[str, LiveEndpoint] = {}
        # Whether this instance may run an endpoint (the cluster says no for a browser endpoint
        # whose lease another instance holds: one browser per account). Called off the loop.
        self.may_adopt: Callable[[Endpoint], bool] = lambda row: True
        # Sets what this instance enforces of a newly live endpoint's cluster-wide limits.
        self.configure_limits: Callable[[LiveEndpoint], None] = lambda live: None
        self.by_name: dict[str, LiveEndpoint] = {}
        # Bumped whenever ``live`` changes, so the router knows its group index is stale.
        self.generation = 0
        self._locks: dict[str, asyncio.Lock] = {}
        self._restarts: dict[str, asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[None]] = []
        self._reports: set[asyncio.Task[None]] = set()
        # Replaced endpoints still answering what they admitted (closed when done).
        self._retiring: set[LiveEndpoint] = set()
        # A browser endpoint being restarted, by id and by name -> set when it is back.
        self._relaunches: dict[str, asyncio.Event] = {}
        self._reconcile_now = asyncio.Event()

    # ---- process lifecycle -----------------------------------------------------------------

    async def startup(self) -> None:
        rows = await asyncio.to_thread(self.repo.all)
        wanted = await asyncio.to_thread(
            lambda: [
                r for r in rows if r.desired_state == DesiredState.running and self.may_adopt(r)
            ]
        )
        stale = [
            (r.id, EndpointState.stopped, "process restarted")
            for r in rows
            if r.desired_state != DesiredState.running and r.state != EndpointState.stopped
        ]
        if stale:
            await asyncio.to_thread(self.repo.set_states, stale)
        await self._launch_all(wanted)
        self._background = [asyncio.create_task(self._reconcile_loop(), name="aiem-reconcile")]

    async def shutdown(self) -> None:
        tasks = [*self._background, *self._restarts.values(), *self._reports]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._restarts.clear()
        # Desired state is kept: endpoints that were running come back running.
        closing = [*self.live.values(), *self._retiring]
        self._retiring.clear()
        await asyncio.gather(*(self._close(ep) for ep in closing))
        self.live.clear()
        self.by_name.clear()
        self.generation += 1

    # ---- reconcile -------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        unreachable = LogThrottle(30.0)
        while True:
            wake = self._reconcile_now.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake, self.options.reconcile_interval_s)
            self._reconcile_now.clear()
            try:
                await self.reconcile()
            except Exception as exc:  # noqa: BLE001 - keep reconciling after a store hiccup
                warn_of_failure(log, unreachable, "reconcile", exc)

    def reconcile_soon(self) -> None:
        """Reconcile now, not at the next interval (an endpoint's owner is gone: adopt it)."""
        self._reconcile_now.set()

    async def apply_change(self, endpoint_id: str) -> None:
        """Bring this instance in line with one endpoint's row after another instance changed it.

        Nothing is written unless this instance itself starts or stops the endpoint: desired
        state belongs to whoever changed it.
        """
        try:
            row = await asyncio.to_thread(self.repo.get, endpoint_id)
        except NotFound:
            row = None
        if self._lock(endpoint_id).locked() or endpoint_id in self._restarts:
            return  # a transition of this instance's own is under way
        live = self.live.get(endpoint_id)
        if row is None or row.desired_state != DesiredState.running:
            if live is not None:
                async with self._lock(endpoint_id):
                    if (closing := self._unregister(endpoint_id)) is not None:
                        await self._close(closing)
            return
        if live is not None and live.updated_at != row.updated_at:
            async with self._lock(endpoint_id):
                if await self._replace(endpoint_id):
                    return
            live = None
        if live is None and row.state != EndpointState.failed:
            await self._launch(endpoint_id)  # unless another instance owns it (``may_adopt``)
        self._relaunch_done(endpoint_id)

    async def reconcile(self) -> int:
        """Bring actual state to desired state wherever they drifted apart; count the repairs.

        An endpoint left ``failed`` with no restart pending waits for an operator; one whose
        lock is held is in a transition right now and is left to it.
        """
        rows = await asyncio.to_thread(self.repo.all)
        repairs = 0
        for row in rows:
            if self._lock(row.id).locked() or row.id in self._restarts:
                continue
            live = self.live.get(row.id)
            if row.desired_state == DesiredState.running:
                if (live is None and row.state != EndpointState.failed) or (
                    live is not None and live.updated_at != row.updated_at
                ):
                    repairs += 1
                    await self.apply_change(row.id)
            elif live is not None or row.state != EndpointState.stopped:
                repairs += 1
                await self._stop(row.id, "reconciled to the desired state")
        known = {row.id for row in rows}
        for endpoint_id in [i for i in self.live if i not in known]:  # deleted elsewhere
            repairs += 1
            await self.apply_change(endpoint_id)
        return repairs

    # ---- CRUD ------------------------------------------------------------------------------

    async def create(self, data: EndpointCreate) -> Endpoint:
        desired = DesiredState.running if data.start else DesiredState.stopped
        row = await asyncio.to_thread(self.repo.create, data, desired_state=desired)
        if data.start:
            await self._launch(row.id)
            row = await asyncio.to_thread(self.repo.get, row.id)
        return row

    async def update(self, endpoint_id: str, patch: EndpointUpdate) -> Endpoint:
        async with self._lock(endpoint_id):
            row = await asyncio.to_thread(self.repo.update, endpoint_id, patch)
        if endpoint_id in self.live:
            await self.restart(endpoint_id, reason="configuration changed")
            row = await asyncio.to_thread(self.repo.get, endpoint_id)
        return row

    async def delete(self, endpoint_id: str) -> None:
        await asyncio.to_thread(self.repo.get, endpoint_id)
        async with self._lock(endpoint_id):
            self._cancel_restart(endpoint_id)
            live = self._unregister(endpoint_id)
            if live is not None:
                await self._close(live)
            await asyncio.to_thread(self.repo.delete, endpoint_id)
        self._locks.pop(endpoint_id, None)
        self._crashes.pop(endpoint_id, None)
        self.health.forget(endpoint_id, deleted=True)

    # ---- start / stop ----------------------------------------------------------------------

    async def start(self, endpoint_id: str) -> Endpoint:
        self._crashes.pop(endpoint_id, None)  # an operator acted: auto-restart may try again
        async with self._lock(endpoint_id):
            await asyncio.to_thread(self.repo.set_desired, endpoint_id, DesiredState.running)
        await self._launch(endpoint_id)
        return await asyncio.to_thread(self.repo.get, endpoint_id)

    async def stop(self, endpoint_id: str) -> Endpoint:
        await self._stop(endpoint_id, "stopped by request")
        return await asyncio.to_thread(self.repo.get, endpoint_id)

    async def _stop(self, endpoint_id: str, reason: str) -> None:
        async with self._lock(endpoint_id):
            await asyncio.to_thread(self.repo.set_desired, endpoint_id, DesiredState.stopped)
            self._cancel_restart(endpoint_id)
            live = self._unregister(endpoint_id)
            if live is not None:
                await asyncio.to_thread(
                    self.repo.set_state, endpoint_id, EndpointState.stopping, reason
                )
                await self._close(live)
            await asyncio.to_thread(self.repo.set_state, endpoint_id, EndpointState.stopped, reason)

    async def restart(self, endpoint_id: str, *, reason: str = "restart requested") -> Endpoint:
        self._crashes.pop(endpoint_id, None)  # an operator acted: auto-restart may try again
        async with self._lock(endpoint_id):
            await asyncio.to_thread(self.repo.set_desired, endpoint_id, DesiredState.running)
            await asyncio.to_thread(self.repo.add_event, endpoint_id, "restart", reason)
            replaced = await self._replace(endpoint_id)
        if not replaced:
            await self._launch(endpoint_id)
        return await asyncio.to_thread(self.repo.get, endpoint_id)

    async def _replace(self, endpoint_id: str) -> bool:
        """Restart a running endpoint from its row (the caller holds its lock); True when
        done here, False when the caller is to launch it (it was not running, or it stopped).

        Make before break: a provider that needs no browser is opened and probed beside the
        running one, which keeps serving until the new one takes its place and is closed
        when its last request is answered; a configuration change drops no request. A
        browser endpoint is closed first (one browser per profile); chats that arrive until
        it is back wait for it (``relaunched``) rather than being refused.
        """
        old = self.live.get(endpoint_id)
        if old is None:
            return False
        if old.provider.needs_browser:
            self._unregister(endpoint_id)
            self._relaunching(old)
            await self._close(old)
            return False
        row = await asyncio.to_thread(self._row_to_launch, endpoint_id)
        if row is None:  # not to run here any more
            self._unregister(endpoint_id)
            await self._close(old)
            return False
        try:
            live, health, state, reason = await self._open_and_probe(row)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not kill the manager
            self._unregister(endpoint_id)
            self._retire(old)
            await self._fail(endpoint_id, self._start_failure(row, exc), 0)
            return True
        self._unregister(endpoint_id)
        self._retire(old)
        if state != EndpointState.failed:  # failed: credentials rejected (closed, no retry)
            self._register(live)
        await asyncio.to_thread(self.repo.set_state, endpoint_id, state, reason)
        if state != EndpointState.failed:  # stored before the monitor watches it
            self.health.watch(health)
        return True

    def _retire(self, old: LiveEndpoint) -> None:
        """Close a replaced endpoint's provider once the requests it admitted are answered
        (at most its request timeout from now)."""
        self._retiring.add(old)

        async def when_idle() -> None:
            deadline = time.monotonic() + old.timeout
            while (old.gate.in_flight or old.gate.waiting) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await self._close(old)
            self._retiring.discard(old)  # after: a shutdown meanwhile closes it (again)

        task = asyncio.create_task(when_idle(), name=f"retire-{old.name}")
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    def _relaunching(self, old: LiveEndpoint) -> None:
        """Chats for this endpoint (by id, name or group) wait for its relaunch
        (``relaunched``) from now on."""
        waiting = asyncio.Event()
        self._relaunches[old.id] = self._relaunches[old.name] = waiting
        if old.group_name:
            self._relaunches[old.group_name] = waiting

    def _relaunch_done(self, endpoint_id: str) -> None:
        done = self._relaunches.pop(endpoint_id, None)
        if done is not None:
            for key in [k for k, waiting in self._relaunches.items() if waiting is done]:
                del self._relaunches[key]
            done.set()

    def running(self, ref: str) -> LiveEndpoint | None:
        """The endpoint running here that ``ref`` (an id or a name) refers to."""
        return self.live.get(ref) or self.by_name.get(ref)

    async def relaunched(self, ref: str) -> bool:
        """Wait until a relaunch under way for ``ref`` (an id, a name or a group) is over, at
        most ``RELAUNCH_WAIT_S``; False at once when none is (the caller looks ``ref`` up
        again after True)."""
        waiting = self._relaunches.get(ref)
        if waiting is None:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RELAUNCH_WAIT_S):
                await waiting.wait()
        return True

    async def _launch(self, endpoint_id: str, *, attempt: int = 0) -> None:
        try:
            await self._launch_locked(endpoint_id, attempt)
        finally:
            self._relaunch_done(endpoint_id)

    async def _launch_locked(self, endpoint_id: str, attempt: int) -> None:
        async with self._lock(endpoint_id):
            if endpoint_id in self.live:
                return
            row = await asyncio.to_thread(self._row_to_launch, endpoint_id)
            if row is None:
                return
            await asyncio.to_thread(self.repo.set_state, endpoint_id, EndpointState.starting)
            try:
                live = await self._open(row)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not kill the manager
                await self._fail(endpoint_id, self._start_failure(row, exc), attempt)
                return
            health = self.health.prepare(live, row.health_config)
            # It serves from now on (as soon as the provider started, like before); the first
            # probe only decides the state it is shown in.
            self._register(live)
            state, reason = await self.health.first_probe(health)
            if state == EndpointState.failed:  # credentials rejected: no point retrying
                self._unregister(endpoint_id)
                await self._close(live)
                await asyncio.to_thread(self.repo.set_state, endpoint_id, state, reason)
                return
            # Stored before the monitor watches it: the monitor's own writes apply only to a
            # stored healthy / degraded / cooling state, so none can be lost to "starting".
            await asyncio.to_thread(self.repo.set_state, endpoint_id, state, reason)
            self.health.watch(health)

    def _row_to_launch(self, endpoint_id: str) -> Endpoint | None:
        """The endpoint's row when it should run here: desired running, and this instance may
        run it (a browser endpoint another instance owns runs there)."""
        row = self.repo.get(endpoint_id)
        if row.desired_state != DesiredState.running or not self.may_adopt(row):
            return None
        return row

    def _register(self, live: LiveEndpoint) -> None:
        self.configure_limits(live)
        self.live[live.id] = live
        self.by_name[live.name] = live
        self.generation += 1

    async def _launch_all(self, rows: list[Endpoint]) -> None:
        """Start-up's launch of every endpoint that should run: ``_launch``'s steps (open,
        first probe, store the state, watch), with the store work in three transactions for
        all of them rather than four per endpoint, so a process with hundreds of endpoints
        serves in seconds. Nothing else runs yet (the API is not served, the reconcile loop
        has not started), so no locks."""
        if not rows:
            return
        starting = [(r.id, EndpointState.starting, "") for r in rows]
        await asyncio.to_thread(self.repo.set_states, starting)
        secrets = await asyncio.to_thread(lambda: [self.repo.credentials(r) for r in rows])
        opened = await asyncio.gather(
            *(self._open_and_probe(r, c) for r, c in zip(rows, secrets, strict=True)),
            return_exceptions=True,
        )
        states, watch, failed = [], [], []
        for row, result in zip(rows, opened, strict=True):
            if isinstance(result, tuple):
                live, health, state, reason = result
                states.append((row.id, state, reason))
                if state != EndpointState.failed:  # failed: credentials rejected, closed
                    watch.append((live, health))
            elif isinstance(result, Exception):
                failed.append((row, result))
            else:
                raise result  # cancellation: start-up itself is being abandoned
        # Stored before the monitor watches them, as in ``_launch``.
        await asyncio.to_thread(self.repo.set_states, states)
        for live, health in watch:
            self._register(live)
            self.health.watch(health)
        for row, exc in failed:
            await self._fail(row.id, self._start_failure(row, exc), 0)

    async def _open_and_probe(
        self, row: Endpoint, credentials: dict[str, str] | None = None
    ) -> tuple[LiveEndpoint, EndpointHealth, str, str]:
        """Open ``row``'s provider and probe it once; a ``failed`` state (credentials
        rejected) comes back with the provider closed."""
        live = await self._open(row, credentials)
        try:
            health = self.health.prepare(live, row.health_config)
            state, reason = await self.health.first_probe(health)
        except BaseException:
            await self._close(live)
            raise
        if state == EndpointState.failed:
            await self._close(live)
        return live, health, state, reason

    @staticmethod
    def _start_failure(row: Endpoint, exc: Exception) -> str:
        if isinstance(exc, ProviderError):
            return f"start failed: {exc}"
        # A broken plugin must not kill the manager: logged with its traceback, reported.
        log.error("provider %s failed to start", row.endpoint_type, exc_info=exc)
        return f"start failed: {type(exc).__name__}"

    async def _open(self, row: Endpoint, credentials: dict[str, str] | None = None) -> LiveEndpoint:
        cls = self.repo.provider_class(row.endpoint_type)
        config = self.repo.validate_config(row.endpoint_type, row.config)
        spec = EndpointSpec(
            name=row.name,
            url=row.url,
            model_name=row.model_name,
            config=config,
            credentials=(
                credentials
                if credentials is not None
                else await asyncio.to_thread(self.repo.credentials, row)
            ),
            browser_config=dict(row.browser_config or {}),
            persistent_session=row.persistent_session,
            max_concurrent_requests=row.max_concurrent_requests,
            request_timeout=row.request_timeout,
        )
        context = ProviderContext(
            state_store=EncryptedStateStore(self.store, row.id),
            report_state=self._state_reporter(row.id),
        )
        provider = cls(spec, context)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await provider.start()
        except TimeoutError:
            await self._quiet_stop(provider)
            raise ProviderError(f"provider did not start within {START_TIMEOUT_S:.0f} s") from None
        except BaseException:
            await self._quiet_stop(provider)
            raise
        return LiveEndpoint(
            id=row.id,
            name=row.name,
            endpoint_type=row.endpoint_type,
            model_name=row.model_name,
            priority=row.priority,
            provider=provider,
            gate=ConcurrencyGate(
                row.max_concurrent_requests,
                queue_length=self.options.queue_length,
                # Nobody waits in the queue longer than the endpoint would take to answer.
                queue_timeout_s=min(self.options.queue_timeout_s, row.request_timeout),
            ),
            limiter=RateLimiter(row.rate_limit_per_minute) if row.rate_limit_per_minute else None,
            timeout=row.request_timeout,
            input_cost_per_1k=row.input_cost_per_1k,
            output_cost_per_1k=row.output_cost_per_1k,
            group_name=row.group_name,
            display_name=row.display_name,
            updated_at=row.updated_at,
        )

    async def _fail(self, endpoint_id: str, reason: str, attempt: int) -> None:
        if not self.options.auto_restart:
            await asyncio.to_thread(self.repo.set_state, endpoint_id, EndpointState.failed, reason)
            return
        crashes = self._note_crash(endpoint_id)
        if crashes >= self.options.crash_limit:
            minutes = self.options.crash_window_s / 60
            exhausted = (
                f"restarts exhausted: {crashes} crashes in {minutes:g} minutes (last: {reason}); "
                "start or restart it to try again"
            )
            await asyncio.to_thread(
                self.repo.set_state,
                endpoint_id,
                EndpointState.failed,
                exhausted,
                kind="restarts_exhausted",
            )
            return
        await asyncio.to_thread(self.repo.set_state, endpoint_id, EndpointState.failed, reason)
        delay = min(60.0, self.options.restart_backoff_s * 2.0**attempt)
        self._schedule_restart(endpoint_id, delay, attempt + 1)

    def _note_crash(self, endpoint_id: str) -> int:
        """Record a crash now; how many fell within the crash window."""
        now = time.monotonic()
        crashes = self._crashes.setdefault(endpoint_id, deque())
        crashes.append(now)
        while crashes and crashes[0] <= now - self.options.crash_window_s:
            crashes.popleft()
        return len(crashes)

    def recent_crashes(self, endpoint_id: str) -> int:
        now = time.monotonic()
        window = self.options.crash_window_s
        return sum(1 for t in self._crashes.get(endpoint_id, ()) if t > now - window)

    def _schedule_restart(self, endpoint_id: str, delay: float, attempt: int) -> None:
        self._cancel_restart(endpoint_id)

        async def later() -> None:
            await asyncio.sleep(delay)
            self._restarts.pop(endpoint_id, None)
            await asyncio.to_thread(
                self.repo.add_event, endpoint_id, "auto_restart", f"attempt {attempt}"
            )
            await self._launch(endpoint_id, attempt=attempt)

        self._restarts[endpoint_id] = asyncio.create_task(later(), name=f"restart-{endpoint_id}")

    def _cancel_restart(self, endpoint_id: str) -> None:
        task = self._restarts.pop(endpoint_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _state_reporter(self, endpoint_id: str):  # type: ignore[no-untyped-def]
        async def report(state: str, reason: str) -> None:
            # Handled in a task of the manager's own: handling a failure stops the provider,
            # which cancels the provider's tasks, the one calling this included.
            task = asyncio.create_task(self.on_provider_state(endpoint_id, state, reason))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

        return report

    async def on_provider_state(self, endpoint_id: str, state: str, reason: str) -> None:
        """A provider reports trouble outside a request (logged out, browser crashed)."""
        if state == EndpointState.failed:
            async with self._lock(endpoint_id):
                live = self._unregister(endpoint_id)
                if live is not None:
                    await self._close(live)
                await self._fail(endpoint_id, reason, 0)
        else:
            await asyncio.to_thread(self.repo.set_state, endpoint_id, state, reason)

    async def fail_live(self, live: LiveEndpoint, reason: str, restart: bool) -> None:
        """The health monitor found this running endpoint dead (restart) or its credentials
        rejected (no restart: only an operator can fix them)."""
        async with self._lock(live.id):
            if self.live.get(live.id) is not live:
                return  # stopped or restarted meanwhile: the report is about the old one
            self._unregister(live.id)
            await self._close(live)
            if restart:
                await self._fail(live.id, reason, 0)
            else:
                await asyncio.to_thread(self.repo.set_state, live.id, EndpointState.failed, reason)

    async def let_go(self, endpoint_id: str) -> None:
        """Close this instance's copy of an endpoint another instance owns now (it took the
        lease); its state in the store is the owner's to write."""
        async with self._lock(endpoint_id):
            self._cancel_restart(endpoint_id)
            if (closing := self._unregister(endpoint_id)) is not None:
                log.warning("endpoint %s is owned by another instance now; closing", closing.name)
                await self._close(closing)

    def in_use(self) -> set[str]:
        """The endpoints this instance runs, restarts or is changing right now."""
        locked = {i for i, lock in self._locks.items() if lock.locked()}
        return {*self.live, *self._restarts, *locked}

    # ---- helpers ---------------------------------------------------------------------------

    def _lock(self, endpoint_id: str) -> asyncio.Lock:
        lock = self._locks.get(endpoint_id)
        if lock is None:
            lock = self._locks[endpoint_id] = asyncio.Lock()
        return lock

    def _unregister(self, endpoint_id: str) -> LiveEndpoint | None:
        self.health.forget(endpoint_id)
        live = self.live.pop(endpoint_id, None)
        if live is not None:
            self.generation += 1
            if self.by_name.get(live.name) is live:
                del self.by_name[live.name]
        return live

    async def _close(self, live: LiveEndpoint) -> None:
        await self._quiet_stop(live.provider)

    @staticmethod
    async def _quiet_stop(provider: Provider) -> None:
        try:
            async with asyncio.timeout(30):
                await provider.stop()
        except Exception:  # noqa: BLE001 - stopping must always complete
            log.exception("provider %s did not stop cleanly", provider.spec.name)


__all__ = ["EndpointManager", "LiveEndpoint", "ManagerOptions"]
