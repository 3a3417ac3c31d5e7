"""The one error tree every provider raises.

    ProviderError                 any failure talking to a backend
     ├── AuthError                credentials missing, wrong or expired (HTTP 401/403)
     │    └── SessionExpired      a logged-in web session is gone (logged-out page)
     ├── RateLimited              the backend asks us to slow down (HTTP 429, retry_after)
     ├── ProviderTimeout          no (complete) answer in time
     ├── Unavailable              backend down, 5xx, connection refused, browser crashed
     ├── ProtocolError            the backend answered something we cannot read
     ├── InvalidRequest           the backend rejected the request itself (HTTP 400/404/422)
     └── PageTrouble              a web page shows an error banner or a captcha

Foreign exceptions (aiohttp, httpx, Playwright) are mapped to this tree at the provider
boundary; the HTTP surface maps the tree to status codes in one place (gateway/errors.py).

``nothing_sent`` is True on an error raised before any part of the request left (a refused
connection, a page that was never typed into): only then may the runtime send the same request
to the same endpoint again without risking a second answer or a second bill. ``retry_after``
is the upstream's own hint (Retry-After on a 429 or 503), when it gave one.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base of every provider failure. ``kind`` is a stable machine-readable name."""

    kind = "provider_error"
    nothing_sent = False
    retry_after: float | None = None

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.upstream_status = status

    def __str__(self) -> str:
        return self.message


class AuthError(ProviderError):
    kind = "auth_error"


class SessionExpired(AuthError):
    kind = "session_expired"


class RateLimited(ProviderError):
    kind = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = 429
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


def nothing_sent(exc: ProviderError) -> ProviderError:
    """Mark ``exc`` as raised before anything of the request was sent."""
    exc.nothing_sent = True
    return exc


class ProviderTimeout(ProviderError):
    kind = "timeout"


class Unavailable(ProviderError):
    kind = "unavailable"


class ProtocolError(ProviderError):
    kind = "protocol_error"


class InvalidRequest(ProviderError):
    kind = "invalid_request"


class PageTrouble(ProviderError):
    """A web page shows an error banner or a captcha; ``reason`` says which."""

    kind = "page_trouble"

    def __init__(self, message: str, *, reason: str = "error_banner") -> None:
        super().__init__(message)
        self.reason = reason


def parse_retry_after(value: str | None) -> float | None:
    """Read a Retry-After header given in seconds; dates and garbage give None."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0)
