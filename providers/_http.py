"""Shared plumbing for the HTTP providers.

One aiohttp session per provider instance (opened in ``start``, closed in ``stop``), foreign
exceptions mapped to ``providers.errors`` at the boundary, Server-Sent Events parsed
incrementally from the response stream, and a small client-side rate limiter.

This is the gateway's hot path: nothing here builds pydantic models or copies bodies per
request, and streams are forwarded event by event as the bytes arrive.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from typing import Any, ClassVar

import aiohttp
import orjson
from pydantic import BaseModel

from providers.base import (
    ChatRequest,
    EndpointSpec,
    HealthResult,
    Provider,
    ProviderContext,
    Usage,
    estimate_tokens,
)
from providers.errors import (
    AuthError,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
    nothing_sent,
    parse_retry_after,
)

JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}
SSE_HEADERS: Mapping[str, str] = {
    "Content-Type": "application/json",
    "Accept": "text/event-stream",
}
PROBE_TIMEOUT = 10.0  # seconds; a health probe must answer fast to count as healthy
_MESSAGE_LIMIT = 300
_MIN_SECRET_LENGTH = 4


# --- secrets and messages -------------------------------------------------------------


def secrets_of(spec: EndpointSpec) -> tuple[str, ...]:
    """Credential values worth redacting (very short ones would mangle ordinary text)."""
    return tuple(v for v in spec.credentials.values() if v and len(v) >= _MIN_SECRET_LENGTH)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def upstream_message(body: bytes) -> str:
    """The human part of an error body: JSON ``error.message``/``message``/``detail``, else text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return text[:_MESSAGE_LIMIT] or "(empty body)"
    return _message_from_json(data)[:_MESSAGE_LIMIT]


def _message_from_json(data: Any) -> str:
    if not isinstance(data, dict):
        return str(data)
    error = data.get("error")
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("detail") or "")
        kind = error.get("type") or error.get("code")
        return f"{kind}: {message}" if kind and message else message or str(kind or error)
    if isinstance(error, str) and error:
        return error
    for key in ("message", "detail", "error_description", "msg"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value:
            first = value[0]
            return str(first.get("msg", first)) if isinstance(first, dict) else str(first)
    return orjson.dumps(data).decode()


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    seconds = parse_retry_after(headers.get("Retry-After"))
    if seconds is None:
        millis = parse_retry_after(headers.get("retry-after-ms"))
        seconds = millis / 1000.0 if millis is not None else None
    return seconds


def error_for_status(
    status: int, headers: Mapping[str, str], body: bytes, *, label: str, secrets: tuple[str, ...]
) -> ProviderError:
    """Map an upstream HTTP error status to the provider error tree."""
    message = redact(f"{label} answered HTTP {status}: {upstream_message(body)}", secrets)
    if status in (401, 403):
        return AuthError(message, status=status)
    if status in (402, 429):
        retry_after = retry_after_of(headers) if status == 429 else None
        return RateLimited(message, retry_after=retry_after, status=status)
    if status == 408:
        return ProviderTimeout(message, status=status)
    if 400 <= status < 500:
        return InvalidRequest(message, status=status)
    if status >= 500:
        error = Unavailable(message, status=status)
        if status == 503:
            error.retry_after = retry_after_of(headers)
        return error
    return ProtocolError(message, status=status)


@contextmanager
def error_boundary(label: str, secrets: tuple[str, ...]) -> Iterator[None]:
    """Translate aiohttp/asyncio/JSON failures into the provider error tree.

    Also wraps generators: GeneratorExit and cancellation pass through untouched.
    """
    try:
        yield
    except ProviderError:
        raise
    except TimeoutError as exc:  # asyncio.TimeoutError and aiohttp's ServerTimeoutError
        raise ProviderTimeout(f"{label} did not answer in time") from exc
    except aiohttp.ClientPayloadError as exc:
        raise Unavailable(f"{label} connection broke mid-response") from exc
    except aiohttp.ClientConnectorError as exc:
        # The connection was never made, so the request never left: safe to send again.
        detail = redact(str(exc) or type(exc).__name__, secrets)
        raise nothing_sent(Unavailable(f"{label} is unreachable: {detail}")) from exc
    except (aiohttp.ClientError, OSError) as exc:
        detail = redact(str(exc) or type(exc).__name__, secrets)
        raise Unavailable(f"{label} is unreachable: {detail}") from exc
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"{label} sent unreadable JSON") from exc


def loads(raw: bytes | str, label: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"{label} sent unreadable JSON") from exc


def usage_from(
    prompt_tokens: Any, completion_tokens: Any, request: ChatRequest, completion: str
) -> Usage:
    """Upstream usage when it gave both counts, else an estimate flagged as such."""
    if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int):
        return Usage(prompt_tokens, completion_tokens, estimated=False)
    return Usage(
        prompt_tokens if isinstance(prompt_tokens, int) else estimate_prompt_tokens(request),
        completion_tokens if isinstance(completion_tokens, int) else estimate_tokens(completion),
        estimated=True,
    )


def estimate_prompt_tokens(request: ChatRequest) -> int:
    return sum(estimate_tokens(m.content) for m in request.messages)


# --- Server-Sent Events -----------------------------------------------------------------


async def iter_sse(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(event, data)`` as each event completes on the wire.

    Reads whatever bytes have arrived (no buffering of the whole body, no line-length cap);
    multi-line ``data`` fields are joined with newlines, comments are skipped. An event left
    unterminated when the stream ends is still delivered.
    """
    parser = _SSEParser()
    pending = b""
    async for piece in content.iter_any():
        lines = (pending + piece).split(b"\n") if pending else piece.split(b"\n")
        pending = lines.pop()
        for raw in lines:
            event = parser.line(raw)
            if event is not None:
                yield event
    for raw in (pending, b""):
        event = parser.line(raw)
        if event is not None:
            yield event


class _SSEParser:
    __slots__ = ("event", "data")

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []

    def line(self, raw: bytes) -> tuple[str, str] | None:
        """Feed one line; returns a completed ``(event, data)`` on a blank line."""
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            if not self.data:
                self.event = ""
                return None
            done = (self.event or "message", "\n".join(self.data))
            self.event, self.data = "", []
            return done
        if line[0] == 0x3A:  # ":" comment / keep-alive
            return None
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self.data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self.event = value.decode("utf-8", "replace")
        return None


class StreamState:
    """What a streamed answer has shown so far: text parts, the upstream's own finish (or stop)
    reason, its usage figures, and whether its end marker arrived."""

    __slots__ = ("parts", "finish", "usage", "done")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.done = False


# --- rate limiting ----------------------------------------------------------------------


class SlidingWindowLimiter:
    """At most ``max_calls`` acquisitions in any ``period`` seconds; waiters queue in order.

    ``block_for`` holds everyone back, e.g. for an upstream's Retry-After.
    """

    def __init__(self, max_calls: int, period: float) -> None:
        self.max_calls = max(1, max_calls)
        self.period = period
        self._calls: deque[float] = deque()
        self._blocked_until = 0.0
        self._lock = asyncio.Lock()

    def block_for(self, seconds: float) -> None:
        self._blocked_until = max(self._blocked_until, time.monotonic() + max(seconds, 0.0))

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                delay = self._delay(time.monotonic())
                if delay <= 0:
                    self._calls.append(time.monotonic())
                    return
                await asyncio.sleep(delay)

    def _delay(self, now: float) -> float:
        while self._calls and self._calls[0] <= now - self.period:
            self._calls.popleft()
        wait = self._blocked_until - now
        if len(self._calls) >= self.max_calls:
            wait = max(wait, self._calls[0] + self.period - now)
        return wait


# --- the shared provider base -----------------------------------------------------------


class HttpProvider(Provider):
    """Base for providers that talk HTTP through one pooled aiohttp session."""

    _session: aiohttp.ClientSession | None = None
    # The session's total timeout is the endpoint's request_timeout (see ``start``).
    enforces_timeout: ClassVar[bool] = True
    # A REST API serves many requests at once; its own 429s (and the queue) pace the rest.
    default_max_concurrent: ClassVar[int] = 128

    def __init__(self, spec: EndpointSpec, context: ProviderContext | None = None) -> None:
        super().__init__(spec, context)
        config: Any = spec.config
        if not isinstance(config, self.Config):
            config = self.validate_config(
                config.model_dump() if isinstance(config, BaseModel) else config
            )
        self.config: Any = config

    @cached_property
    def label(self) -> str:
        return f"{self.endpoint_type} endpoint {self.spec.name!r}"

    @cached_property
    def secrets(self) -> tuple[str, ...]:
        return secrets_of(self.spec)

    def default_headers(self) -> dict[str, str]:
        """Headers sent with every request (auth included); called once in ``start``."""
        return {}

    def require_credential(self, name: str) -> str:
        value = self.spec.credentials.get(name)
        if not value:
            raise AuthError(f"{self.label}: credential {name!r} is not set")
        return value

    async def start(self) -> None:
        if self._session is not None and not self._session.closed:
            return
        headers = self.default_headers()
        timeout = self.spec.request_timeout
        connector = aiohttp.TCPConnector(
            limit=max(1, self.spec.max_concurrent_requests) + 1,  # +1: health probes
            keepalive_timeout=30.0,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(10.0, timeout)),
            raise_for_status=False,
        )

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                await session.close()
            except Exception:  # noqa: BLE001 - stop must not raise
                pass

    @property
    def session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            raise Unavailable(f"{self.label} is not started")
        return session

    def boundary(self) -> Any:
        return error_boundary(self.label, self.secrets)

    async def request_json(
        self, method: str, url: str, body: Any = None, *, headers: Mapping[str, str] | None = None
    ) -> Any:
        """One JSON round trip; HTTP errors, transport failures and bad JSON mapped."""
        data = orjson.dumps(body) if body is not None else None
        with self.boundary():
            async with self.session.request(
                method, url, data=data, headers=headers or (JSON_HEADERS if data else None)
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise self.http_error(response.status, response.headers, raw)
        return loads(raw, self.label)

    async def raise_for_stream_status(self, response: aiohttp.ClientResponse) -> None:
        if response.status >= 400:
            raise self.http_error(response.status, response.headers, await response.read())

    def http_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> ProviderError:
        return error_for_status(status, headers, raw, label=self.label, secrets=self.secrets)

    async def probe(self, method: str, url: str, *, ok_below: int = 300) -> HealthResult:
        """A cheap request; healthy when the status is below ``ok_below``. Never raises."""
        started = time.perf_counter()
        timeout = aiohttp.ClientTimeout(total=min(PROBE_TIMEOUT, self.spec.request_timeout))
        try:
            with self.boundary():
                async with self.session.request(method, url, timeout=timeout) as response:
                    raw = await response.read()
                    if response.status >= ok_below:
                        raise self.http_error(response.status, response.headers, raw)
                    status = response.status
        except ProviderError as exc:
            return HealthResult(ok=False, detail=f"{exc.kind}: {exc.message}", kind=exc.kind)
        latency = (time.perf_counter() - started) * 1000.0
        return HealthResult(ok=True, detail=f"HTTP {status}", latency_ms=latency)
