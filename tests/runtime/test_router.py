"""Which failures move on, and when the same endpoint may be asked again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from providers.errors import (
    AuthError,
    InvalidRequest,
    PageTrouble,
    ProviderTimeout,
    RateLimited,
    Unavailable,
    nothing_sent,
)
from runtime.router import is_transient, same_endpoint_delay


def endpoint(*, browser: bool = False) -> SimpleNamespace:
    return SimpleNamespace(provider=SimpleNamespace(needs_browser=browser))


def unavailable(status: int | None, retry_after: float | None = None) -> Unavailable:
    error = Unavailable("down", status=status)
    error.retry_after = retry_after
    return error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ProviderTimeout("slow"), True),
        (unavailable(500), True),
        (unavailable(None), True),  # connection refused or reset
        (RateLimited("busy", status=429), True),
        (RateLimited("out of credit", status=402), False),
        (InvalidRequest("bad", status=400), False),
        (AuthError("who", status=401), False),
        (PageTrouble("captcha", reason="captcha"), False),
    ],
)
def test_transient_failures(error, transient):
    assert is_transient(error) is transient


def test_nothing_sent_may_go_again_at_once_even_on_a_web_chat():
    error = nothing_sent(Unavailable("browser not running"))
    assert same_endpoint_delay(endpoint(browser=True), error, 2.0) == 0.0  # type: ignore[arg-type]


def test_a_short_retry_after_from_a_rest_api_is_waited_out():
    rest = endpoint()
    limited = RateLimited("busy", retry_after=1.5, status=429)
    assert same_endpoint_delay(rest, limited, 2.0) == 1.5  # type: ignore[arg-type]
    assert same_endpoint_delay(rest, unavailable(503, 0.5), 2.0) == 0.5  # type: ignore[arg-type]
    too_long = RateLimited("busy", retry_after=5, status=429)
    assert same_endpoint_delay(rest, too_long, 2.0) is None  # type: ignore[arg-type]
    no_hint = RateLimited("busy", status=429)
    assert same_endpoint_delay(rest, no_hint, 2.0) is None  # type: ignore[arg-type]
    assert same_endpoint_delay(rest, unavailable(500, 0.5), 2.0) is None  # type: ignore[arg-type]
    assert same_endpoint_delay(rest, ProviderTimeout("slow"), 2.0) is None  # type: ignore[arg-type]


def test_a_web_chat_is_never_asked_again_once_the_prompt_may_be_typed():
    limited = RateLimited("slow down", retry_after=0.1, status=429)
    assert same_endpoint_delay(endpoint(browser=True), limited, 2.0) is None  # type: ignore[arg-type]
