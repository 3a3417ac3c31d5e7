"""Endpoint health: explicit states, active probes, passive signals and the circuit breaker.

States (every change is an EndpointEvent with its reason, written through the repository,
which publishes it on the event bus):

    starting   the provider is starting and its first probe has not answered yet
    healthy    probes pass and traffic succeeds
    degraded   it works, but a probe failed, requests fail now and then, answers are slow, or
               the upstream asked us to slow down
    cooling    the breaker is open: no traffic until ``until``, then exactly one trial
    failed     start failed, credentials rejected, probes failed N times in a row (restarted
               when auto-restart is on), or restarts exhausted; never running
    stopping / stopped

The monitor owns healthy / degraded / cooling of running endpoints; the manager owns starting,
failed, stopping and stopped. The monitor's store writes are guarded (written only while the
stored state is one of those three), so a late write can never undo a stop or a failure.

Signals:
- active: every HEALTH_CHECK_INTERVAL seconds (jittered, bounded concurrency) the provider's
  own ``health()`` (never billed: a models list, a HEAD, a token check, a page/DOM check), or
  the endpoint's opt-in ``health_config.probe_prompt``, a real prompt;
- passive, from real traffic: consecutive failures, the success rate and mean latency over a
  rolling window, and upstream rate-limit answers (``ChatService.outcome_listeners``).

The per-request cost is a dict lookup and a few counter updates; state changes (rare) are
queued and written by one writer task, never on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from providers.base import ChatRequest, HealthResult, Message
from providers.errors import AuthError, InvalidRequest, ProviderError, RateLimited, SessionExpired
from runtime.breaker import CircuitBreaker, Clock, OutcomeWindow
from runtime.metrics import store_is_away
from store.models import LIVE_STATES, EndpointState, utcnow

if TYPE_CHECKING:
    from runtime.manager import LiveEndpoint
    from runtime.repository import EndpointRepository

log = logging.getLogger("aiem.health")

PROBE_CONCURRENCY = 32
RATE_LIMIT_HOLD_S = 30.0  # how long an upstream 429 without Retry-After keeps us degraded
STORE_RETRY_MAX_S = 5.0  # the longest wait between tries of a state write while the store is away
HEALTHY, DEGRADED, COOLING = EndpointState.healthy, EndpointState.degraded, EndpointState.cooling

# (endpoint, reason, restart?) -> the manager retires the endpoint as failed.
FailHandler = Callable[["LiveEndpoint", str, bool], Awaitable[None]]


class HealthConfig(BaseModel):
    """An endpoint's ``health_config``: every field optional, the defaults suit most APIs."""

    model_config = ConfigDict(extra="forbid")

    probes: bool = Field(True, description="Run active probes (the provider's free check).")
    probe_prompt: str | None = Field(
        None,
        min_length=1,
        max_length=2000,
        description="Opt-in: probe by sending this real prompt (billed like any request).",
    )
    probe_timeout_s: float = Field(10.0, gt=0, le=300, description="A probe slower fails.")
    probe_failures_to_fail: int = Field(
        8, ge=1, le=10_000, description="Probes failed in a row before the endpoint is failed."
    )
    failure_threshold: int = Field(
        5, ge=1, le=10_000, description="Consecutive failures that open the breaker."
    )
    cooling_s: float = Field(30.0, gt=0, le=86_400, description="First cooling period.")
    max_cooling_s: float = Field(300.0, gt=0, le=86_400, description="Longest cooling period.")
    degrade_after_failures: int = Field(
        2, ge=1, le=10_000, description="Consecutive request failures that make it degraded."
    )
    window_s: float = Field(60.0, ge=0.06, le=86_400, description="Rolling signal window.")
    min_samples: int = Field(10, ge=1, description="Requests in the window before rates count.")
    min_success_rate: float = Field(
        0.9, ge=0, le=1, description="Below this success rate in the window: degraded."
    )
    slow_ms: float | None = Field(
        None, gt=0, description="Mean latency above this is degraded (default: timeout / 2)."
    )

    @model_validator(mode="after")
    def _cooling_order(self) -> HealthConfig:
        if self.max_cooling_s < self.cooling_s:
            raise ValueError("max_cooling_s must not be below cooling_s")
        return self


def parse_health_config(data: dict[str, Any] | None) -> HealthConfig:
    """Raises pydantic.ValidationError naming the field (the repository maps it to 422)."""
    return HealthConfig.model_validate(data or {})


@dataclass(slots=True)
class ProbeRecord:
    at: datetime
    ok: bool
    detail: str
    latency_ms: float | None
    trial: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "ok": self.ok,
            "detail": self.detail,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 2),
            "trial": self.trial,
        }


@dataclass(slots=True)
class StateWrite:
    health: EndpointHealth
    state: str
    reason: str
    kind: str
    until: datetime | None


class EndpointHealth:
    """What the monitor knows about one running endpoint."""

    def __init__(
        self, live: LiveEndpoint, config: HealthConfig, clock: Clock, interval_s: float
    ) -> None:
        self.live = live
        self.config = config
        self.interval_s = interval_s
        self.breaker = CircuitBreaker(
            threshold=config.failure_threshold,
            cooling_s=config.cooling_s,
            max_cooling_s=config.max_cooling_s,
            # A trial's outcome comes within the request (or probe) timeout, or never.
            trial_timeout_s=max(live.timeout, config.probe_timeout_s) + 1.0,
            clock=clock,
        )
        self.window = OutcomeWindow(config.window_s)
        self.slow_ms = config.slow_ms or live.timeout * 500.0
        self.request_failures = 0
        self.probe_failures = 0
        self.last_error = ""
        self.rate_limited_until = 0.0
        self.cooling_s = 0.0  # the current (or last) cooling period
        self.reason = ""
        self.due = 0.0
        self.probing = False

    def assess(self, now: float) -> tuple[str, str]:
        """The state the signals call for now, and why."""
        if self.breaker.blocking:
            return COOLING, (
                f"breaker open after {self.breaker.failures} consecutive failures "
                f"(last: {self.last_error}); cooling {self.cooling_s:g} s, then one trial"
            )
        if self.probe_failures:
            if self.probe_failures == 1:
                return DEGRADED, f"probe failed: {self.last_error}"
            return DEGRADED, f"{self.probe_failures} probes failed in a row: {self.last_error}"
        if self.request_failures >= self.config.degrade_after_failures:
            return DEGRADED, f"{self.request_failures} requests failed in a row: {self.last_error}"
        if now < self.rate_limited_until:
            return DEGRADED, "upstream rate limit: " + self.last_error
        return self._window_state(now)

    def _window_state(self, now: float) -> tuple[str, str]:
        requests, failures, latency_sum = self.window.totals(now)
        if requests < self.config.min_samples:
            return HEALTHY, "probes pass and traffic succeeds"
        window = f"over the last {self.config.window_s:g} s"
        rate = (requests - failures) / requests
        if rate < self.config.min_success_rate:
            return DEGRADED, f"success rate {rate:.0%} {window} ({failures} of {requests} failed)"
        mean = latency_sum / requests
        if mean > self.slow_ms:
            return DEGRADED, f"slow: mean latency {mean:.0f} ms {window}"
        return HEALTHY, "probes pass and traffic succeeds"

    def describe(self, now: float) -> dict[str, Any]:
        requests, failures, latency_sum = self.window.totals(now)
        return {
            "breaker": self.breaker.describe(),
            "signals": {
                "window_s": self.config.window_s,
                "requests": requests,
                "failures": failures,
                "success_rate": round((requests - failures) / requests, 4) if requests else None,
                "mean_latency_ms": round(latency_sum / requests, 2) if requests else None,
                "consecutive_request_failures": self.request_failures,
                "rate_limited": now < self.rate_limited_until,
            },
            "probes": {
                "enabled": self.config.probes,
                "interval_s": self.interval_s,
                "uses_prompt": self.config.probe_prompt is not None,
                "consecutive_failures": self.probe_failures,
                "fail_after": self.config.probe_failures_to_fail,
                "next_in_s": round(max(0.0, self.due - now), 3) if self.config.probes else None,
            },
        }


class HealthMonitor:
    def __init__(
        self,
        repo: EndpointRepository,
        *,
        interval_s: float = 30.0,
        concurrency: int = PROBE_CONCURRENCY,
        clock: Clock = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.repo = repo
        self.interval_s = interval_s
        self.clock = clock
        self.jitter = jitter
        self.watched: dict[str, EndpointHealth] = {}
        self.last_probes: dict[str, ProbeRecord] = {}
        self.on_failed: FailHandler | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._writes: asyncio.Queue[StateWrite] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[Any]] = set()

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._schedule_probes(), name="aiem-health-probes"),
            asyncio.create_task(self._write_states(), name="aiem-health-writer"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._spawned]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        while not self._writes.empty():  # what was decided is still written
            await self._write(self._writes.get_nowait())

    async def settle(self) -> None:
        """Wait until every state change decided so far is in the store."""
        await self._writes.join()

    # ---- endpoints coming and going (called by the manager) --------------------------------

    def prepare(self, live: LiveEndpoint, raw_config: dict[str, Any] | None) -> EndpointHealth:
        try:
            config = parse_health_config(raw_config)
        except ValidationError:  # stored before a stricter version: run on the defaults
            log.warning("endpoint %s: invalid health_config, using defaults", live.name)
            config = parse_health_config(None)
        h = EndpointHealth(live, config, self.clock, self.interval_s)
        live.breaker = h.breaker
        live.state = EndpointState.starting
        return h

    async def first_probe(self, h: EndpointHealth) -> tuple[str, str]:
        """Probe a freshly started endpoint: the state it starts in and why.

        ``failed`` here means the credentials were rejected (no point retrying).
        """
        if not h.config.probes:
            return self._set_live(h, HEALTHY, "started (active probes are off)")
        async with self._slots:
            result = await self._run_probe(h)
        self._note_probe(h, result, trial=False)
        if result.ok:
            return self._set_live(h, HEALTHY, f"first probe passed: {result.detail}")
        if _credentials_rejected(result.kind):
            return EndpointState.failed, f"credentials rejected: {result.detail}"
        h.probe_failures = 1
        h.last_error = result.detail
        self._count_failure(h)
        return self._set_live(h, DEGRADED, f"first probe failed: {result.detail}")

    def watch(self, h: EndpointHealth) -> None:
        """Start watching a running endpoint (its state is already in the store)."""
        self.watched[h.live.id] = h
        # Spread the first scheduled probes of endpoints started together over an interval.
        h.due = self.clock() + self.interval_s * (0.1 + 0.9 * self.jitter())
        self._wake.set()

    def forget(self, endpoint_id: str, *, deleted: bool = False) -> None:
        self.watched.pop(endpoint_id, None)
        if deleted:
            self.last_probes.pop(endpoint_id, None)

    @staticmethod
    def _set_live(h: EndpointHealth, state: str, reason: str) -> tuple[str, str]:
        h.live.state, h.reason = state, reason
        return state, reason

    # ---- passive signals (the chat path: keep it to a few operations) ----------------------

    def on_outcome(
        self, live: LiveEndpoint, error: ProviderError | None, latency_ms: float
    ) -> None:
        h = self.watched.get(live.id)
        if h is None or h.live is not live:
            return
        now = self.clock()
        if error is None:
            rotated = h.window.add(True, latency_ms, now)
            h.request_failures = 0
            breaker = h.breaker
            if breaker.blocking:
                self._reassess(h, now, closed=breaker.record_success())
            else:
                breaker.failures = 0
                if rotated or live.state != HEALTHY:
                    self._reassess(h, now)
            return
        self._on_failure(h, error, latency_ms, now)

    def _on_failure(
        self, h: EndpointHealth, error: ProviderError, latency_ms: float, now: float
    ) -> None:
        if isinstance(error, InvalidRequest) and error.upstream_status != 404:
            return  # the caller's fault (400, 422): says nothing about the endpoint
        if isinstance(error, AuthError) and not isinstance(error, SessionExpired):
            self._retire(h, f"credentials rejected: {error.message}", restart=False)
            return
        h.window.add(False, latency_ms, now)
        h.last_error = f"{error.kind}: {error.message}"[:300]
        if isinstance(error, RateLimited):
            # The upstream is alive and asks for less: degraded, not a breaker failure.
            h.rate_limited_until = now + (error.retry_after or RATE_LIMIT_HOLD_S)
            self._reassess(h, now)
            return
        h.request_failures += 1
        self._reassess(h, now, opened=self._count_failure(h))

    # ---- state changes ---------------------------------------------------------------------

    @staticmethod
    def _count_failure(h: EndpointHealth) -> bool:
        """Count a failure on the breaker; True when that opened it (a new ejection)."""
        cooling = h.breaker.record_failure()
        if cooling is None:
            return False
        h.cooling_s = cooling
        return True

    def _reassess(
        self, h: EndpointHealth, now: float, *, closed: bool = False, opened: bool = False
    ) -> None:
        state, reason = h.assess(now)
        previous = h.live.state
        if state == previous and not opened:
            h.reason = reason
            return
        h.live.state, h.reason = state, reason
        if state == COOLING:
            kind = "breaker_open"
        elif previous == COOLING or closed:
            kind = "breaker_closed"
        else:
            kind = "state_change"
        until = None
        if state == COOLING:
            until = utcnow() + timedelta(seconds=max(0.0, h.breaker.open_until - now))
            h.due = max(h.due, h.breaker.open_until)  # the trial probe, when no request comes
            self._wake.set()
        self._writes.put_nowait(StateWrite(h, state, reason, kind, until))

    def _retire(self, h: EndpointHealth, reason: str, *, restart: bool) -> None:
        """Stop all traffic now and hand the endpoint to the manager as failed."""
        h.breaker.lock(reason)
        h.live.state = EndpointState.failed
        self.forget(h.live.id)
        if self.on_failed is not None:
            self._spawn(self.on_failed(h.live, reason, restart))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def _write_states(self) -> None:
        while True:
            write = await self._writes.get()
            try:
                await self._write_until_stored(write)
            finally:
                self._writes.task_done()

    async def _write_until_stored(self, w: StateWrite) -> None:
        """A state decided while the store is away is written once it is back (unless the
        endpoint stopped or restarted since), so the stored state does not stay stale."""
        delay = 0.5
        while not await self._write(w):
            await asyncio.sleep(delay)
            delay = min(2 * delay, STORE_RETRY_MAX_S)

    async def _write(self, w: StateWrite) -> bool:
        """Record one state change; False when the store is away and it is worth another try."""
        endpoint_id = w.health.live.id
        if self.watched.get(endpoint_id) is not w.health:
            return True  # stopped, failed or restarted since: the manager has written its state
        try:
            await asyncio.to_thread(
                self.repo.set_state,
                endpoint_id,
                w.state,
                w.reason,
                kind=w.kind,
                until=w.until,
                only_from=LIVE_STATES,
            )
        except Exception as exc:  # noqa: BLE001 - a store hiccup must not stop the writer
            if store_is_away(exc):
                log.warning("state %s of endpoint %s waits for the store", w.state, endpoint_id)
                return False
            log.exception("could not record state %s of endpoint %s", w.state, endpoint_id)
        return True

    # ---- active probes ---------------------------------------------------------------------

    async def _schedule_probes(self) -> None:
        while True:
            now = self.clock()
            next_due = now + self.interval_s
            for h in list(self.watched.values()):
                if h.probing or not h.config.probes:
                    continue
                if h.due <= now:
                    h.probing = True
                    self._spawn(self._probe(h))
                else:
                    next_due = min(next_due, h.due)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_due - now)):
                    await self._wake.wait()

    async def _probe(self, h: EndpointHealth) -> None:
        try:
            async with self._slots:
                if self.watched.get(h.live.id) is not h:
                    return
                trial = h.breaker.blocking
                if trial and not h.breaker.try_trial():
                    return  # still open, or a request is the trial right now
                result = await self._run_probe(h)
            if self.watched.get(h.live.id) is h:
                self._after_probe(h, result, trial)
        finally:
            h.probing = False
            self._schedule_next(h)

    def _schedule_next(self, h: EndpointHealth) -> None:
        now = self.clock()
        h.due = now + self.interval_s * (0.75 + 0.25 * self.jitter())
        breaker = h.breaker
        if breaker.blocking and not breaker.locked:
            # Probe again when the cooling ends (the trial) or when a request's trial lapses.
            wake_at = breaker.open_until if now < breaker.open_until else breaker.trial_deadline
            h.due = min(h.due, max(wake_at or now, now + 0.05))
        self._wake.set()

    async def _run_probe(self, h: EndpointHealth) -> HealthResult:
        started = time.perf_counter()
        timeout = h.config.probe_timeout_s
        try:
            async with asyncio.timeout(timeout):
                if h.config.probe_prompt is not None:
                    return await self._prompt_probe(h, h.config.probe_prompt, started)
                return await h.live.provider.health()
        except TimeoutError:
            return HealthResult(ok=False, detail=f"no answer within {timeout:g} s", kind="timeout")
        except ProviderError as exc:
            return HealthResult(ok=False, detail=f"{exc.kind}: {exc.message}", kind=exc.kind)
        except Exception as exc:  # noqa: BLE001 - a broken plugin's probe is a failed probe
            log.exception("probe of endpoint %s raised", h.live.name)
            return HealthResult(ok=False, detail=f"probe raised {type(exc).__name__}")

    @staticmethod
    async def _prompt_probe(h: EndpointHealth, prompt: str, started: float) -> HealthResult:
        answer = await h.live.provider.chat(ChatRequest(messages=[Message("user", prompt)]))
        latency = (time.perf_counter() - started) * 1000
        if not answer.content.strip():
            return HealthResult(ok=False, detail="probe prompt got an empty answer")
        return HealthResult(ok=True, detail="probe prompt answered", latency_ms=latency)

    def _note_probe(self, h: EndpointHealth, result: HealthResult, *, trial: bool) -> None:
        record = ProbeRecord(utcnow(), result.ok, result.detail, result.latency_ms, trial)
        self.last_probes[h.live.id] = record

    def _after_probe(self, h: EndpointHealth, result: HealthResult, trial: bool) -> None:
        self._note_probe(h, result, trial=trial)
        now = self.clock()
        if result.ok:
            h.probe_failures = 0
            self._reassess(h, now, closed=h.breaker.record_success())
            return
        if _credentials_rejected(result.kind):
            self._retire(h, f"credentials rejected: {result.detail}", restart=False)
            return
        h.probe_failures += 1
        h.last_error = result.detail
        if h.probe_failures >= h.config.probe_failures_to_fail:
            reason = f"{h.probe_failures} probes failed in a row: {result.detail}"
            self._retire(h, reason, restart=True)
            return
        self._reassess(h, now, opened=self._count_failure(h))

    # ---- reading ---------------------------------------------------------------------------

    def describe(self, endpoint_id: str) -> dict[str, Any]:
        h = self.watched.get(endpoint_id)
        probe = self.last_probes.get(endpoint_id)
        data: dict[str, Any] = {"breaker": None, "signals": None, "probes": None}
        if h is not None:
            data = h.describe(self.clock())
            data["live_reason"] = h.reason
        data["last_probe"] = probe.to_dict() if probe is not None else None
        return data


def _credentials_rejected(kind: str) -> bool:
    return kind == AuthError.kind
