"""What all four REST providers promise: registration, documented config, no leaked secrets."""

from __future__ import annotations

from typing import Any

import pytest

from providers.anthropic_api import AnthropicProvider
from providers.base import Provider
from providers.codegen_api import CodegenProvider
from providers.errors import ProviderError
from providers.openai_api import OpenAIProvider
from providers.registry import build_registry, make_plugin_manager
from providers.rest_api import RestProvider
from tests.providers.provider_helpers import (
    CANARY,
    assert_no_secret,
    closed_port_url,
    collect,
    conversation,
)

PROVIDERS: dict[str, type[Provider]] = {
    "openai_api": OpenAIProvider,
    "rest_api": RestProvider,
    "anthropic_api": AnthropicProvider,
    "codegen_api": CodegenProvider,
}


def test_registry_lists_the_rest_providers():
    registry = build_registry(make_plugin_manager(load_entry_points=False))
    assert set(PROVIDERS) <= set(registry.types())
    for endpoint_type, cls in PROVIDERS.items():
        assert registry.get(endpoint_type) is cls
    described = {d["endpoint_type"]: d for d in registry.describe()}
    assert described["codegen_api"]["capabilities"]["can_stream"] is False
    assert described["anthropic_api"]["credential_fields"] == ["api_key"]
    assert described["codegen_api"]["credential_fields"] == ["api_token"]


@pytest.mark.parametrize("cls", PROVIDERS.values(), ids=PROVIDERS.keys())
def test_every_config_field_is_described(cls):
    description = cls.describe()
    assert description["title"] and description["description"]
    properties = description["config_schema"]["properties"]
    assert properties
    for name, schema in properties.items():
        assert schema.get("description"), f"{cls.endpoint_type}.Config.{name} has no description"
    assert description["config_schema"].get("additionalProperties") is False


# --- the canary key never shows up in an error ------------------------------------------------


def _setup(kind: str, servers: dict[str, Any]) -> tuple[type[Provider], str, dict[str, Any], Any]:
    server = servers[kind]
    server.api_key = CANARY
    if kind == "openai_api":
        return OpenAIProvider, server.url, {}, server
    if kind == "anthropic_api":
        return AnthropicProvider, server.url, {}, server
    if kind == "codegen_api":
        return CodegenProvider, server.url, {"org_id": 42, "poll_interval": 0.05}, server
    config = {"path": "/api/ask", "headers": {"X-Api-Key": "{api_key}"}, "response_path": "answer"}
    return RestProvider, server.url, config, server


FAULTS = [
    ("401 echoing the key", lambda s: s.fail_next(401, body={"error": f"bad key {CANARY}"})),
    ("403 plain", lambda s: s.fail_next(403, body=f"forbidden for {CANARY}")),
    ("429", lambda s: s.fail_next(429, headers={"Retry-After": "99"}, body={"message": CANARY})),
    ("500 echoing the key", lambda s: s.fail_next(500, body={"message": f"boom {CANARY}"})),
    ("400 detail list", lambda s: s.fail_next(400, body={"detail": [{"msg": CANARY}]})),
    ("garbage", lambda s: s.garbage_next()),
    ("timeout", lambda s: s.delay_next(2)),
]


@pytest.fixture
def servers(openai_upstream, rest_upstream, anthropic_upstream, codegen_upstream):
    return {
        "openai_api": openai_upstream,
        "rest_api": rest_upstream,
        "anthropic_api": anthropic_upstream,
        "codegen_api": codegen_upstream,
    }


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize(("fault_name", "fault"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_canary_key_never_appears_in_errors(kind, fault_name, fault, servers, make_provider):
    cls, url, config, server = _setup(kind, servers)
    key_name = cls.credential_fields[0]
    provider = await make_provider(
        cls, url, config=config, credentials={key_name: CANARY}, timeout=0.3
    )
    fault(server)
    with pytest.raises(ProviderError) as caught:
        await provider.chat(conversation("hi"))
    assert_no_secret(caught.value)
    if "echoing" in fault_name:
        assert "***" in caught.value.message  # the upstream's text is kept, the key masked

    health = await provider.health() if fault_name != "timeout" else None
    if health is not None:
        assert CANARY not in health.detail


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_canary_key_not_in_stream_or_connection_errors(kind, servers, make_provider):
    cls, url, config, server = _setup(kind, servers)
    key_name = cls.credential_fields[0]
    provider = await make_provider(cls, url, config=config, credentials={key_name: CANARY})
    server.fail_next(401, body={"error": {"message": f"key {CANARY} rejected"}})
    with pytest.raises(ProviderError) as caught:
        await collect(provider.stream(conversation("hi")))
    assert_no_secret(caught.value)

    base = closed_port_url()
    down = await make_provider(
        cls,
        base + ("/v1" if kind == "openai_api" else ""),
        config=config,
        credentials={key_name: CANARY},
    )
    with pytest.raises(ProviderError) as caught:
        await down.chat(conversation("hi"))
    assert_no_secret(caught.value)
    assert CANARY not in (await down.health()).detail
