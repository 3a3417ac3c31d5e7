"""A log line repeated by every request while the store is down is said once per interval."""

from __future__ import annotations

from runtime.throttle import LogThrottle


def test_a_repeated_line_passes_once_per_interval_with_the_count_held_back():
    throttle = LogThrottle(1.0)
    assert throttle.due(100.0) == 0  # the first one passes, nothing was held back
    assert throttle.due(100.2) is None
    assert throttle.due(100.9) is None
    assert throttle.due(101.0) == 2  # a second later: says how many it did not say
    assert throttle.due(101.5) is None
    assert throttle.due(130.0) == 1
    assert throttle.due(130.1) is None
