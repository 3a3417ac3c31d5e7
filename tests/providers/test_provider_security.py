"""Credentials stay with the configured origin, and no part of a secret leaks through a cut."""

from __future__ import annotations

import pytest

from providers._http import clip, error_for_status
from providers.anthropic_api import AnthropicProvider
from providers.errors import AuthError, ProtocolError
from providers.rest_api import RestProvider
from tests.fixtures.upstreams import AnthropicUpstream, RestUpstream
from tests.providers.provider_helpers import CANARY, assert_no_secret, conversation

REST_CONFIG = {
    "path": "/api/ask",
    "headers": {"X-Api-Key": "{api_key}"},
    "body_template": {"prompt": "{{prompt}}"},
    "response_path": "answer",
}


@pytest.fixture
def elsewhere():
    """Another server (another port: another origin) that records whatever reaches it."""
    with RestUpstream() as server:
        yield server


async def test_rest_api_refuses_a_redirect_to_another_origin(
    rest_upstream, elsewhere, make_provider
):
    rest = await make_provider(
        RestProvider, rest_upstream.url, config=REST_CONFIG, credentials={"api_key": CANARY}
    )
    rest_upstream.fail_next(307, headers={"Location": f"{elsewhere.base_url}/api/ask"}, body="")
    with pytest.raises(ProtocolError, match="another origin") as caught:
        await rest.chat(conversation("where does my key go"))
    assert elsewhere.requests == []  # nothing, so no X-Api-Key, reached the other origin
    assert_no_secret(caught.value)


async def test_rest_api_follows_a_redirect_within_its_origin(rest_upstream, make_provider):
    rest_upstream.api_key = CANARY
    rest = await make_provider(
        RestProvider, rest_upstream.url, config=REST_CONFIG, credentials={"api_key": CANARY}
    )
    rest_upstream.fail_next(307, headers={"Location": "/api/ask?moved=1"}, body="")
    response = await rest.chat(conversation("same place"))
    assert response.content == "turn 1: same place"
    assert rest_upstream.last_request.query == {"moved": "1"}
    assert rest_upstream.last_request.headers["X-Api-Key"] == CANARY


async def test_anthropic_refuses_a_redirect_to_another_origin(anthropic_upstream, make_provider):
    claude = await make_provider(
        AnthropicProvider, anthropic_upstream.url, credentials={"api_key": CANARY}
    )
    with AnthropicUpstream() as other:
        anthropic_upstream.fail_next(
            307, headers={"Location": f"{other.base_url}/v1/messages"}, body="", path="/v1/messages"
        )
        with pytest.raises(ProtocolError, match="another origin"):
            await claude.chat(conversation("hi"))
        assert other.requests == []


def test_a_secret_straddling_the_cut_is_redacted_whole():
    # The key starts 12 characters before the 300-character cut.
    body = ("x" * 260 + f"Incorrect API key provided: {CANARY}").encode()
    error = error_for_status(401, {}, body, label="openai_api endpoint 'e'", secrets=(CANARY,))
    assert isinstance(error, AuthError)
    assert CANARY[:8] not in str(error) and "***" in str(error)


@pytest.mark.parametrize("kept", [8, 12, len(CANARY) - 1])
def test_a_secret_prefix_left_at_the_cut_is_redacted(kept):
    # The upstream (or the scan limit) cut the text already: only the key's start is left.
    text = "a" * 20 + " key: " + CANARY[:kept]
    clipped = clip(text, (CANARY,), limit=300)
    assert clipped == "a" * 20 + " key: ***"


def test_short_fragments_and_ordinary_text_are_kept():
    assert clip("the key sk-c", (CANARY,)) == "the key sk-c"  # under 8 characters: too common
    assert clip("y" * 400, (CANARY,)) == "y" * 300
    assert clip(f"{CANARY} and {CANARY}", (CANARY,)) == "*** and ***"
