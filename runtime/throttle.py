"""Log lines that would repeat for every request or every retry while the store is away."""

from __future__ import annotations

import logging
import time

from runtime.metrics import store_is_away


class LogThrottle:
    """Lets a repeated log line through at most once per ``interval_s``, counting the rest."""

    __slots__ = ("interval_s", "_next_at", "_held")

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next_at = float("-inf")
        self._held = 0

    def due(self, now: float) -> int | None:
        """None while the line is held back; else how many were held back since the last."""
        if now < self._next_at:
            self._held += 1
            return None
        held, self._held, self._next_at = self._held, 0, now + self.interval_s
        return held


def warn_of_failure(log: logging.Logger, throttle: LogThrottle, what: str, exc: Exception) -> None:
    """A store that is away (expected now and then) is one short line per throttle interval;
    anything else keeps its traceback."""
    if not store_is_away(exc):
        log.warning("%s failed; retrying", what, exc_info=exc)
    elif throttle.due(time.monotonic()) is not None:
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or ["?"])[0]
        log.warning("%s: store unreachable (%s); retrying", what, reason)
