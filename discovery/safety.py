"""What discovery may load: http(s) only, public addresses only, the page's own origin.

Private, loopback and link-local addresses are refused unless allowed
(``AIEM_DISCOVERY_ALLOW_PRIVATE=true``; the tests serve their sites on loopback). The check
runs on the URL given, again on the URL the page ends at after redirects, and on every
request the page makes (through a route on the browser context), so a public page cannot
make the browser reach into the operator's network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from discovery.errors import Unreachable, UnsafeUrl

ALLOW_PRIVATE_ENV = "AIEM_DISCOVERY_ALLOW_PRIVATE"
RESOLVE_TIMEOUT_S = 5.0

Resolver = Callable[[str], Awaitable[list[str]]]


def allow_private_from_env() -> bool:
    return os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_scheme(url: str) -> str:
    """The URL, stripped, when it is an absolute http(s) URL with a host; else UnsafeUrl."""
    url = (url or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl(f"only http and https URLs can be discovered, not {parts.scheme or url!r}")
    if not parts.hostname:
        raise UnsafeUrl("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeUrl("credentials in the URL are not accepted; pass them as credentials")
    return url


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def same_origin(url: str, origin: str) -> bool:
    return origin_of(url) == origin


def is_private_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return True  # not an address we can judge: refuse
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(
        (
            ip.is_private,
            ip.is_loopback,
            ip.is_link_local,
            ip.is_reserved,
            ip.is_multicast,
            ip.is_unspecified,
        )
    )


async def resolve(host: str) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        raise Unreachable(f"unreachable: the host {host!r} does not resolve") from None
    return sorted({str(info[4][0]) for info in infos})


class AddressPolicy:
    """Decides per host whether the browser may talk to it; answers are cached per host."""

    def __init__(self, *, allow_private: bool, resolver: Resolver = resolve) -> None:
        self.allow_private = allow_private
        self._resolver = resolver
        self._verdicts: dict[str, bool] = {}

    async def check_url(self, url: str) -> str:
        """The URL when it may be loaded; UnsafeUrl or Unreachable otherwise."""
        url = check_scheme(url)
        host = urlsplit(url).hostname or ""
        if not await self.host_allowed(host):
            raise UnsafeUrl(
                f"the host {host!r} is a private, loopback or link-local address "
                f"(set {ALLOW_PRIVATE_ENV}=true to allow)"
            )
        return url

    async def host_allowed(self, host: str) -> bool:
        if self.allow_private:
            return True
        host = host.strip("[]").lower()
        if host not in self._verdicts:
            addresses = await self._addresses(host)
            self._verdicts[host] = bool(addresses) and not any(
                is_private_address(a) for a in addresses
            )
        return self._verdicts[host]

    async def _addresses(self, host: str) -> list[str]:
        try:
            ipaddress.ip_address(host.split("%")[0])
            return [host]
        except ValueError:
            pass
        if host in ("localhost",) or host.endswith(".localhost"):
            return ["127.0.0.1"]
        return await self._resolver(host)

    async def route(self, route: Any) -> None:
        """Playwright route handler: the page's own requests to refused hosts are aborted."""
        url = route.request.url
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https", "ws", "wss"):
            await route.continue_()
            return
        try:
            allowed = await self.host_allowed(urlsplit(url).hostname or "")
        except Unreachable:
            allowed = False
        if allowed:
            await route.continue_()
        else:
            await route.abort("blockedbyclient")
