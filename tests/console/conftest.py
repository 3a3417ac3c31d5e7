"""Fixtures for the console tests: the real gateway process, the fixture OpenAI-compatible
upstream (tests/fixtures/upstreams.py) and Streamlit's AppTest.

Starting a gateway takes seconds, so the API-only tests share one per package; every test
makes its own uniquely named endpoints and asserts only about those.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from console.client import ApiClient
from tests.fixtures.upstreams import OpenAIUpstream
from tests.gateway_proc import GatewayProcess, running_gateway

CONSOLE_APP = Path(__file__).resolve().parents[2] / "console" / "app.py"
APP_TEST_TIMEOUT_S = 30


@pytest.fixture
def run_console() -> Callable[[], AppTest]:
    """Run the console entry script (it routes to the Portfolio page) once."""

    def run() -> AppTest:
        return AppTest.from_file(str(CONSOLE_APP), default_timeout=APP_TEST_TIMEOUT_S).run()

    return run


@pytest.fixture
def send_chat(api: httpx.Client) -> Callable[[str], None]:
    """One real request through the gateway to the upstream, so the metrics move."""

    def send(endpoint_id: str) -> None:
        response = api.post(f"/endpoints/{endpoint_id}/chat", json={"prompt": "hello"})
        response.raise_for_status()

    return send


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL where nothing listens (the port was just free)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="package")
def shared_upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream() as server:
        yield server


@pytest.fixture(scope="package")
def shared_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """`aiem serve --no-console` shared by the API-only console tests."""
    with running_gateway(tmp_path_factory.mktemp("console-gateway")) as proc:
        yield proc


@pytest.fixture
def api(shared_gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_gateway.url, timeout=30) as client:
        yield client


@pytest.fixture
def api_client(shared_gateway: GatewayProcess) -> Iterator[ApiClient]:
    client = ApiClient(shared_gateway.url)
    yield client
    client.close()


@pytest.fixture
def console_env(monkeypatch: pytest.MonkeyPatch, shared_gateway: GatewayProcess) -> None:
    """Point the console (run in this process by AppTest) at the shared test gateway."""
    monkeypatch.setenv("AIEM_API_URL", shared_gateway.url)
    monkeypatch.delenv("AIEM_ADMIN_TOKEN", raising=False)


def endpoint_factory(api: httpx.Client, upstream_url: str) -> Callable[..., dict[str, Any]]:
    """Registers stopped `openai_api` endpoints that talk to the fixture upstream."""

    def make(*, display_name: str = "", api_key: str = "sk-fixture", **extra: Any) -> dict:
        spec = {
            "name": f"console-{uuid.uuid4().hex[:8]}",
            "display_name": display_name,
            "endpoint_type": "openai_api",
            "url": upstream_url,
            "model_name": "fixture-model",
            "credentials": {"api_key": api_key},
            **extra,
        }
        response = api.post("/endpoints", json=spec)
        assert response.status_code == 201, response.text
        return response.json()

    return make


@pytest.fixture
def make_endpoint(
    api: httpx.Client, shared_upstream: OpenAIUpstream
) -> Callable[..., dict[str, Any]]:
    return endpoint_factory(api, shared_upstream.url)


@pytest.fixture
def console_api(gateway_with_console) -> Iterator[httpx.Client]:
    """A client of the API served by `aiem up` (the one that also serves the console)."""
    with httpx.Client(base_url=gateway_with_console.url, timeout=30) as client:
        yield client


@pytest.fixture
def make_console_endpoint(
    console_api: httpx.Client, shared_upstream: OpenAIUpstream
) -> Callable[..., dict[str, Any]]:
    return endpoint_factory(console_api, shared_upstream.url)
