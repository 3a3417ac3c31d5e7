"""Fixtures of the discovery tests: the fixture sites and the scripted LLM on 127.0.0.1."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.discovery.llm_server import ScriptedLLM
from tests.discovery.site_server import DiscoverySites
from tests.gateway_proc import GatewayProcess


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


@pytest.fixture(scope="package")
def discovery_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """`aiem serve --no-console` allowed to discover loopback sites, shared by the API tests."""
    env = {
        "AIEM_DISCOVERY_ALLOW_PRIVATE": "true",
        "AIEM_BROWSER_EXECUTABLE": os.environ.get("AIEM_BROWSER_EXECUTABLE", "/usr/bin/chromium"),
    }
    proc = GatewayProcess(
        tmp_path_factory.mktemp("discovery-gateway"),
        secret_key=Fernet.generate_key().decode(),
        env=env,
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def api(discovery_gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=discovery_gateway.url, timeout=30) as client:
        yield client


def wait_done(api: httpx.Client, draft_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = api.get(f"/discovery/{draft_id}").json()
        if doc["status"] in ("ready", "failed", "approved"):
            return doc
        time.sleep(0.5)
    raise AssertionError(f"discovery {draft_id} did not finish: {doc}")
