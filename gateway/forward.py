"""Chats for a browser endpoint another instance owns, forwarded to that instance.

In a cluster a web chat endpoint runs on one instance, the holder of its lease (a browser
logged into one account is driven from one place). A chat for it that reaches another
instance (a load balancer sends anything anywhere) is sent on to the owner's advertised URL
with the caller's body and the headers that matter (credentials, the session, what the caller
accepts), and the owner's answer is relayed back: an SSE stream chunk by chunk as the owner
writes it, a JSON answer as the one body it is.

- One pooled aiohttp session per process, opened on first use; nothing of this runs for an
  endpoint that is live here (only the "not running here" branch gets here).
- Loop guard: a forwarded request carries ``X-Aiem-Forwarded`` (the forwarding instance's
  id). An instance never forwards such a request again: it serves it or says why not (409).
- The owner unreachable: 503 with Retry-After within ``CONNECT_TIMEOUT_S``, never a hang. The
  owner lost mid-stream: the stream ends with an error event, never a silent truncation.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from gateway.errors import error_body, management_error, openai_error, sse_error_payload
from gateway.openai_compat import _Client
from runtime.errors import Conflict, EndpointUnavailable, OwnedElsewhere

log = logging.getLogger("aiem.forward")

FORWARDED_HEADER = "x-aiem-forwarded"
OWNER_HEADER = "x-aiem-owner"
# The caller's headers the owner needs: credentials (bearer or console cookie), the session,
# the format asked for, and the request id that ties both instances' logs together.
REQUEST_HEADERS = frozenset(
    {b"authorization", b"cookie", b"x-session-id", b"accept", b"content-type", b"x-request-id"}
)
RESPONSE_HEADERS = frozenset(
    {
        "content-type", "cache-control", "x-accel-buffering", "retry-after", "x-aiem-endpoint",
        "x-session-id", "x-request-id",
    }
)  # fmt: skip
CONNECT_TIMEOUT_S = 3.0
# The owner applies the endpoint's own request timeout; this much more before giving up on it.
READ_MARGIN_S = 15.0
UNREACHABLE_RETRY_S = 5.0


def install(app: FastAPI, forwarder: Forwarder) -> None:
    """Forward the framework's routes (``/endpoints/{id}/chat`` and ``/restart``,
    ``/v1/responses``): they raise OwnedElsewhere for a browser endpoint another instance runs."""

    async def on_owned_elsewhere(request: Request, exc: Exception) -> Any:
        assert isinstance(exc, OwnedElsewhere)
        body = await request.body()  # read (and kept) by the route before it raised
        openai = request.url.path.startswith("/v1/")
        return await forwarder.respond(exc, request.scope, body, openai=openai)

    app.add_exception_handler(OwnedElsewhere, on_owned_elsewhere)


class Forwarder:
    """Sends requests on to the instance that owns their endpoint; one per process."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                # Bytes pass through as sent: no decompression, no compression asked for (the
                # owner answers identity), no content type the caller did not give, no banner.
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def respond(self, owner: OwnedElsewhere, scope: Any, body: bytes, *, openai: bool) -> Any:
        """The ASGI response to a request for ``owner``'s endpoint: the owner's own answer, or
        an error saying why it cannot be had (already forwarded, owner unreachable)."""
        errors = _Errors(openai)
        headers = [(k, v) for k, v in scope["headers"] if k in REQUEST_HEADERS]
        came_from = _header(scope, FORWARDED_HEADER.encode())
        if came_from is not None:
            return errors.response(
                Conflict(
                    f"{owner}; this request was already forwarded here by instance "
                    f"{came_from} and is not forwarded again (ownership is changing hands: "
                    "retry shortly)"
                )
            )
        url = owner.owner_url + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        sent = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
        sent[FORWARDED_HEADER] = self.instance_id
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=CONNECT_TIMEOUT_S,
            sock_read=owner.timeout_s + READ_MARGIN_S,
        )
        try:
            upstream = await self._client().post(
                url, data=body, headers=sent, timeout=timeout, allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return errors.response(_unreachable(owner, exc))
        relayed = _relayed_headers(upstream, owner.owner)
        if upstream.content_type != "text/event-stream":
            return await _whole(upstream, relayed, owner, errors)
        return Relay(upstream, relayed, owner, errors)


async def _whole(
    upstream: aiohttp.ClientResponse,
    headers: list[tuple[bytes, bytes]],
    owner: OwnedElsewhere,
    errors: _Errors,
) -> Any:
    """A JSON answer comes in one piece when the turn is done: read it whole, so an owner lost
    on the way is a clean 503 rather than a truncated body under a 200."""
    try:
        data = await upstream.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return errors.response(_lost(owner, exc))
    finally:
        upstream.release()
    response = Response(data, upstream.status)
    response.raw_headers = [*headers, (b"content-length", str(len(data)).encode())]
    return response


class Relay:
    """The owner's event stream relayed as a bare ASGI response, chunk by chunk."""

    __slots__ = ("upstream", "headers", "owner", "errors")

    def __init__(
        self,
        upstream: aiohttp.ClientResponse,
        headers: list[tuple[bytes, bytes]],
        owner: OwnedElsewhere,
        errors: _Errors,
    ) -> None:
        self.upstream = upstream
        self.headers = headers
        self.owner = owner
        self.errors = errors

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        upstream = self.upstream
        try:
            await send(
                {"type": "http.response.start", "status": upstream.status, "headers": self.headers}
            )
            client = _Client(send)
            try:
                async for data in upstream.content.iter_any():
                    if not await client.send(data):
                        return  # the caller left: closing the upstream ends the owner's turn
            except (aiohttp.ClientError, TimeoutError) as exc:
                await client.send(self.errors.event(_lost(self.owner, exc)), True)
                return
            upstream.release()  # read to the end: the connection goes back to the pool
            await client.send(b"", True)
        finally:
            if not upstream.closed:
                upstream.close()


class _Errors:
    """Errors in the shape of the route that was forwarded: OpenAI's on /v1, ours elsewhere."""

    __slots__ = ("openai",)

    def __init__(self, openai: bool) -> None:
        self.openai = openai

    def response(self, exc: Exception) -> Response:
        return openai_error(exc) if self.openai else management_error(exc)

    def event(self, exc: Exception) -> bytes:
        if self.openai:
            return b"data: " + orjson.dumps(sse_error_payload(exc)) + b"\n\n"
        return b"event: error\ndata: " + orjson.dumps(error_body(exc)) + b"\n\n"


def _header(scope: Any, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _relayed_headers(upstream: aiohttp.ClientResponse, owner_id: str) -> list[tuple[bytes, bytes]]:
    headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in upstream.headers.items()
        if k.lower() in RESPONSE_HEADERS
    ]
    headers.append((OWNER_HEADER.encode(), owner_id.encode()))
    return headers


def _unreachable(owner: OwnedElsewhere, exc: BaseException) -> EndpointUnavailable:
    log.warning("cannot reach instance %s at %s: %r", owner.owner, owner.owner_url, exc)
    return EndpointUnavailable(
        f"endpoint {owner.endpoint!r} runs on instance {owner.owner} ({owner.owner_url}), "
        f"which cannot be reached ({_reason(exc)}); retry shortly: if it is gone, another "
        "instance takes the endpoint over",
        retry_after=UNREACHABLE_RETRY_S,
    )


def _lost(owner: OwnedElsewhere, exc: BaseException) -> EndpointUnavailable:
    log.warning("instance %s stopped answering mid-response: %r", owner.owner, exc)
    return EndpointUnavailable(
        f"the instance that runs endpoint {owner.endpoint!r} ({owner.owner_url}) stopped "
        f"answering mid-response ({_reason(exc)})",
        retry_after=UNREACHABLE_RETRY_S,
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {exc.os_error.strerror or type(exc.os_error).__name__}"
    return type(exc).__name__
