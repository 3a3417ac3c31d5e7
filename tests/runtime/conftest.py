from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from runtime.core import Runtime, RuntimeOptions
from runtime.manager import ManagerOptions
from store.db import Store
from tests.fakes import ScriptedProvider, registry_with_scripted


@pytest.fixture(autouse=True)
def _reset_script() -> None:
    ScriptedProvider.reset()


@pytest.fixture
def store(database_url: str, data_dir: Path, secret_key: str):
    """A migrated store on each backend, without a runtime."""
    opened = Store.open(url=database_url, data_dir=data_dir, secret_key=secret_key)
    yield opened
    opened.dispose()


@pytest.fixture
async def make_runtime(database_url: str, data_dir: Path, secret_key: str):
    runtimes: list[Runtime] = []

    async def make(**manager: object) -> Runtime:
        options = RuntimeOptions(
            database_url=database_url,
            data_dir=data_dir,
            secret_key=secret_key,
            manager=ManagerOptions(**manager),  # type: ignore[arg-type]
        )
        rt = Runtime(options, registry=registry_with_scripted())
        await rt.start()
        runtimes.append(rt)
        return rt

    yield make
    for rt in runtimes:
        if rt.started:
            await rt.stop()


@pytest.fixture
async def rt(make_runtime: Callable) -> AsyncIterator[Runtime]:
    yield await make_runtime()
