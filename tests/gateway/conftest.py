from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app, runtime_options
from gateway.settings import Settings
from runtime.core import Runtime
from tests.fixtures.rich_upstreams import rich_anthropic, rich_openai, rich_rest  # noqa: F401
from tests.fixtures.upstreams import openai_upstream, rest_upstream  # noqa: F401


@pytest.fixture
async def make_api(
    database_url: str, data_dir: Path, secret_key: str
) -> AsyncIterator[Callable[..., Any]]:
    """The whole API in this process (httpx's ASGITransport), on each store.

    ``make_api(**settings)`` returns ``(client, runtime)``; the runtime is started here because
    ASGITransport does not run the lifespan.
    """
    opened: list[tuple[httpx.AsyncClient, Runtime]] = []

    async def make(**env: Any) -> tuple[httpx.AsyncClient, Runtime]:
        values = {
            "AIEM_DATA_DIR": str(data_dir),
            "AIEM_SECRET_KEY": secret_key,
            "DATABASE_URL": database_url,
            "AIEM_CONFIG_FILE": str(data_dir / "endpoints.json"),
            **env,
        }
        settings = Settings(**values)  # type: ignore[arg-type]
        rt = Runtime(runtime_options(settings))
        await rt.start()
        app = create_app(settings, console=False, runtime=rt)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", timeout=30
        )
        opened.append((client, rt))
        return client, rt

    yield make
    for client, rt in opened:
        await client.aclose()
        if rt.started:
            await rt.stop()


@pytest.fixture
async def api(make_api: Callable[..., Any]) -> httpx.AsyncClient:
    client, _ = await make_api()
    return client  # type: ignore[no-any-return]
