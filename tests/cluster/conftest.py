from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import _postgres_database
from tests.fixtures.upstreams import openai_upstream  # noqa: F401


@pytest.fixture
def shared_pg() -> Iterator[str]:
    """A fresh PostgreSQL database for several instances to share."""
    yield from _postgres_database()
