"""The circuit breaker and the outcome window, on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from runtime.breaker import CLOSED, HALF_OPEN, LOCKED, OPEN, CircuitBreaker, OutcomeWindow
from runtime.errors import EndpointCooling, EndpointUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(clock: Clock, **kwargs: float) -> CircuitBreaker:
    options = {"threshold": 5, "cooling_s": 30.0, "max_cooling_s": 300.0, "trial_timeout_s": 60}
    return CircuitBreaker(clock=clock, **{**options, **kwargs})  # type: ignore[arg-type]


def test_opens_after_threshold_consecutive_failures(clock):
    b = breaker(clock)
    assert [b.record_failure() for _ in range(4)] == [None] * 4
    assert b.state == CLOSED and b.allows()
    b.record_success()  # a success in between starts the count again
    assert [b.record_failure() for _ in range(4)] == [None] * 4
    assert b.record_failure() == 30.0
    assert b.state == OPEN and not b.allows()
    assert b.retry_after() == pytest.approx(30.0)


def test_cooling_refuses_with_retry_after_and_then_lets_exactly_one_trial(clock):
    b = breaker(clock, threshold=1)
    b.record_failure()
    with pytest.raises(EndpointCooling) as refused:
        b.acquire("ep")
    assert refused.value.retry_after == pytest.approx(30.0)
    assert "cooling" in str(refused.value)
    clock.advance(30)
    assert b.state == HALF_OPEN and b.allows()
    b.acquire("ep")  # the trial
    assert not b.allows()
    with pytest.raises(EndpointCooling):
        b.acquire("ep")
    assert b.record_success() is True
    assert b.state == CLOSED and b.allows() and not b.blocking


def test_failed_trial_reopens_with_doubled_cooling_capped(clock):
    b = breaker(clock, threshold=1)
    periods = [b.record_failure()]
    for _ in range(6):
        clock.advance(periods[-1] or 0)
        assert b.try_trial()
        periods.append(b.record_failure())
    assert periods == [30, 60, 120, 240, 300, 300, 300]
    assert b.ejections == 7


def test_stragglers_do_not_decide_the_trial(clock):
    b = breaker(clock, threshold=1)
    b.record_failure()
    assert b.record_failure() is None  # a request sent before it opened fails late
    assert b.record_success() is False  # ... or succeeds late: still open
    assert b.state == OPEN
    clock.advance(30)
    assert b.record_failure() is None  # half-open, but no trial was let through
    assert b.state == HALF_OPEN


def test_a_lost_trial_frees_its_slot_after_the_trial_timeout(clock):
    b = breaker(clock, threshold=1, trial_timeout_s=10)
    b.record_failure()
    clock.advance(30)
    assert b.try_trial()
    clock.advance(9)
    assert not b.try_trial()
    clock.advance(1)
    assert b.try_trial()


def test_a_trial_refused_before_it_went_out_is_given_back(clock):
    b = breaker(clock, threshold=1)
    b.record_failure()
    clock.advance(30)
    b.acquire("ep")
    assert not b.allows()
    b.release_trial()
    assert b.allows() and b.state == HALF_OPEN


def test_ejections_start_over_after_a_long_healthy_spell(clock):
    b = breaker(clock, threshold=1)
    b.record_failure()
    clock.advance(30)
    b.try_trial()
    assert b.record_failure() == 60
    clock.advance(60)
    b.try_trial()
    b.record_success()
    clock.advance(301)
    assert b.record_failure() == 30


def test_locked_refuses_everything_without_retry_after(clock):
    b = breaker(clock)
    b.lock("credentials rejected: HTTP 401")
    assert b.state == LOCKED and not b.allows()
    with pytest.raises(EndpointUnavailable) as refused:
        b.acquire("ep")
    assert not isinstance(refused.value, EndpointCooling)
    assert refused.value.retry_after is None and "credentials rejected" in str(refused.value)
    assert b.record_success() is False and b.state == LOCKED


def test_outcome_window_forgets_what_is_older_than_the_window():
    window = OutcomeWindow(60.0)
    assert window.add(True, 100.0, 0.0) is True
    assert window.add(False, 300.0, 5.0) is False  # same 10 s slot
    window.add(True, 200.0, 25.0)
    assert window.totals(30.0) == (3, 1, 600.0)
    assert window.totals(62.0) == (1, 0, 200.0)  # the first slot aged out
    assert window.totals(500.0) == (0, 0, 0.0)
