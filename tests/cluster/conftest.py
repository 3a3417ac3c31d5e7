from __future__ import annotations

from collections.abc import Iterator

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
