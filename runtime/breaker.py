"""The per-endpoint circuit breaker and the rolling window of request outcomes.

Both sit on the chat path, so they are plain objects with slots, read with a few attribute
lookups and driven by an injectable monotonic clock (tests move time by hand).

Breaker states::

    closed ──(threshold consecutive failures)──> open (cooling until open_until)
    open ──(open_until passes)──> half-open: exactly one trial (a request or a probe)
    half-open ──(trial succeeds)──> closed        half-open ──(trial fails)──> open, doubled
    any ──(lock: credentials rejected, endpoint retired)──> locked (no traffic at all)

Cooling lasts ``cooling_s`` and doubles with each ejection up to ``max_cooling_s``; a breaker
that stayed closed for longer than ``max_cooling_s`` starts again from ``cooling_s``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from runtime.errors import EndpointCooling, EndpointUnavailable

Clock = Callable[[], float]

CLOSED, OPEN, HALF_OPEN, LOCKED = "closed", "open", "half_open", "locked"


class CircuitBreaker:
    __slots__ = (
        "threshold",
        "cooling_s",
        "max_cooling_s",
        "trial_timeout_s",
        "clock",
        "failures",
        "ejections",
        "blocking",
        "open_until",
        "trial_deadline",
        "closed_at",
        "locked",
    )

    def __init__(
        self,
        *,
        threshold: int = 5,
        cooling_s: float = 30.0,
        max_cooling_s: float = 300.0,
        trial_timeout_s: float = 120.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooling_s = cooling_s
        self.max_cooling_s = max_cooling_s
        # A trial whose outcome never comes (its caller went away) frees the slot after this.
        self.trial_timeout_s = trial_timeout_s
        self.clock = clock
        self.failures = 0  # consecutive failures (requests and probes)
        self.ejections = 0
        # False while closed: the chat path reads only this attribute in the common case.
        self.blocking = False
        self.open_until = 0.0
        self.trial_deadline: float | None = None
        self.closed_at = float("-inf")
        self.locked = ""

    # ---- reading ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.locked:
            return LOCKED
        if not self.blocking:
            return CLOSED
        return OPEN if self.clock() < self.open_until else HALF_OPEN

    def allows(self) -> bool:
        """Whether a request could be sent now (closed, or half-open with the trial free)."""
        if not self.blocking:
            return True
        if self.locked:
            return False
        now = self.clock()
        trial_free = self.trial_deadline is None or now >= self.trial_deadline
        return now >= self.open_until and trial_free

    def retry_after(self) -> float:
        """Seconds until a request might be let through again."""
        now = self.clock()
        if now < self.open_until:
            return self.open_until - now
        if self.trial_deadline is not None and now < self.trial_deadline:
            return min(1.0, self.trial_deadline - now)
        return 0.0

    # ---- admitting -------------------------------------------------------------------------

    def try_trial(self) -> bool:
        """Take the way through: always when closed, the one trial slot when half-open."""
        if not self.allows():
            return False
        if self.blocking:
            self.trial_deadline = self.clock() + self.trial_timeout_s
        return True

    def release_trial(self) -> None:
        """Give the trial slot back unused (the request was refused before it went out)."""
        if self.blocking and not self.locked:
            self.trial_deadline = None

    def acquire(self, endpoint_name: str) -> None:
        """Admit a request or raise the 503 the caller answers with (nothing sent upstream)."""
        if self.try_trial():
            return
        if self.locked:
            raise EndpointUnavailable(f"endpoint {endpoint_name!r} is failed: {self.locked}")
        wait = self.retry_after()
        raise EndpointCooling(
            f"endpoint {endpoint_name!r} is cooling after repeated failures; "
            f"retry in {max(wait, 1.0):.0f} s",
            retry_after=max(wait, 1.0),
        )

    # ---- outcomes --------------------------------------------------------------------------

    def record_success(self) -> bool:
        """Count a success; True when it was the half-open trial and closed the breaker."""
        self.failures = 0
        if not self.blocking or self.locked or self.trial_deadline is None:
            return False  # closed already, or a straggler sent before the breaker opened
        self.blocking = False
        self.trial_deadline = None
        self.closed_at = self.clock()
        return True

    def record_failure(self) -> float | None:
        """Count a failure; the cooling seconds when it opened (or re-opened) the breaker."""
        self.failures += 1
        if self.locked:
            return None
        if self.blocking:
            if self.trial_deadline is None:
                return None  # already open: a request sent before it opened
            return self._open()  # the trial failed
        if self.failures >= self.threshold:
            if self.clock() - self.closed_at > self.max_cooling_s:
                self.ejections = 0  # a long healthy spell since the last ejection
            return self._open()
        return None

    def lock(self, reason: str) -> None:
        """No traffic at all until the endpoint is restarted (a new breaker comes with it)."""
        self.locked = reason or "failed"
        self.blocking = True

    def _open(self) -> float:
        now = self.clock()
        cooling = min(self.max_cooling_s, self.cooling_s * 2**self.ejections)
        self.ejections += 1
        self.blocking = True
        self.open_until = now + cooling
        self.trial_deadline = None
        return cooling

    def describe(self) -> dict[str, object]:
        return {
            "state": self.state,
            "consecutive_failures": self.failures,
            "threshold": self.threshold,
            "ejections": self.ejections,
            "retry_after_s": round(self.retry_after(), 3) if self.blocking else None,
            "next_cooling_s": min(self.max_cooling_s, self.cooling_s * 2**self.ejections),
        }


class OutcomeWindow:
    """Requests, failures and latency over the last ``window_s`` seconds, in six slots.

    ``add`` touches three numbers of the current slot; it returns True when it moved to a new
    slot, which is when the caller re-reads the totals (rates change meaningfully only that
    often).
    """

    SLOTS = 6
    __slots__ = ("slot_s", "index", "slot_end", "past", "requests", "failures", "latency_ms")

    def __init__(self, window_s: float) -> None:
        self.slot_s = window_s / self.SLOTS
        self.index = -self.SLOTS  # the current slot's number (time // slot_s)
        self.slot_end = float("-inf")
        # (requests, failures, latency sum) of the slots before the current one.
        self.past: deque[tuple[int, int, float]] = deque(maxlen=self.SLOTS - 1)
        self.requests = 0
        self.failures = 0
        self.latency_ms = 0.0

    def add(self, ok: bool, latency_ms: float, now: float) -> bool:
        rotated = now >= self.slot_end
        if rotated:
            self._advance(now)
        self.requests += 1
        self.latency_ms += latency_ms
        if not ok:
            self.failures += 1
        return rotated

    def _advance(self, now: float) -> None:
        index = int(now // self.slot_s)
        self.past.append((self.requests, self.failures, self.latency_ms))
        for _ in range(min(index - self.index - 1, self.SLOTS - 1)):  # slots with no traffic
            self.past.append((0, 0, 0.0))
        self.index = index
        self.slot_end = (index + 1) * self.slot_s
        self.requests = self.failures = 0
        self.latency_ms = 0.0

    def totals(self, now: float) -> tuple[int, int, float]:
        """(requests, failures, latency sum in ms) within the window ending at ``now``."""
        if now >= self.slot_end:
            self._advance(now)
        requests, failures, latency = self.requests, self.failures, self.latency_ms
        for past_requests, past_failures, past_latency in self.past:
            requests += past_requests
            failures += past_failures
            latency += past_latency
        return requests, failures, latency
