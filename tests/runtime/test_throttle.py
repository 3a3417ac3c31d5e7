"""Log lines repeated by every request or retry while the store is down: said once in a while."""

from __future__ import annotations

import logging

from runtime.throttle import LogThrottle, warn_of_failure


def test_a_repeated_line_passes_once_per_interval_with_the_count_held_back():
    throttle = LogThrottle(1.0)
    assert throttle.due(100.0) == 0  # the first one passes, nothing was held back
    assert throttle.due(100.2) is None
    assert throttle.due(100.9) is None
    assert throttle.due(101.0) == 2  # a second later: says how many it did not say
    assert throttle.due(101.5) is None
    assert throttle.due(130.0) == 1
    assert throttle.due(130.1) is None


def test_a_store_away_is_one_short_line_and_anything_else_keeps_its_traceback(caplog):
    log = logging.getLogger("aiem.test-throttle")
    throttle = LogThrottle(30.0)
    refused = OSError("connection to server at 127.0.0.1 failed: Connection refused")
    with caplog.at_level(logging.WARNING, logger="aiem.test-throttle"):
        for _ in range(5):
            warn_of_failure(log, throttle, "heartbeat", refused)
        warn_of_failure(log, throttle, "heartbeat", ValueError("a bug"))
    lines = [(r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert lines == [
        ("heartbeat: store unreachable (connection to server at 127.0.0.1 failed: "
         "Connection refused); retrying", False),
        ("heartbeat failed; retrying", True),
    ]  # fmt: skip
