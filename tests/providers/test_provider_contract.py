"""What every registered provider promises: registration, documented config, no leaked secrets.

The registration and schema tests loop over the registry, so a new provider is held to them
the moment it registers. The canary-key tests need a fixture upstream per kind; the kinds
without one here are covered by their own suites (``COVERED_ELSEWHERE``), and a registered
kind in neither list fails ``test_every_registered_kind_has_a_secret_test``.
"""

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

REGISTRY = build_registry(make_plugin_manager(load_entry_points=False))
REGISTERED: dict[str, type[Provider]] = {name: REGISTRY.get(name) for name in REGISTRY.types()}

# Kinds whose canary tests below run against a fixture upstream of this package.
PROVIDERS: dict[str, type[Provider]] = {
    "openai_api": OpenAIProvider,
    "rest_api": RestProvider,
    "anthropic_api": AnthropicProvider,
    "codegen_api": CodegenProvider,
}
COVERED_ELSEWHERE = {
    "web_chat": "tests/web_chat/test_webchat_trouble.py (wrong password never in errors)",
    "custom_web": "the web_chat engine, same code",
    "zai_web": "tests/web_chat/test_zai_web.py (wrong password never in errors)",
}


def test_registry_lists_the_built_in_providers():
    assert {*PROVIDERS, *COVERED_ELSEWHERE} <= set(REGISTERED)
    for endpoint_type, cls in PROVIDERS.items():
        assert REGISTERED[endpoint_type] is cls
    described = {d["endpoint_type"]: d for d in REGISTRY.describe()}
    assert described["codegen_api"]["capabilities"]["can_stream"] is False
    assert described["anthropic_api"]["credential_fields"] == ["api_key"]
    assert described["codegen_api"]["credential_fields"] == ["api_token"]
    assert described["web_chat"]["capabilities"]["needs_browser"] is True


def test_every_registered_kind_has_a_secret_test():
    assert set(REGISTERED) <= {*PROVIDERS, *COVERED_ELSEWHERE}


def undescribed_fields(schema: dict[str, Any]) -> list[str]:
    """Properties without a description, in the model and in every nested model ($defs)."""
    models = {"Config": schema, **schema.get("$defs", {})}
    missing = []
    for model_name, model in models.items():
        for name, field_schema in model.get("properties", {}).items():
            if not field_schema.get("description"):
                missing.append(f"{model_name}.{name}")
    return missing


@pytest.mark.parametrize("cls", REGISTERED.values(), ids=REGISTERED.keys())
def test_every_config_field_is_described(cls):
    description = cls.describe()
    assert description["title"] and description["description"]
    schema = description["config_schema"]
    assert schema["properties"]
    assert undescribed_fields(schema) == [], f"{cls.endpoint_type} has undocumented fields"
    assert schema.get("additionalProperties") is False


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
