"""A log line that repeats for every request while a dependency is down, said once a second."""

from __future__ import annotations


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
