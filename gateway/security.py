"""Pure ASGI guard in front of everything: Host, Origin, content type, body size, NUL, token.

In every mode:
- the Host header must name one of the allowed hosts (AIEM_ALLOWED_HOSTS; loopback names by
  default), which defeats DNS rebinding; health probes are exempt;
- a state-changing request (anything but GET/HEAD/OPTIONS, and WebSocket handshakes) that
  carries an Origin must come from the server's own origin, so a web page the operator visits
  cannot drive the API;
- a body sent to the API must be JSON (``application/json`` or ``+json``) when it says what it
  is, which rules out the "simple" cross-site requests that skip the browser's preflight;
- bodies over AIEM_MAX_BODY_BYTES get 413, with or without Content-Length;
- a NUL in the path or the query is refused (422) before any work is done.

With AIEM_ADMIN_TOKEN set, the API wants `Authorization: Bearer <token>` (or the console's
session cookie) and the console wants the session cookie, obtained at /login with the token
and dropped at /logout. Wrong tokens are throttled per client.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import parse_qs

import orjson

from gateway.signin import (
    ASK,
    COOKIE,
    SIGNED_OUT,
    WRONG,
    FailureThrottle,
    SessionSigner,
    cookie_header,
    cookie_value,
    login_page,
)

Scope = dict[str, Any]
Headers = dict[bytes, bytes]

API_PREFIXES = (
    "/endpoints",
    "/system",
    "/metrics",
    "/sessions",
    "/providers",
    "/v1",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/config",
    "/webhooks",
    "/metrics",
)
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
SIGNIN_PATHS = frozenset({"/login", "/logout"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_LOGIN_BODY_LIMIT = 10_000

__all__ = ["COOKIE", "Guard", "BodyTooLarge", "host_name"]


class BodyTooLarge(Exception):
    pass


def _json(status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None):
    payload = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    return status, headers + (extra or []), payload


def error_response(
    path: str,
    status: int,
    message: str,
    kind: str,
    extra: list[tuple[bytes, bytes]] | None = None,
):
    """The guard's refusals in the shape of the surface asked: OpenAI's on /v1, ours elsewhere."""
    body: dict[str, Any]
    if path.startswith("/v1/"):
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": kind}
        body = {"error": error}
    else:
        body = {"detail": message, "kind": kind}
        if status == 422:  # the one 422 shape
            body["errors"] = [{"loc": ["url"], "msg": message, "type": kind}]
    return _json(status, body, extra)


async def _send(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def host_name(host_header: str) -> str:
    """``example.com:8001`` -> ``example.com``; ``[::1]:8001`` -> ``::1``; lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def origin_netloc(origin: bytes) -> bytes | None:
    """``http://host:port`` -> ``host:port``; None for ``null`` or anything unparseable."""
    scheme, sep, rest = origin.partition(b"://")
    if not sep or scheme not in (b"http", b"https") or not rest:
        return None
    return rest.partition(b"/")[0].lower()


def is_json_type(content_type: bytes) -> bool:
    media = content_type.partition(b";")[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


class HostPolicy:
    """Which Host headers are ours. ``*`` allows any (for setups that check Host themselves)."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.any = "*" in allowed
        self.names = frozenset(host_name(h) for h in allowed if h and h != "*")
        self._seen: set[bytes] = set()  # raw header values already found good

    def allows(self, header: bytes | None) -> bool:
        if self.any:
            return True
        if header is None:
            return False
        if header in self._seen:
            return True
        ok = host_name(header.decode("latin-1")) in self.names
        if ok and len(self._seen) < 256:
            self._seen.add(header)
        return ok


class Guard:
    def __init__(
        self,
        app: Any,
        *,
        max_body: int,
        admin_token: str | None,
        allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS,
        session_ttl_s: float = 12 * 3600,
        fast_routes: dict[tuple[str, str], Any] | None = None,
        throttle: FailureThrottle | None = None,
        open_paths: frozenset[str] = HEALTH_PATHS,
    ) -> None:
        self.app = app
        self.open_paths = open_paths
        # (method, path) -> a bare ASGI app that skips the framework (the hot path).
        self.fast_routes = fast_routes or {}
        self.max_body = max_body
        self.hosts = HostPolicy(allowed_hosts)
        self.token = admin_token.encode() if admin_token else None
        self.signer = SessionSigner(self.token, ttl_s=session_ttl_s) if self.token else None
        self.throttle = throttle or FailureThrottle()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        headers: Headers = dict(scope["headers"])
        refusal = self._refusal(scope, path, headers)
        if refusal is not None:
            return await self._refuse(scope, send, refusal)
        if self.token is not None and path in SIGNIN_PATHS and scope["type"] == "http":
            return await self._signin(scope, receive, send, headers)
        if self.token is not None and path not in self.open_paths:
            denial = self._authenticate(scope, path, headers)
            if denial is not None:
                return await self._refuse(scope, send, denial)
        if scope["type"] == "http" and scope["method"] in BODY_METHODS:
            target = self.fast_routes.get((scope["method"], path), self.app)
            return await self._limited(target, scope, receive, send, headers)
        return await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Any, response: Any) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _send(send, *response)

    # ---- rules every request meets ---------------------------------------------------------

    def _refusal(self, scope: Scope, path: str, headers: Headers) -> Any:
        if "\x00" in path or b"%00" in scope.get("query_string", b""):
            return error_response(path, 422, "NUL characters are not allowed in the URL", "nul")
        if path in HEALTH_PATHS:
            return None
        host = headers.get(b"host")
        if not self.hosts.allows(host):
            shown = (host or b"(none)").decode("latin-1")[:100]
            return error_response(
                path,
                400,
                f"host {shown!r} is not an allowed host name; list it in AIEM_ALLOWED_HOSTS",
                "host_not_allowed",
            )
        method = scope.get("method", "GET")
        if scope["type"] == "websocket" or method not in SAFE_METHODS:
            origin = headers.get(b"origin")
            if origin is not None and origin_netloc(origin) != (host or b"").lower():
                return error_response(
                    path,
                    403,
                    "cross-origin request refused: Origin "
                    f"{origin.decode('latin-1')[:100]!r} is not this server",
                    "cross_origin",
                )
        if method in BODY_METHODS and path.startswith(API_PREFIXES):
            content_type = headers.get(b"content-type")
            if content_type is not None and not is_json_type(content_type):
                return error_response(
                    path,
                    415,
                    f"Content-Type must be application/json, not "
                    f"{content_type.decode('latin-1')[:100]!r}",
                    "unsupported_media_type",
                )
        return None

    # ---- body size -------------------------------------------------------------------------

    async def _limited(
        self, target: Any, scope: Scope, receive: Any, send: Any, headers: Headers
    ) -> None:
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_body:
                return await _send(send, *self._too_large(scope))
            # The server never passes more bytes than Content-Length announced.
            return await target(scope, receive, send)
        # A chunked body: read it whole (up to the limit) before anyone parses it, so an
        # oversized one is a plain 413 whichever route it was meant for.
        try:
            body = await read_limited(receive, self.max_body)
        except BodyTooLarge:
            return await _send(send, *self._too_large(scope))
        return await target(scope, replay(body, receive), send)

    def _too_large(self, scope: Scope):  # type: ignore[no-untyped-def]
        message = f"request body larger than {self.max_body} bytes"
        return error_response(scope["path"], 413, message, "body_too_large")

    # ---- the admin token -------------------------------------------------------------------

    def _client(self, scope: Scope) -> str:
        client = scope.get("client")
        return str(client[0]) if client else "unknown"

    def _authenticate(self, scope: Scope, path: str, headers: Headers) -> Any:
        """None when the request may pass; else the response refusing it."""
        client = self._client(scope)
        wait = self.throttle.retry_after(client)
        if wait is not None:
            return self._throttled(path, wait)
        verdict = self._credentials(headers)
        if verdict is True:
            return None
        if verdict is False:
            self.throttle.fail(client)
        if path.startswith(API_PREFIXES):
            return error_response(
                path,
                401,
                "missing or wrong admin token (Authorization: Bearer ...)",
                "unauthorized",
                [(b"www-authenticate", b"Bearer")],
            )
        return 303, [(b"location", b"/login"), (b"content-length", b"0")], b""

    def _throttled(self, path: str, wait: float) -> Any:
        seconds = max(1, round(wait))
        return error_response(
            path,
            429,
            f"too many wrong admin tokens from this client; try again in {seconds} s",
            "too_many_attempts",
            [(b"retry-after", str(seconds).encode())],
        )

    def _credentials(self, headers: Headers) -> bool | None:
        """True: a right token or session; False: a wrong one; None: none was presented."""
        assert self.token is not None and self.signer is not None
        presented = False
        auth = headers.get(b"authorization")
        if auth is not None and auth[:7].lower() == b"bearer ":
            presented = True
            if hmac.compare_digest(auth[7:].strip(), self.token):
                return True
        session = cookie_value(headers.get(b"cookie", b""))
        if session:
            presented = True
            if self.signer.valid(session):
                return True
        return False if presented else None

    # ---- sign-in and sign-out --------------------------------------------------------------

    async def _signin(self, scope: Scope, receive: Any, send: Any, headers: Headers) -> None:
        assert self.signer is not None
        secure = _is_https(scope, headers)
        if scope["path"] == "/logout":
            session = cookie_value(headers.get(b"cookie", b""))
            if session:
                self.signer.revoke(session)
            cleared = cookie_header(b"", max_age=0, secure=secure)
            location = (b"location", b"/login?signed_out=1")
            return await _send(
                send, 303, [location, (b"set-cookie", cleared), (b"content-length", b"0")], b""
            )
        if scope["method"] != "POST":
            signed_out = b"signed_out" in scope.get("query_string", b"")
            return await _send(send, *_page(200, SIGNED_OUT if signed_out else ASK))
        client = self._client(scope)
        wait = self.throttle.retry_after(client)
        if wait is not None:
            seconds = max(1, round(wait))
            message = f"Too many wrong tokens from this computer. Try again in {seconds} s."
            status, page_headers, page = _page(429, message, error=True)
            page_headers.append((b"retry-after", str(seconds).encode()))
            return await _send(send, status, page_headers, page)
        body = await _read_some(receive, _LOGIN_BODY_LIMIT)
        token = parse_qs(body.decode(errors="replace")).get("token", [""])[0].encode()
        if not hmac.compare_digest(token, self.token or b""):
            self.throttle.fail(client)
            return await _send(send, *_page(401, WRONG, error=True))
        cookie = cookie_header(self.signer.issue(), max_age=int(self.signer.ttl_s), secure=secure)
        response_headers = [(b"location", b"/"), (b"set-cookie", cookie), (b"content-length", b"0")]
        await _send(send, 303, response_headers, b"")


def _is_https(scope: Scope, headers: Headers) -> bool:
    forwarded = headers.get(b"x-forwarded-proto", b"").split(b",")[0].strip().lower()
    return scope.get("scheme") == "https" or forwarded == b"https"


def _page(status: int, message: str, *, error: bool = False):  # type: ignore[no-untyped-def]
    page = login_page(message, error=error)
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(page)).encode()),
        (b"cache-control", b"no-store"),
    ]
    return status, headers, page


async def read_limited(receive: Any, limit: int) -> bytes:
    """The whole request body; BodyTooLarge as soon as it passes ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        parts.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(parts)


async def _read_some(receive: Any, limit: int) -> bytes:
    try:
        return await read_limited(receive, limit)
    except BodyTooLarge:
        return b""


def replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands out ``body`` once, then defers to the server's own."""
    sent = False

    async def receive_again() -> Any:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again
