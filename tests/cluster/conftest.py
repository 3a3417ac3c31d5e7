from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from store.db import Store
from tests.conftest import _postgres_database
from tests.fixtures.upstreams import openai_upstream  # noqa: F401


@pytest.fixture
def shared_pg() -> Iterator[str]:
    """A fresh PostgreSQL database for several instances to share."""
    yield from _postgres_database()


@pytest.fixture
def pair(gateway_factory, shared_pg, tmp_path):
    """Two instances (`aiem serve`) on one PostgreSQL database."""
    env = {"DATABASE_URL": shared_pg}
    a = gateway_factory(env=env, data_dir=tmp_path / "a")
    b = gateway_factory(env=env, data_dir=tmp_path / "b")
    return a, b


@pytest.fixture
def cluster_factory(gateway_factory, shared_pg, tmp_path, secret_key) -> Callable[..., list]:
    """``make(count, env=None)``: that many instances on one PostgreSQL database, started
    together (the database is migrated here first, so they do not race to create it)."""

    def make(count: int, env: dict[str, str] | None = None) -> list:
        Store.open(url=shared_pg, data_dir=tmp_path / "migrate", secret_key=secret_key).dispose()
        shared_env = {"DATABASE_URL": shared_pg, **(env or {})}
        gws = [
            gateway_factory(env=shared_env, data_dir=tmp_path / f"i{n}", start=False)
            for n in range(count)
        ]
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda gw: gw.start(), gws))
        return gws

    return make
