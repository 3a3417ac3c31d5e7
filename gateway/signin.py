"""The console's sign-in: signed, expiring session cookies, a per-client throttle, the page.

A session cookie is ``<expires>.<nonce>.<signature>``: the signature is an HMAC (keyed from the
admin token) over the expiry and a random nonce, so it proves the holder signed in with the
token, ends by itself, and never contains the token. Logging out revokes the nonce here and
clears the cookie; changing the token invalidates every cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
import time
from collections import deque
from collections.abc import Callable

COOKIE = "aiem_console"
MAX_TRACKED_CLIENTS = 10_000


class SessionSigner:
    def __init__(
        self, token: bytes, *, ttl_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = hmac.new(token, b"aiem-console-session", hashlib.sha256).digest()
        self.ttl_s = ttl_s
        self._clock = clock
        # Revoked nonces until their cookie would have expired anyway.
        self._revoked: dict[bytes, float] = {}

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest().encode()

    def issue(self) -> bytes:
        expires = int(self._clock() + self.ttl_s)
        payload = b"%d.%s" % (expires, secrets.token_hex(16).encode())
        return payload + b"." + self._sign(payload)

    def valid(self, value: bytes) -> bool:
        payload, _, signature = value.rpartition(b".")
        expires, _, nonce = payload.partition(b".")
        if not (expires.isdigit() and nonce and signature):
            return False
        if not hmac.compare_digest(signature, self._sign(payload)):
            return False
        return int(expires) > self._clock() and nonce not in self._revoked

    def revoke(self, value: bytes) -> None:
        if not self.valid(value):
            return
        expires, nonce = value.split(b".")[:2]
        now = self._clock()
        self._revoked = {n: e for n, e in self._revoked.items() if e > now}
        self._revoked[nonce] = float(expires)


class FailureThrottle:
    """At most ``limit`` wrong tokens per client in any ``window_s`` seconds.

    While a client is over the limit every attempt it makes is refused unchecked, so guessing
    runs at ``limit`` tries per window whatever the request rate.
    """

    def __init__(
        self,
        *,
        limit: int = 10,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may try now."""
        failures = self._failures.get(client)
        if failures is None:
            return None
        now = self._clock()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        if len(failures) < self.limit:
            return None
        return failures[0] + self.window_s - now

    def fail(self, client: str) -> None:
        if len(self._failures) >= MAX_TRACKED_CLIENTS and client not in self._failures:
            self._failures.clear()  # a flood of addresses: start over rather than grow
        self._failures.setdefault(client, deque()).append(self._clock())


def cookie_header(value: bytes, *, max_age: int, secure: bool) -> bytes:
    attributes = b"; HttpOnly; SameSite=Strict; Path=/; Max-Age=%d" % max_age
    return COOKIE.encode() + b"=" + value + attributes + (b"; Secure" if secure else b"")


def cookie_value(cookie_header_value: bytes) -> bytes | None:
    name = COOKIE.encode()
    for part in cookie_header_value.split(b";"):
        key, _, value = part.strip().partition(b"=")
        if key == name:
            return value
    return None


# The console's theme (.streamlit/config.toml): same colours and font, so signing in does not
# look like a different product.
LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>AI Endpoint Manager - sign in</title>
<style>
body {{ margin: 0; font-family: "Source Sans Pro", sans-serif; color: #1f2937;
  background: #f3f5f9; }}
main {{ max-width: 24rem; margin: 12vh auto; background: #ffffff; border-radius: .75rem;
  padding: 2rem; box-shadow: 0 1px 3px rgba(31, 41, 55, .12); }}
h1 {{ font-size: 1.4rem; margin: 0 0 1rem; }}
label {{ display: block; font-size: .9rem; margin-bottom: .35rem; }}
input {{ width: 100%; box-sizing: border-box; padding: .55rem .7rem; font-size: 1rem;
  border: 1px solid #d1d5db; border-radius: .5rem; }}
input:focus {{ outline: 2px solid #2563eb; border-color: #2563eb; }}
button {{ margin-top: 1rem; width: 100%; padding: .6rem; font-size: 1rem; color: #ffffff;
  background: #2563eb; border: 0; border-radius: .5rem; cursor: pointer; }}
.note {{ padding: .6rem .8rem; border-radius: .5rem; margin-bottom: 1rem; font-size: .95rem; }}
.info {{ background: #eff6ff; color: #1e40af; }}
.error {{ background: #fef2f2; color: #991b1b; }}
</style></head>
<body><main><h1>AI Endpoint Manager</h1>
<p class="note {kind}" role="{role}">{message}</p>
<form method="post" action="/login"><label for="token">Admin token</label>
<input id="token" type="password" name="token" autocomplete="current-password" autofocus>
<button type="submit">Sign in</button></form></main></body></html>"""

SIGNED_OUT = "Signed out. Sign in again with the admin token."
ASK = "Sign in with the admin token (AIEM_ADMIN_TOKEN)."
WRONG = "Wrong admin token. Check AIEM_ADMIN_TOKEN and try again."


def login_page(message: str, *, error: bool = False) -> bytes:
    return LOGIN_PAGE.format(
        message=html.escape(message),
        kind="error" if error else "info",
        role="alert" if error else "status",
    ).encode()
