"""codegen_api against the Codegen agent-run fixture server."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from providers._http import SlidingWindowLimiter
from providers.codegen_api import CodegenProvider, render_prompt
from providers.errors import (
    AuthError,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
)
from tests.providers.provider_helpers import CANARY, collect, conversation

FAST = {"org_id": 42, "poll_interval": 0.05, "max_wait": 10}


@pytest.fixture
async def agent(codegen_upstream, make_provider):
    codegen_upstream.api_key = CANARY
    return await make_provider(
        CodegenProvider, codegen_upstream.url, config=FAST, credentials={"api_token": CANARY}
    )


async def test_polls_until_complete(agent, codegen_upstream):
    codegen_upstream.run_states = ["ACTIVE", "RUNNING", "RUNNING", "COMPLETE"]
    response = await agent.chat(conversation("fix the bug"))

    assert response.content == "turn 1: fix the bug"
    methods = [(r.method, r.path) for r in codegen_upstream.requests]
    assert (
        methods
        == [("POST", "/v1/organizations/42/agent/run")]
        + [("GET", "/v1/organizations/42/agent/run/1")] * 3
    )
    create = codegen_upstream.requests[0]
    assert create.headers["Authorization"] == f"Bearer {CANARY}"
    assert create.json == {"prompt": "fix the bug"}
    assert response.conversation == {
        "agent_run_id": 1,
        "web_url": "https://codegen.com/agent/trace/1",
    }
    assert response.usage is not None and response.usage.estimated is True


async def test_lower_case_statuses_from_the_sdk_are_understood(agent, codegen_upstream):
    codegen_upstream.run_states = ["pending", "running", "completed"]
    assert (await agent.chat(conversation("x"))).content == "turn 1: x"


async def test_optional_run_fields_are_sent(codegen_upstream, make_provider):
    provider = await make_provider(
        CodegenProvider,
        codegen_upstream.url,
        config={**FAST, "repo_id": 7, "model": "claude-x", "agent_type": "claude_code"},
        credentials={"api_token": "tok-1"},
    )
    response = await provider.chat(conversation("x"))
    assert codegen_upstream.requests[0].json == {
        "prompt": "x",
        "repo_id": 7,
        "model": "claude-x",
        "agent_type": "claude_code",
    }
    assert response.model == "claude-x"


async def test_history_is_sent_as_one_tagged_prompt(agent, codegen_upstream):
    request = conversation("first ask", "turn 1: first ask", "second ask", system="be kind")
    response = await agent.chat(request)

    assert response.content == "turn 2: second ask"
    prompt = codegen_upstream.requests[0].json["prompt"]
    assert prompt == render_prompt(request.messages)
    assert "<system>\nbe kind\n</system>" in prompt
    assert (
        prompt.index("<user>\nfirst ask")
        < prompt.index("<assistant>")
        < prompt.index("<user>\nsecond ask")
    )


async def test_failed_run_raises_with_its_message(agent, codegen_upstream):
    codegen_upstream.fail_run_next("could not clone the repository")
    with pytest.raises(ProviderError, match="could not clone the repository") as caught:
        await agent.chat(conversation("x"))
    assert type(caught.value) is ProviderError
    assert "FAILED" in caught.value.message


async def test_run_that_never_finishes_times_out(codegen_upstream, make_provider):
    codegen_upstream.run_states = ["ACTIVE", "RUNNING"]  # never terminal
    provider = await make_provider(
        CodegenProvider,
        codegen_upstream.url,
        config={**FAST, "max_wait": 0.4},
        credentials={"api_token": "tok-1"},
    )
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match="0.4s"):
        await provider.chat(conversation("x"))
    assert time.monotonic() - started < 2


async def test_creation_rate_limit_is_respected_client_side(agent, codegen_upstream):
    # The server enforces 2 creations per 0.6 s; the client's limiter (61 s for the API's
    # 10 per minute in production) is shrunk the same way so the test runs fast.
    codegen_upstream.create_limit = (2, 0.6)
    agent.create_limiter = SlidingWindowLimiter(2, 0.65)
    started = time.monotonic()
    answers = await asyncio.gather(*(agent.chat(conversation(f"job {i}")) for i in range(5)))

    assert sorted(a.content for a in answers) == [f"turn 1: job {i}" for i in range(5)]
    assert codegen_upstream.rate_limited == 0
    creates = [r.at for r in codegen_upstream.requests if r.method == "POST"]
    assert len(creates) == 5
    assert creates[2] - creates[0] >= 0.55 and creates[4] - creates[2] >= 0.55
    assert time.monotonic() - started >= 1.1


def test_default_limits_follow_the_documented_rate_limits():
    config = CodegenProvider.validate_config({"org_id": 1})
    assert config.create_limit_per_minute == 10
    with pytest.raises(ValidationError):
        CodegenProvider.validate_config({"org_id": 1, "create_limit_per_minute": 11})


async def test_429_on_create_is_waited_out_per_retry_after(agent, codegen_upstream):
    codegen_upstream.fail_next(429, headers={"Retry-After": "0.3"}, method="POST")
    started = time.monotonic()
    response = await agent.chat(conversation("x"))

    assert response.content == "turn 1: x"
    assert time.monotonic() - started >= 0.3
    assert [r.method for r in codegen_upstream.requests].count("POST") == 2


async def test_429_beyond_max_rate_limit_wait_raises(agent, codegen_upstream):
    codegen_upstream.fail_next(429, headers={"Retry-After": "120"}, method="POST")
    with pytest.raises(RateLimited) as caught:
        await agent.chat(conversation("x"))
    assert caught.value.retry_after == 120.0
    assert len(codegen_upstream.requests) == 1


async def test_429_while_polling_is_waited_out(agent, codegen_upstream):
    codegen_upstream.fail_next(429, headers={"Retry-After": "0.2"}, method="GET")
    started = time.monotonic()
    assert (await agent.chat(conversation("x"))).content == "turn 1: x"
    assert time.monotonic() - started >= 0.2


async def test_402_plan_limit_is_not_retried(agent, codegen_upstream):
    codegen_upstream.fail_next(402, method="POST")
    with pytest.raises(RateLimited):
        await agent.chat(conversation("x"))
    assert len(codegen_upstream.requests) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, AuthError), (403, AuthError), (404, InvalidRequest), (500, Unavailable)],
)
async def test_http_errors_are_mapped(agent, codegen_upstream, status, error):
    codegen_upstream.fail_next(status)
    with pytest.raises(error, match="scripted failure"):
        await agent.chat(conversation("x"))


async def test_wrong_organization_is_an_auth_error(codegen_upstream, make_provider):
    provider = await make_provider(
        CodegenProvider,
        codegen_upstream.url,
        config={**FAST, "org_id": 7},
        credentials={"api_token": "tok-1"},
    )
    with pytest.raises(AuthError, match="do not have access"):
        await provider.chat(conversation("x"))


async def test_timeout_and_garbage(codegen_upstream, make_provider):
    provider = await make_provider(
        CodegenProvider,
        codegen_upstream.url,
        config=FAST,
        credentials={"api_token": "tok-1"},
        timeout=0.3,
    )
    codegen_upstream.delay_next(3)
    with pytest.raises(ProviderTimeout):
        await provider.chat(conversation("x"))
    codegen_upstream.garbage_next()
    with pytest.raises(ProtocolError):
        await provider.chat(conversation("x"))
    codegen_upstream.fail_next(200, body={"status": "ACTIVE"}, method="POST")
    with pytest.raises(ProtocolError, match="without an id"):
        await provider.chat(conversation("x"))


async def test_stream_is_one_chunk(agent):
    assert CodegenProvider.can_stream is False
    chunks, _ = await collect(agent.stream(conversation("x")))
    assert len(chunks) == 1
    assert chunks[0].delta == "turn 1: x" and chunks[0].finish_reason == "stop"


async def test_health_uses_users_me(agent, codegen_upstream):
    result = await agent.health()
    assert result.ok and codegen_upstream.last_request.path == "/v1/users/me"
    codegen_upstream.fail_next(401)
    result = await agent.health()
    assert not result.ok and "auth_error" in result.detail


async def test_missing_token_fails_at_start(codegen_upstream, make_provider):
    provider = await make_provider(CodegenProvider, codegen_upstream.url, config=FAST, start=False)
    with pytest.raises(AuthError, match="api_token"):
        await provider.start()


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({}, "org_id"),
        ({"org_id": 0}, "org_id"),
        ({"org_id": 1, "poll_interval": 0}, "poll_interval"),
        ({"org_id": 1, "max_wait": 0}, "max_wait"),
        ({"org_id": 1, "agent_type": "other"}, "agent_type"),
    ],
)
def test_config_validation_names_the_field(config, field):
    with pytest.raises(ValidationError) as caught:
        CodegenProvider.validate_config(config)
    assert caught.value.errors()[0]["loc"][0] == field


def test_single_message_prompt_is_sent_as_is():
    assert render_prompt(conversation("just this").messages) == "just this"
