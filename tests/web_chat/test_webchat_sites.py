"""The web chat engine against six structurally different fixture sites in real Chromium."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from providers.base import ChatRequest, Message
from providers.errors import ProviderTimeout
from providers.web_chat.provider import WebChatProvider
from tests.web_chat.webchat_sites import SiteServer, bot_reply
from tests.web_chat.webchat_support import SITE_CONFIGS, good_credentials, make_provider, site_spec

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

GetProvider = Callable[[str], Awaitable[WebChatProvider]]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def provider_for(sites: SiteServer) -> AsyncIterator[GetProvider]:
    """One started provider per site, shared by the tests of this module."""
    started: dict[str, WebChatProvider] = {}

    async def get(site: str) -> WebChatProvider:
        if site not in started:
            credentials = good_credentials() if site == "login" else None
            provider = make_provider(site_spec(sites, site, credentials=credentials))
            await provider.start()
            started[site] = provider
        return started[site]

    yield get
    for provider in started.values():
        await provider.stop()


def ask(prompt: str, session: str | None, conversation=None, history=()) -> ChatRequest:
    messages = [*history, Message("user", prompt)]
    return ChatRequest(messages=messages, session_id=session, conversation=conversation)


@pytest.mark.parametrize("site", sorted(SITE_CONFIGS))
async def test_three_turns_in_one_conversation(provider_for: GetProvider, site: str) -> None:
    provider = await provider_for(site)
    conversation = None
    for turn, prompt in enumerate(["first question", "second, with a comma", "third"], 1):
        response = await provider.chat(ask(prompt, f"{site}-multi", conversation))
        assert response.content == bot_reply(site, turn, prompt)
        conversation = response.conversation
        assert conversation["turns"] == turn
    assert response.model == f"{site}-bot" and response.usage.estimated
    if site != "shadow":  # the shadow widget keeps its conversation in page memory only
        assert "url" in conversation


@pytest.mark.parametrize("site", ["sse", "editable", "iframe"])
async def test_stream_pieces_arrive_while_the_page_writes(
    provider_for: GetProvider, sites: SiteServer, site: str
) -> None:
    provider = await provider_for(site)
    prompt = f"stream on {site} please"
    arrivals: list[tuple[float, str]] = []
    final = None
    async for chunk in provider.stream(ask(prompt, f"{site}-stream")):
        if chunk.delta:
            arrivals.append((time.monotonic(), chunk.delta))
        if chunk.finish_reason:
            final = chunk
    expected = bot_reply(site, 1, prompt)
    assert "".join(delta for _, delta in arrivals).strip() == expected
    assert len(arrivals) >= 3
    assert final is not None and final.conversation["turns"] == 1
    if site == "sse":
        timing = sites.state.stream_timing[prompt]
        # The first piece reached us before the server had even sent the last token.
        assert arrivals[0][0] < timing.last_token_at


async def test_requests_without_session_start_fresh_conversations(
    provider_for: GetProvider,
) -> None:
    provider = await provider_for("textarea")
    first = await provider.chat(ask("no session one", None))
    second = await provider.chat(ask("no session two", None))
    assert first.content == bot_reply("textarea", 1, "no session one")
    assert second.content == bot_reply("textarea", 1, "no session two")
    assert first.conversation["url"] != second.conversation["url"]


async def test_history_is_replayed_into_a_new_conversation(provider_for: GetProvider) -> None:
    provider = await provider_for("editable")
    history = [
        Message("system", "Be brief."),
        Message("user", "earlier question"),
        Message("assistant", "earlier answer"),
    ]
    response = await provider.chat(ask("follow-up", "replay", history=history))
    assert response.content.startswith("[editable] turn 1: you said 'System: Be brief.")
    assert "User: earlier question" in response.content
    assert response.content.endswith("User: follow-up'")


async def test_parallel_sessions_never_mix_answers(sites: SiteServer) -> None:
    spec = site_spec(sites, "textarea", name="parallel", max_concurrent_requests=4)
    provider = make_provider(spec)
    await provider.start()
    try:

        async def converse(index: int) -> list[str]:
            conversation, answers = None, []
            for turn in (1, 2):
                response = await provider.chat(
                    ask(f"session {index} turn {turn}", f"par-{index}", conversation)
                )
                conversation = response.conversation
                answers.append(response.content)
            return answers

        results = await asyncio.gather(*(converse(i) for i in range(6)))
    finally:
        await provider.stop()
    for index, answers in enumerate(results):
        assert answers == [
            bot_reply("textarea", turn, f"session {index} turn {turn}") for turn in (1, 2)
        ]


async def test_a_full_pool_queues_then_times_out(sites: SiteServer) -> None:
    spec = site_spec(
        sites,
        "textarea",
        name="tiny_pool",
        max_concurrent_requests=1,
        overrides={"queue_timeout_s": 1.0, "answer_timeout_s": 3.0},
    )
    provider = make_provider(spec)
    await provider.start()
    try:
        slow = asyncio.create_task(provider.chat(ask("TROUBLE:slow", "holder")))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        with pytest.raises(ProviderTimeout, match="pages stayed busy"):
            await provider.chat(ask("waiting", "waiter"))
        assert 0.9 <= time.monotonic() - started < 2.5
        with pytest.raises(ProviderTimeout, match="no complete answer"):
            await slow
        # The slot came back: the queue moves again.
        response = await provider.chat(ask("after the queue", "waiter"))
        assert response.content == bot_reply("textarea", 1, "after the queue")
    finally:
        await provider.stop()
