"""openai_api against the OpenAI-compatible fixture server."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from providers.errors import (
    AuthError,
    InvalidRequest,
    ProtocolError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
)
from providers.openai_api import OpenAIProvider
from tests.providers.provider_helpers import (
    CANARY,
    closed_port_url,
    collect,
    conversation,
    text,
)


async def test_chat_sends_model_messages_and_key(openai_upstream, make_provider):
    openai_upstream.api_key = CANARY
    provider = await make_provider(
        OpenAIProvider,
        openai_upstream.url,
        config={"organization": "org-1", "extra_headers": {"X-Trace": "t1"}},
        credentials={"api_key": CANARY},
        model="gpt-test",
    )
    response = await provider.chat(conversation("hello there", temperature=0.2, max_tokens=50))

    assert response.content == "turn 1: hello there"
    assert response.model == "gpt-test"
    assert response.finish_reason == "stop"
    sent = openai_upstream.last_request
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == f"Bearer {CANARY}"
    assert sent.headers["OpenAI-Organization"] == "org-1"
    assert sent.headers["X-Trace"] == "t1"
    assert sent.json == {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "hello there"}],
        "temperature": 0.2,
        "max_tokens": 50,
    }


async def test_multi_turn_history_is_sent(openai_upstream, make_provider):
    provider = await make_provider(OpenAIProvider, openai_upstream.url)
    request = conversation("first", "turn 1: first", "second", system="be brief")
    response = await provider.chat(request)

    assert response.content == "turn 2: second"
    roles = [m["role"] for m in openai_upstream.last_request.json["messages"]]
    assert roles == ["system", "user", "assistant", "user"]


async def test_config_defaults_and_passthrough_params(openai_upstream, make_provider):
    provider = await make_provider(
        OpenAIProvider,
        openai_upstream.url,
        config={
            "default_temperature": 0.7,
            "default_max_tokens": 99,
            "max_tokens_field": "max_completion_tokens",
            "extra_body": {"top_p": 0.9},
        },
    )
    await provider.chat(conversation("x", extra={"seed": 7, "internal_thing": 1}))
    body = openai_upstream.last_request.json
    assert body["temperature"] == 0.7
    assert body["max_completion_tokens"] == 99 and "max_tokens" not in body
    assert body["top_p"] == 0.9 and body["seed"] == 7
    assert "internal_thing" not in body


async def test_usage_from_upstream_is_not_estimated(openai_upstream, make_provider):
    provider = await make_provider(OpenAIProvider, openai_upstream.url)
    response = await provider.chat(conversation("one two three"))
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (3, 5)
    assert response.usage.estimated is False


async def test_usage_is_estimated_when_upstream_reports_none(openai_upstream, make_provider):
    openai_upstream.include_usage = False
    provider = await make_provider(OpenAIProvider, openai_upstream.url)
    response = await provider.chat(conversation("one two three"))
    assert response.usage is not None and response.usage.estimated is True
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0


async def test_reasoning_content_is_returned(openai_upstream, make_provider):
    openai_upstream.reasoning = "let me think"
    provider = await make_provider(OpenAIProvider, openai_upstream.url)
    response = await provider.chat(conversation("q"))
    assert response.reasoning == "let me think"
    chunks, _ = await collect(provider.stream(conversation("q")))
    assert "".join(c.reasoning for c in chunks) == "let me think"


async def test_stream_chunks_arrive_before_the_answer_is_complete(openai_upstream, make_provider):
    openai_upstream.chunk_delay = 0.1
    provider = await make_provider(OpenAIProvider, openai_upstream.url)
    chunks, first_at = await collect(provider.stream(conversation("a b c d e")))

    assert text(chunks) == "turn 1: a b c d e"
    assert len([c for c in chunks if c.delta]) > 3
    assert first_at is not None and first_at < openai_upstream.stream_sent_at[-1]
    body = openai_upstream.last_request.json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    final = chunks[-1]
    assert final.finish_reason == "stop" and final.delta == ""
    assert final.usage is not None and final.usage.estimated is False
    assert final.usage.completion_tokens == 7


async def test_stream_usage_estimated_without_usage_chunk(openai_upstream, make_provider):
    provider = await make_provider(
        OpenAIProvider, openai_upstream.url, config={"stream_usage": False}
    )
    chunks, _ = await collect(provider.stream(conversation("hi")))
    assert "stream_options" not in openai_upstream.last_request.json
    assert chunks[-1].usage is not None and chunks[-1].usage.estimated is True


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthError),
        (403, AuthError),
        (400, InvalidRequest),
        (404, InvalidRequest),
        (422, InvalidRequest),
        (500, Unavailable),
        (503, Unavailable),
    ],
)
async def test_http_errors_are_mapped(openai_upstream, make_provider, status, error):
    provider = await make_provider(OpenAIProvider, openai_upstream.url)
    openai_upstream.fail_next(status, body={"error": {"message": "upstream says no"}})
    with pytest.raises(error) as caught:
        await provider.chat(conversation("x"))
    assert caught.value.upstream_status == status
    assert "upstream says no" in caught.value.message


async def test_rate_limit_carries_retry_after(openai_upstream, make_provider):
    provider = await make_provider(OpenAIProvider, openai_upstream.url)
    openai_upstream.fail_next(429, headers={"Retry-After": "7"})
    with pytest.raises(RateLimited) as caught:
        await provider.chat(conversation("x"))
    assert caught.value.retry_after == 7.0


async def test_stream_errors_before_first_chunk_are_mapped(openai_upstream, make_provider):
    provider = await make_provider(OpenAIProvider, openai_upstream.url)
    openai_upstream.fail_next(429, headers={"Retry-After": "2"})
    with pytest.raises(RateLimited) as caught:
        await collect(provider.stream(conversation("x")))
    assert caught.value.retry_after == 2.0


async def test_timeout(openai_upstream, make_provider):
    provider = await make_provider(OpenAIProvider, openai_upstream.url, timeout=0.3)
    openai_upstream.delay_next(3)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await provider.chat(conversation("x"))
    assert time.monotonic() - started < 2


async def test_stream_timeout(openai_upstream, make_provider):
    provider = await make_provider(OpenAIProvider, openai_upstream.url, timeout=0.3)
    openai_upstream.delay_next(3)
    with pytest.raises(ProviderTimeout):
        await collect(provider.stream(conversation("x")))


async def test_garbage_json(openai_upstream, make_provider):
    provider = await make_provider(OpenAIProvider, openai_upstream.url)
    openai_upstream.garbage_next()
    with pytest.raises(ProtocolError):
        await provider.chat(conversation("x"))


async def test_garbage_stream_event(openai_upstream, make_provider):
    provider = await make_provider(OpenAIProvider, openai_upstream.url)
    openai_upstream.garbage_next(after_chunks=2)
    with pytest.raises(ProtocolError):
        await collect(provider.stream(conversation("x")))


async def test_answer_without_choices_is_a_protocol_error(openai_upstream, make_provider):
    provider = await make_provider(OpenAIProvider, openai_upstream.url)
    openai_upstream.fail_next(200, body={"id": "x", "object": "chat.completion"})
    with pytest.raises(ProtocolError):
        await provider.chat(conversation("x"))


async def test_mid_stream_break_is_an_error_not_a_truncation(openai_upstream, make_provider):
    provider = await make_provider(OpenAIProvider, openai_upstream.url)
    openai_upstream.stream_break_next(after_chunks=3)
    received = []
    with pytest.raises(Unavailable):
        async for chunk in provider.stream(conversation("a b c d e f")):
            received.append(chunk)
    assert received and all(c.finish_reason is None for c in received)


async def test_unreachable_upstream(make_provider):
    provider = await make_provider(OpenAIProvider, closed_port_url() + "/v1")
    with pytest.raises(Unavailable):
        await provider.chat(conversation("x"))


async def test_not_started_provider_raises_unavailable(openai_upstream, make_provider):
    provider = await make_provider(OpenAIProvider, openai_upstream.url, start=False)
    with pytest.raises(Unavailable):
        await provider.chat(conversation("x"))


async def test_health_probe_uses_models(openai_upstream, make_provider):
    provider = await make_provider(OpenAIProvider, openai_upstream.url)
    result = await provider.health()
    assert result.ok and result.latency_ms is not None
    assert openai_upstream.last_request.path == "/v1/models"

    openai_upstream.fail_next(401)
    result = await provider.health()
    assert not result.ok and "auth_error" in result.detail and result.kind == "auth_error"


async def test_health_of_unreachable_upstream(make_provider):
    provider = await make_provider(OpenAIProvider, closed_port_url() + "/v1")
    result = await provider.health()
    assert not result.ok and "unavailable" in result.detail


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"default_temperature": 5}, "default_temperature"),
        ({"default_max_tokens": 0}, "default_max_tokens"),
        ({"max_tokens_field": "tokens"}, "max_tokens_field"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_config_validation_names_the_field(config, field):
    with pytest.raises(ValidationError) as caught:
        OpenAIProvider.validate_config(config)
    assert caught.value.errors()[0]["loc"][0] == field
