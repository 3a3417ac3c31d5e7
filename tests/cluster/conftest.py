from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

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
def cluster_factory(gateway_factory, shared_pg, tmp_path) -> Callable[..., list]:
    """``make(count, env=None)``: that many instances on one PostgreSQL database. The first
    starts alone (it migrates the empty database), the others together."""

    def make(count: int, env: dict[str, str] | None = None) -> list:
        shared_env = {"DATABASE_URL": shared_pg, **(env or {})}
        first = gateway_factory(env=shared_env, data_dir=tmp_path / "i0")
        rest = [
            gateway_factory(env=shared_env, data_dir=tmp_path / f"i{n}", start=False)
            for n in range(1, count)
        ]
        with ThreadPoolExecutor(len(rest) or 1) as pool:
            list(pool.map(lambda gw: gw.start(), rest))
        return [first, *rest]

    return make


@pytest.fixture
def triple(cluster_factory):
    """Three instances (`aiem serve`) on one PostgreSQL database."""
    return cluster_factory(3)
