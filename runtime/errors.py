"""Errors of the runtime (the manager), apart from the providers' own tree.

    ManagerError
     ├── NotFound            no such endpoint or session                  -> 404
     ├── Conflict            duplicate name; endpoint not running        -> 409
     │    └── OwnedElsewhere  a browser endpoint another instance runs  -> forwarded there
     ├── InvalidConfig       endpoint type or provider config rejected   -> 422
     ├── Unsupported         a request field the endpoint cannot honour  -> 400
     ├── CapacityExceeded    concurrency cap (after queueing) or rate limit -> 429
     ├── EndpointUnavailable the endpoint takes no traffic now (failed)  -> 503
     │    └── EndpointCooling  its breaker is open (Retry-After)          -> 503
     ├── StoreUnavailable    the database cannot be read or written      -> 503
     └── InternalError       an unexpected failure inside a chat         -> 500

The HTTP surface maps this tree and providers.errors to status codes in one place.
"""

from __future__ import annotations

from typing import Any


class ManagerError(Exception):
    kind = "manager_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(ManagerError):
    kind = "not_found"


class Conflict(ManagerError):
    kind = "conflict"


class OwnedElsewhere(Conflict):
    """A browser endpoint another live instance owns (holds its lease): the HTTP surface
    forwards the request to ``owner_url``; a 409 when it cannot (the request was forwarded
    once already)."""

    kind = "owned_elsewhere"

    def __init__(self, endpoint: str, owner: str, owner_url: str, timeout_s: float) -> None:
        super().__init__(
            f"endpoint {endpoint!r} runs on instance {owner} ({owner_url}), which owns its browser"
        )
        self.endpoint = endpoint
        self.owner = owner
        self.owner_url = owner_url.rstrip("/")
        self.timeout_s = timeout_s


class InvalidConfig(ManagerError):
    kind = "invalid_config"

    def __init__(self, message: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class Unsupported(ManagerError):
    """A request asks for something the endpoint's provider cannot do: refused, never dropped."""

    kind = "unsupported_parameter"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class CapacityExceeded(ManagerError):
    kind = "capacity_exceeded"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EndpointUnavailable(ManagerError):
    """The endpoint is running but takes no traffic now; nothing was sent upstream."""

    kind = "endpoint_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EndpointCooling(EndpointUnavailable):
    """The endpoint's circuit breaker is open until ``retry_after`` seconds from now."""

    kind = "endpoint_cooling"


class StoreUnavailable(ManagerError):
    kind = "store_unavailable"
    retry_after = 5.0


class InternalError(ManagerError):
    kind = "internal_error"
