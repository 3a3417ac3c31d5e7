"""The HTTP server: uvicorn, with a lame-duck phase before its graceful shutdown.

uvicorn's shutdown closes idle keep-alive connections at once. A proxy in front (nginx) may be
sending a request on one of them at that very moment; for a POST it cannot tell whether the
instance saw the request, so it answers its client 502 rather than send it to another
instance. So on SIGTERM the instance stops listening at once (a proxy's new connections are
refused, which it safely retries elsewhere), and for up to ``AIEM_DRAIN_GRACE`` seconds keeps
answering on the connections it has, every response saying ``Connection: close`` (the proxy
lets go of each after its next request; /readyz says "draining"); it moves on as soon as no
idle connection is left. Then uvicorn's shutdown: finish the requests in flight within
``AIEM_DRAIN_TIMEOUT``, close what is left, stop the runtime.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("aiem.server")

CLOSE_HEADER = (b"connection", b"close")
LAME_DUCK_POLL_S = 0.05


def idle_connections(connections: Iterable[Any]) -> int:
    """HTTP connections open between requests (WebSockets, the console's, are not counted)."""
    return sum(
        1
        for c in connections
        if isinstance(c, HttpToolsProtocol) and (c.cycle is None or c.cycle.response_complete)
    )


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, *, grace_s: float, on_drain: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self.on_drain = on_drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.grace_s > 0 and not self.force_exit:
            await self.lame_duck()
        await super().shutdown(sockets)

    async def lame_duck(self) -> None:
        self.on_drain()
        # New connections are refused from now on: a proxy retries those elsewhere, safely.
        for server in self.servers:
            server.close()
        state = self.server_state
        # Headers uvicorn adds to every response (refreshed by the main loop, which has ended).
        state.default_headers = [*state.default_headers, CLOSE_HEADER]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_s
        idle = idle_connections(state.connections)
        if idle:
            log.info("draining: %d idle connection(s) close after their next request", idle)
        while idle and loop.time() < deadline and not self.force_exit:
            await asyncio.sleep(LAME_DUCK_POLL_S)
            idle = idle_connections(state.connections)
