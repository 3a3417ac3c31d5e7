"""anthropic_api against the Anthropic Messages fixture server."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from providers.anthropic_api import AnthropicProvider
from providers.errors import (
    AuthError,
    InvalidRequest,
    ProtocolError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
)
from tests.providers.provider_helpers import (
    CANARY,
    closed_port_url,
    collect,
    conversation,
    text,
)


@pytest.fixture
async def claude(anthropic_upstream, make_provider):
    anthropic_upstream.api_key = CANARY
    return await make_provider(
        AnthropicProvider,
        anthropic_upstream.url,
        credentials={"api_key": CANARY},
        model="claude-test",
    )


async def test_chat_sends_headers_system_and_max_tokens(claude, anthropic_upstream):
    response = await claude.chat(conversation("hello", system="be terse"))

    assert response.content == "turn 1: hello"
    assert response.model == "claude-test"
    assert response.finish_reason == "stop"
    sent = anthropic_upstream.last_request
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == CANARY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in sent.headers
    assert sent.json == {
        "model": "claude-test",
        "max_tokens": 1024,
        "system": "be terse",
        "messages": [{"role": "user", "content": "hello"}],
    }


async def test_multi_turn_history_is_sent(claude):
    response = await claude.chat(conversation("one", "turn 1: one", "two", system="s"))
    assert response.content == "turn 2: two"


async def test_request_settings_override_config(anthropic_upstream, make_provider):
    provider = await make_provider(
        AnthropicProvider,
        anthropic_upstream.url + "/v1",  # a base URL ending in /v1 is accepted too
        config={"max_tokens": 300, "default_temperature": 0.3, "extra_body": {"top_k": 5}},
        credentials={"api_key": "k-1234"},
    )
    await provider.chat(conversation("x", max_tokens=20))
    body = anthropic_upstream.last_request.json
    assert (body["max_tokens"], body["temperature"], body["top_k"]) == (20, 0.3, 5)
    assert anthropic_upstream.last_request.path == "/v1/messages"


async def test_usage_real(claude):
    response = await claude.chat(conversation("a b c", system="s s"))
    assert response.usage is not None and response.usage.estimated is False
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (5, 5)


async def test_usage_estimated_when_absent(claude, anthropic_upstream):
    body = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "no usage here"}],
        "stop_reason": "max_tokens",
    }
    anthropic_upstream.fail_next(200, body=body)
    response = await claude.chat(conversation("x"))
    assert response.content == "no usage here"
    assert response.finish_reason == "length"
    assert response.usage is not None and response.usage.estimated is True


async def test_thinking_is_returned_as_reasoning(anthropic_upstream, make_provider):
    provider = await make_provider(
        AnthropicProvider,
        anthropic_upstream.url,
        config={"max_tokens": 4096, "thinking_budget_tokens": 2048},
        credentials={"api_key": "k-1234"},
    )
    response = await provider.chat(conversation("hmm"))
    assert response.content == "turn 1: hmm"
    assert response.reasoning == "thinking about turn 1: hmm"
    assert anthropic_upstream.last_request.json["thinking"] == {
        "type": "enabled",
        "budget_tokens": 2048,
    }

    chunks, _ = await collect(provider.stream(conversation("hmm")))
    assert "".join(c.reasoning for c in chunks) == "thinking about turn 1: hmm"
    assert text(chunks) == "turn 1: hmm"


async def test_stream_chunks_arrive_incrementally(claude, anthropic_upstream):
    anthropic_upstream.chunk_delay = 0.05
    chunks, first_at = await collect(claude.stream(conversation("a b c d")))

    assert text(chunks) == "turn 1: a b c d"
    assert first_at is not None and first_at < anthropic_upstream.stream_sent_at[-1]
    assert anthropic_upstream.last_request.json["stream"] is True
    final = chunks[-1]
    assert final.finish_reason == "stop"
    assert final.usage is not None and final.usage.estimated is False
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (4, 6)


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (401, AuthError, "authentication_error"),
        (403, AuthError, "permission_error"),
        (400, InvalidRequest, "invalid_request_error"),
        (404, InvalidRequest, "not_found_error"),
        (500, Unavailable, "api_error"),
        (529, Unavailable, "overloaded_error"),
    ],
)
async def test_error_bodies_are_mapped(claude, anthropic_upstream, status, error, kind):
    anthropic_upstream.fail_next(status)
    with pytest.raises(error) as caught:
        await claude.chat(conversation("x"))
    assert kind in caught.value.message and caught.value.upstream_status == status


async def test_rate_limited_with_retry_after(claude, anthropic_upstream):
    anthropic_upstream.fail_next(429, headers={"Retry-After": "12"})
    with pytest.raises(RateLimited) as caught:
        await collect(claude.stream(conversation("x")))
    assert caught.value.retry_after == 12.0


@pytest.mark.parametrize(
    ("error_type", "error"),
    [("overloaded_error", Unavailable), ("rate_limit_error", RateLimited)],
)
async def test_error_event_mid_stream(claude, anthropic_upstream, error_type, error):
    anthropic_upstream.error_event_next(error_type, after_chunks=4)
    received = []
    with pytest.raises(error, match=error_type):
        async for chunk in claude.stream(conversation("a b c d e")):
            received.append(chunk)
    assert received and all(c.finish_reason is None for c in received)


async def test_mid_stream_break(claude, anthropic_upstream):
    anthropic_upstream.stream_break_next(after_chunks=4)
    with pytest.raises(Unavailable):
        await collect(claude.stream(conversation("a b c d")))


async def test_timeout_and_garbage(anthropic_upstream, make_provider):
    provider = await make_provider(
        AnthropicProvider, anthropic_upstream.url, credentials={"api_key": "k-1"}, timeout=0.3
    )
    anthropic_upstream.delay_next(3)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await provider.chat(conversation("x"))
    assert time.monotonic() - started < 2

    anthropic_upstream.garbage_next()
    with pytest.raises(ProtocolError):
        await provider.chat(conversation("x"))
    anthropic_upstream.garbage_next(after_chunks=2)
    with pytest.raises(ProtocolError):
        await collect(provider.stream(conversation("x")))


async def test_missing_api_key_fails_at_start(anthropic_upstream, make_provider):
    provider = await make_provider(AnthropicProvider, anthropic_upstream.url, start=False)
    with pytest.raises(AuthError, match="api_key"):
        await provider.start()


async def test_health(claude, anthropic_upstream, make_provider):
    result = await claude.health()
    assert result.ok and anthropic_upstream.last_request.path == "/v1/models"
    anthropic_upstream.fail_next(529)
    result = await claude.health()
    assert not result.ok and "overloaded_error" in result.detail

    down = await make_provider(AnthropicProvider, closed_port_url(), credentials={"api_key": "k-1"})
    assert not (await down.health()).ok


@pytest.mark.parametrize(
    ("config", "field", "words"),
    [
        ({"max_tokens": 0}, "max_tokens", ""),
        ({"default_temperature": 1.5}, "default_temperature", ""),
        ({"thinking_budget_tokens": 100}, "thinking_budget_tokens", ""),
        ({"max_tokens": 2000, "thinking_budget_tokens": 4000}, None, "thinking_budget_tokens"),
        ({"anthropic_version": ""}, "anthropic_version", ""),
        ({"api_key": "x"}, "api_key", "Extra inputs"),
    ],
)
def test_config_validation_names_the_field(config, field, words):
    with pytest.raises(ValidationError) as caught:
        AnthropicProvider.validate_config(config)
    if field is not None:
        assert caught.value.errors()[0]["loc"][0] == field
    assert words in str(caught.value)
