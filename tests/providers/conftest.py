"""Fixtures for provider tests: the fake upstream servers and a provider factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from providers.base import EndpointSpec, Provider
from tests.fixtures.upstreams import (  # noqa: F401 - fixtures used by name
    anthropic_upstream,
    codegen_upstream,
    openai_upstream,
    rest_upstream,
)


@pytest.fixture
async def make_provider() -> AsyncIterator[Any]:
    """``await make_provider(Cls, url, config=..., credentials=..., timeout=...)``: a started
    provider, stopped after the test."""
    started: list[Provider] = []

    async def make(
        cls: type[Provider],
        url: str,
        *,
        config: dict[str, Any] | None = None,
        credentials: dict[str, str] | None = None,
        timeout: float = 5.0,
        model: str = "fixture-model",
        max_concurrent: int = 4,
        start: bool = True,
    ) -> Any:
        spec = EndpointSpec(
            name="test-endpoint",
            url=url,
            model_name=model,
            config=cls.validate_config(config),
            credentials=dict(credentials or {}),
            request_timeout=timeout,
            max_concurrent_requests=max_concurrent,
        )
        provider = cls(spec)
        started.append(provider)
        if start:
            await provider.start()
        return provider

    yield make
    for provider in started:
        await provider.stop()
