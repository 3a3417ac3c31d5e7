"""rest_api against the generic REST fixture server, plus its template and path engine."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from providers.base import ChatRequest, Message
from providers.errors import (
    AuthError,
    InvalidRequest,
    ProtocolError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
)
from providers.rest_api import RestProvider, compile_template, dig, parse_path
from tests.providers.provider_helpers import (
    CANARY,
    closed_port_url,
    collect,
    conversation,
    text,
)

MESSAGES_CONFIG = {
    "path": "/api/ask",
    "headers": {"X-Api-Key": "{api_key}"},
    "body_template": {
        "messages": "{{messages}}",
        "temperature": "{{temperature}}",
        "note": "model={{model}}",
    },
    "response_path": "answer",
    "usage_prompt_tokens_path": "meta.usage.input",
    "usage_completion_tokens_path": "meta.usage.output",
}

STREAM_CONFIG = {
    **MESSAGES_CONFIG,
    "headers": {},
    "stream_chunk_path": "delta",
    "stream_body_overrides": {"stream": True},
    "usage_prompt_tokens_path": "usage.input",
    "usage_completion_tokens_path": "usage.output",
}


@pytest.fixture
async def rest(rest_upstream, make_provider):
    rest_upstream.api_key = CANARY
    return await make_provider(
        RestProvider, rest_upstream.url, config=MESSAGES_CONFIG, credentials={"api_key": CANARY}
    )


async def test_chat_renders_template_and_fills_header(rest, rest_upstream):
    response = await rest.chat(conversation("hello"))

    assert response.content == "turn 1: hello"
    sent = rest_upstream.last_request
    assert sent.method == "POST" and sent.path == "/api/ask"
    assert sent.headers["X-Api-Key"] == CANARY
    # temperature resolved to null, so its key was left out; text placeholders interpolated
    assert sent.json == {
        "messages": [{"role": "user", "content": "hello"}],
        "note": "model=fixture-model",
    }


async def test_typed_placeholders_keep_their_type(rest, rest_upstream):
    await rest.chat(conversation("x", temperature=0.5))
    assert rest_upstream.last_request.json["temperature"] == 0.5


async def test_multi_turn_history_is_sent(rest):
    response = await rest.chat(conversation("one", "turn 1: one", "two", system="sys"))
    assert response.content == "turn 2: two"


async def test_usage_real_and_estimated(rest, rest_upstream):
    response = await rest.chat(conversation("a b c"))
    assert response.usage is not None and response.usage.estimated is False
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (3, 5)

    rest_upstream.include_usage = False
    response = await rest.chat(conversation("a b c"))
    assert response.usage is not None and response.usage.estimated is True
    assert response.usage.completion_tokens > 0


async def test_response_path_with_list_index(rest_upstream, make_provider):
    provider = await make_provider(
        RestProvider,
        rest_upstream.url,
        config={"path": "/api/ask", "response_path": "choices.0.text"},
    )
    response = await provider.chat(conversation("indexed"))
    assert response.content == "turn 1: indexed"
    assert rest_upstream.last_request.json == {"prompt": "indexed"}


async def test_missing_response_path_is_a_protocol_error(rest_upstream, make_provider):
    provider = await make_provider(
        RestProvider, rest_upstream.url, config={"path": "/api/ask", "response_path": "data.text"}
    )
    with pytest.raises(ProtocolError, match="data.text"):
        await provider.chat(conversation("x"))


async def test_get_method_sends_the_template_as_query(rest_upstream, make_provider):
    provider = await make_provider(
        RestProvider,
        rest_upstream.url,
        config={
            "method": "GET",
            "path": "/api/ask",
            "body_template": {"prompt": "{{prompt}}", "max_tokens": "{{max_tokens}}"},
            "response_path": "answer",
        },
    )
    response = await provider.chat(conversation("by query", max_tokens=5))
    assert response.content == "turn 1: by query"
    assert rest_upstream.last_request.query == {"prompt": "by query", "max_tokens": "5"}


async def test_transcript_placeholder(rest_upstream, make_provider):
    provider = await make_provider(
        RestProvider,
        rest_upstream.url,
        config={
            "path": "/api/ask",
            "body_template": {"prompt": "{{transcript}}"},
            "response_path": "answer",
        },
    )
    await provider.chat(conversation("q1", "a1", "q2"))
    assert rest_upstream.last_request.json["prompt"] == "user: q1\n\nassistant: a1\n\nuser: q2"


async def test_stream_chunks_arrive_incrementally(rest_upstream, make_provider):
    rest_upstream.chunk_delay = 0.1
    provider = await make_provider(RestProvider, rest_upstream.url, config=STREAM_CONFIG)
    chunks, first_at = await collect(provider.stream(conversation("a b c d")))

    assert text(chunks) == "turn 1: a b c d"
    assert first_at is not None and first_at < rest_upstream.stream_sent_at[-1]
    assert rest_upstream.last_request.json["stream"] is True
    final = chunks[-1]
    assert final.finish_reason == "stop"
    assert final.usage is not None and final.usage.estimated is False
    assert final.usage.completion_tokens == 6


async def test_stream_usage_estimated_when_absent(rest_upstream, make_provider):
    rest_upstream.include_usage = False
    provider = await make_provider(RestProvider, rest_upstream.url, config=STREAM_CONFIG)
    chunks, _ = await collect(provider.stream(conversation("x")))
    assert chunks[-1].usage is not None and chunks[-1].usage.estimated is True


async def test_without_chunk_path_stream_yields_one_chunk(rest):
    chunks, _ = await collect(rest.stream(conversation("whole")))
    assert [c.delta for c in chunks] == ["turn 1: whole"]
    assert chunks[0].finish_reason == "stop"


async def test_stream_break_and_garbage(rest_upstream, make_provider):
    provider = await make_provider(RestProvider, rest_upstream.url, config=STREAM_CONFIG)
    rest_upstream.stream_break_next(after_chunks=2)
    with pytest.raises(Unavailable):
        await collect(provider.stream(conversation("a b c d")))
    rest_upstream.garbage_next(after_chunks=1)
    with pytest.raises(ProtocolError):
        await collect(provider.stream(conversation("a b c d")))


async def test_stream_ending_before_done_marker_is_an_error(rest_upstream, make_provider):
    rest_upstream.done_marker = None
    provider = await make_provider(RestProvider, rest_upstream.url, config=STREAM_CONFIG)
    with pytest.raises(Unavailable, match=r"\[DONE\]"):
        await collect(provider.stream(conversation("x")))


async def test_stream_without_marker_ends_when_the_stream_closes(rest_upstream, make_provider):
    rest_upstream.done_marker = None
    config = {**STREAM_CONFIG, "stream_done_marker": None}
    provider = await make_provider(RestProvider, rest_upstream.url, config=config)
    chunks, _ = await collect(provider.stream(conversation("x")))
    assert text(chunks) == "turn 1: x" and chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AuthError), (403, AuthError), (422, InvalidRequest), (500, Unavailable)],
)
async def test_http_errors_are_mapped(rest, rest_upstream, status, error):
    rest_upstream.fail_next(status, body={"error": "nope from upstream"})
    with pytest.raises(error, match="nope from upstream"):
        await rest.chat(conversation("x"))


async def test_rate_limit_timeout_garbage(rest, rest_upstream, make_provider):
    rest_upstream.fail_next(429, headers={"Retry-After": "4"})
    with pytest.raises(RateLimited) as caught:
        await rest.chat(conversation("x"))
    assert caught.value.retry_after == 4.0

    rest_upstream.garbage_next()
    with pytest.raises(ProtocolError):
        await rest.chat(conversation("x"))

    slow = await make_provider(
        RestProvider,
        rest_upstream.url,
        config={**MESSAGES_CONFIG, "headers": {}},
        timeout=0.3,
    )
    rest_upstream.api_key = None
    rest_upstream.delay_next(3)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await slow.chat(conversation("x"))
    assert time.monotonic() - started < 2


async def test_missing_credential_fails_at_start(rest_upstream, make_provider):
    provider = await make_provider(
        RestProvider, rest_upstream.url, config=MESSAGES_CONFIG, start=False
    )
    with pytest.raises(AuthError, match="api_key"):
        await provider.start()


async def test_credential_in_path(rest_upstream, make_provider):
    provider = await make_provider(
        RestProvider,
        rest_upstream.url,
        config={"path": "/api/ask?key={api_key}", "response_path": "answer"},
        credentials={"api_key": "k123"},
    )
    await provider.chat(conversation("x"))
    assert rest_upstream.last_request.query == {"key": "k123"}


async def test_health(rest, rest_upstream, make_provider):
    result = await rest.health()  # no health_path: reachability (GET /api/ask answers 400)
    assert result.ok

    probed = await make_provider(
        RestProvider,
        rest_upstream.url,
        config={**MESSAGES_CONFIG, "health_path": "/api/health"},
        credentials={"api_key": CANARY},
    )
    assert (await probed.health()).ok
    assert rest_upstream.last_request.path == "/api/health"
    rest_upstream.fail_next(503)
    result = await probed.health()
    assert not result.ok and "unavailable" in result.detail

    down = await make_provider(RestProvider, closed_port_url(), config={"response_path": "a"})
    assert not (await down.health()).ok


@pytest.mark.parametrize(
    ("config", "field", "words"),
    [
        ({"body_template": {"q": "{{question}}"}}, "body_template", "question"),
        ({"response_path": "a..b"}, "response_path", "dotted path"),
        ({"usage_prompt_tokens_path": ""}, "usage_prompt_tokens_path", "dotted path"),
        ({"headers": {"Authorization": "Bearer {api_key!r}"}}, "headers", "credential name"),
        ({"headers": {"X": "{unclosed"}}, "headers", "literal braces"),
        ({"path": "api/ask"}, "path", "must start with"),
        ({"method": "DELETE"}, "method", ""),
        ({"stream_body_overrides": {"stream": True}}, None, "stream_chunk_path"),
        ({"method": "GET", "body_template": ["{{prompt}}"]}, None, "body_template"),
    ],
)
def test_config_validation_names_the_problem(config, field, words):
    data = {"response_path": "answer", **config}
    with pytest.raises(ValidationError) as caught:
        RestProvider.validate_config(data)
    error = caught.value.errors()[0]
    if field is not None:
        assert error["loc"][0] == field
    assert words in str(caught.value)


def test_response_path_is_required():
    with pytest.raises(ValidationError) as caught:
        RestProvider.validate_config({})
    assert caught.value.errors()[0]["loc"] == ("response_path",)


def test_template_rendering_rules():
    render, used = compile_template(
        {
            "msgs": "{{messages}}",
            "t": "{{ temperature }}",
            "n": ["{{max_tokens}}", "literal", 3, None, True],
            "s": "System: {{system}} / {{model}}",
        }
    )
    assert used == {"messages", "temperature", "max_tokens", "system", "model"}
    values = {
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": None,
        "max_tokens": 12,
        "system": None,
        "model": "m",
    }
    assert render(values) == {
        "msgs": [{"role": "user", "content": "hi"}],
        "n": [12, "literal", 3, None, True],
        "s": "System:  / m",
    }


def test_dig_paths():
    data = {"choices": [{"message": {"content": "x"}}], "data": {"0": "zero"}}
    assert dig(data, parse_path("choices.0.message.content")) == "x"
    assert dig(data, parse_path("choices.-1.message.content")) == "x"
    assert dig(data, parse_path("data.0")) == "zero"
    for bad in ("choices.1.message", "choices.first", "data.0.deeper"):
        with pytest.raises(LookupError):
            dig(data, parse_path(bad))


def test_prompt_is_the_newest_user_message():
    request = ChatRequest(
        messages=[Message("user", "old"), Message("assistant", "a"), Message("user", "new")]
    )
    render, _ = compile_template({"p": "{{prompt}}"})
    assert render({"prompt": request.prompt}) == {"p": "new"}


@pytest.mark.parametrize(
    ("answer", "content"),
    [
        (["a", "b"], '["a","b"]'),
        (42, "42"),
        (1.5, "1.5"),
        (True, "true"),
        (None, ""),
        ({"text": "hi", "n": 1}, '{"text":"hi","n":1}'),
    ],
)
async def test_non_string_answers_become_json_text(rest, rest_upstream, answer, content):
    # JSON text, never Python's str() ("['a', 'b']", "None", "True").
    rest_upstream.fail_next(200, body={"answer": answer})
    response = await rest.chat(conversation("what shape"))
    assert response.content == content
