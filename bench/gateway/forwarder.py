"""The calibration forwarder: the thinnest Starlette app that proxies chat completions.

It forwards ``POST /v1/chat/completions`` to the mock upstream through one shared aiohttp
``ClientSession`` and copies the answer back (streamed when the upstream streams), without
parsing JSON. Served by uvicorn with uvloop and httptools in one worker, it is the floor of
what a Python proxy costs on this machine, the yardstick the gateway's throughput is held to.

Run: ``BENCH_UPSTREAM_URL=http://127.0.0.1:9100/v1 python -m uvicorn forwarder:create_app
--factory --app-dir bench/gateway --loop uvloop --http httptools --port 9200``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

UPSTREAM_ENV = "BENCH_UPSTREAM_URL"


async def _relay(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for piece in upstream.content.iter_any():
            yield piece
    finally:
        upstream.release()


async def chat_completions(request: Request) -> Response:
    session: aiohttp.ClientSession = request.app.state.session
    upstream = await session.post(
        request.app.state.completions_url,
        data=await request.body(),
        headers={"Content-Type": "application/json"},
    )
    if upstream.content_type == "text/event-stream":
        return StreamingResponse(
            _relay(upstream), status_code=upstream.status, media_type="text/event-stream"
        )
    body = await upstream.read()
    upstream.release()
    return Response(body, status_code=upstream.status, media_type="application/json")


def create_app(upstream_url: str | None = None) -> Starlette:
    base_url = (upstream_url or os.environ[UPSTREAM_ENV]).rstrip("/")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # limit=0: no connector cap, so the forwarder never queues in front of the upstream.
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            app.state.session = session
            yield

    app = Starlette(
        routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])],
        lifespan=lifespan,
    )
    app.state.completions_url = f"{base_url}/chat/completions"
    return app
