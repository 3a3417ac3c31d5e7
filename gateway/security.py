"""Pure ASGI guard in front of everything: body size limit and the admin token.

With AIEM_ADMIN_TOKEN set, the API wants `Authorization: Bearer <token>` (or the console's
login cookie) and the console wants the login cookie, obtained at /login with the token.
Health probes stay open for load balancers.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from typing import Any
from urllib.parse import parse_qs

import orjson

Scope = dict[str, Any]

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
)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/login"})
COOKIE = "aiem_console"


class BodyTooLarge(Exception):
    pass


def _json(status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None):
    payload = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    return status, headers + (extra or []), payload


async def _send(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


LOGIN_PAGE = """<!doctype html><html><head><title>AI Endpoint Manager - sign in</title></head>
<body style="font-family:sans-serif;max-width:24rem;margin:4rem auto">
<h2>AI Endpoint Manager</h2><p>{message}</p>
<form method="post" action="/login"><label>Admin token<br>
<input type="password" name="token" autofocus style="width:100%"></label><br><br>
<button type="submit">Sign in</button></form></body></html>"""


class Guard:
    def __init__(
        self,
        app: Any,
        *,
        max_body: int,
        admin_token: str | None,
        fast_routes: dict[tuple[str, str], Any] | None = None,
    ) -> None:
        self.app = app
        # (method, path) -> a bare ASGI app that skips the framework (the hot path).
        self.fast_routes = fast_routes or {}
        self.max_body = max_body
        self.token = admin_token.encode() if admin_token else None
        self.cookie_value = (
            hmac.new(self.token, b"aiem-console", hashlib.sha256).hexdigest().encode()
            if self.token
            else None
        )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        if self.token is not None and path not in OPEN_PATHS and not self._allowed(scope, path):
            return await self._deny(scope, receive, send, path)
        if self.token is not None and path == "/login" and scope["type"] == "http":
            return await self._login(scope, receive, send)
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            target = self.fast_routes.get((scope["method"], path), self.app)
            return await self._limited(target, scope, receive, send)
        return await self.app(scope, receive, send)

    # ---- body size -------------------------------------------------------------------------

    async def _limited(self, target: Any, scope: Scope, receive: Any, send: Any) -> None:
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_body:
                return await _send(send, *self._too_large(scope))
            # The server never passes more bytes than Content-Length announced.
            return await target(scope, receive, send)
        received = 0
        started = False

        async def counting_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await target(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send(send, *self._too_large(scope))

    def _too_large(self, scope: Scope):  # type: ignore[no-untyped-def]
        message = f"request body larger than {self.max_body} bytes"
        if scope["path"].startswith("/v1/"):
            return _json(
                413,
                {
                    "error": {
                        "message": message,
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "body_too_large",
                    }
                },
            )
        return _json(413, {"detail": message, "kind": "body_too_large"})

    # ---- the admin token -------------------------------------------------------------------

    def _allowed(self, scope: Scope, path: str) -> bool:
        auth = _header(scope, b"authorization")
        if auth is not None and auth.lower().startswith(b"bearer "):
            assert self.token is not None
            if hmac.compare_digest(auth[7:].strip(), self.token):
                return True
        cookie = _header(scope, b"cookie") or b""
        for part in cookie.split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == COOKIE.encode() and self.cookie_value is not None:
                if hmac.compare_digest(value, self.cookie_value):
                    return True
        return False

    async def _deny(self, scope: Scope, receive: Any, send: Any, path: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if path.startswith(API_PREFIXES):
            status, headers, body = _json(
                401,
                {"detail": "missing or wrong admin token (Authorization: Bearer ...)"},
                [(b"www-authenticate", b"Bearer")],
            )
            return await _send(send, status, headers, body)
        await _send(send, 303, [(b"location", b"/login"), (b"content-length", b"0")], b"")

    async def _login(self, scope: Scope, receive: Any, send: Any) -> None:
        message = "Sign in with the admin token."
        if scope["method"] == "POST":
            body = b""
            while True:
                chunk = await receive()
                body += chunk.get("body", b"")
                if not chunk.get("more_body") or len(body) > 10_000:
                    break
            token = parse_qs(body.decode(errors="replace")).get("token", [""])[0].encode()
            assert self.token is not None and self.cookie_value is not None
            if hmac.compare_digest(token, self.token):
                cookie = (
                    COOKIE.encode()
                    + b"="
                    + self.cookie_value
                    + b"; HttpOnly; SameSite=Strict; Path=/"
                )
                headers = [(b"location", b"/"), (b"set-cookie", cookie), (b"content-length", b"0")]
                return await _send(send, 303, headers, b"")
            message = "Wrong token."
        page = LOGIN_PAGE.format(message=html.escape(message)).encode()
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(page)).encode()),
        ]
        await _send(send, 401 if scope["method"] == "POST" else 200, headers, page)
