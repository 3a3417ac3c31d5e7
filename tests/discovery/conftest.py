"""Fixtures of the discovery tests: the fixture sites and the scripted LLM on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.discovery.llm_server import ScriptedLLM
from tests.discovery.site_server import DiscoverySites


@pytest.fixture(scope="session")
def discovery_sites() -> Iterator[DiscoverySites]:
    server = DiscoverySites().start()
    yield server
    server.stop()


@pytest.fixture
def scripted_llm() -> Iterator[ScriptedLLM]:
    server = ScriptedLLM().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def allow_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fixture sites are on loopback, which discovery refuses by default.
    monkeypatch.setenv("AIEM_DISCOVERY_ALLOW_PRIVATE", "true")
