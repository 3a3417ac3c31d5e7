"""Quirks of real chat sites, each reproduced on the lab fixture site (sites/lab.html).

Every test here failed before the engine learned to handle its quirk: windowed and
re-rendered message lists, a new-chat control that clears the page late, an app that
checks navigator.webdriver, a renderer that rewrites streamed text, Markdown answers,
ranked send methods, a send control that signals the end through aria-disabled,
conversation ids outside the URL, a confirm dialog, a first-visit overlay, a model dropdown.
"""

from __future__ import annotations

import base64
import copy
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from providers.base import ChatChunk, ChatRequest, EndpointSpec, Message
from providers.errors import ProtocolError
from providers.web_chat.config import WebChatConfig
from providers.web_chat.provider import WebChatProvider
from tests.web_chat.webchat_sites import PASSWORD, USERNAME, SiteServer, bot_reply
from tests.web_chat.webchat_support import (
    SITE_CONFIGS,
    TROUBLE,
    good_credentials,
    make_provider,
    site_spec,
)

pytestmark = [pytest.mark.browser]

LAB: dict[str, Any] = {
    "input": "#prompt",
    "send": {"button": "#send"},
    "assistant_message": ".msg.assistant",
    "completion": {"stable_ms": 300},
    "conversation": {"url_pattern": "^/lab/c/", "new_button": "#new"},
    "trouble": TROUBLE,
    # Short, so a quirk the engine cannot handle fails fast instead of after 90 s.
    "answer_timeout_s": 6,
}


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def lab_spec(sites: SiteServer, query: str, name: str, **overrides: Any) -> EndpointSpec:
    return EndpointSpec(
        name=name,
        url=sites.url(f"/lab/?{query}"),
        model_name="lab-bot",
        config=WebChatConfig.model_validate(merged(LAB, overrides)),
        browser_config={"headless": True},
        request_timeout=20.0,
    )


async def started(spec: EndpointSpec) -> WebChatProvider:
    provider = make_provider(spec)
    await provider.start()
    return provider


def ask(prompt: str, session: str | None = None, conversation=None, history=()) -> ChatRequest:
    return ChatRequest(
        [*history, Message("user", prompt)], session_id=session, conversation=conversation
    )


async def converse(provider: WebChatProvider, prompts: list[str], session: str) -> list[str]:
    conversation, answers = None, []
    for prompt in prompts:
        response = await provider.chat(ask(prompt, session, conversation))
        conversation = response.conversation
        answers.append(response.content)
    return answers


@pytest.mark.parametrize(
    ("query", "overrides"),
    [
        ("window=2", {}),
        ("rerender=1&window=4", {}),
        ("rerender=1&window=4", {"user_message": ".msg.user"}),
    ],
    ids=["windowed", "re-rendered", "re-rendered-with-user-selector"],
)
async def test_answers_are_found_in_windowed_and_re_rendered_lists(
    sites: SiteServer, query: str, overrides: dict[str, Any]
) -> None:
    provider = await started(lab_spec(sites, query, "listy", **overrides))
    try:
        prompts = ["first", "second", "third"]
        answers = await converse(provider, prompts, "s")
    finally:
        await provider.stop()
    assert answers == [bot_reply("lab", n, p) for n, p in enumerate(prompts, 1)]


async def test_a_new_chat_that_clears_the_old_one_late(sites: SiteServer) -> None:
    provider = await started(lab_spec(sites, "asyncclear=0.6", "late_clear"))
    try:
        first = await provider.chat(ask("before the new chat"))
        second = await provider.chat(ask("after the new chat"))
    finally:
        await provider.stop()
    assert first.content == bot_reply("lab", 1, "before the new chat")
    assert second.content == bot_reply("lab", 1, "after the new chat")


async def test_a_new_chat_that_leaves_the_old_one_on_screen(
    sites: SiteServer, caplog: pytest.LogCaptureFixture
) -> None:
    provider = await started(lab_spec(sites, "keepold=1", "keeps_old"))
    prompts = ["one", "two", "three"]
    try:
        with caplog.at_level(logging.INFO, logger="providers.web_chat.provider"):
            answers = [(await provider.chat(ask(prompt))).content for prompt in prompts]
    finally:
        await provider.stop()
    assert answers == [bot_reply("lab", 1, prompt) for prompt in prompts]
    # Waited for the old messages to go once, then learnt that this site keeps them.
    noted = [r for r in caplog.records if "stays on screen after a new chat" in r.getMessage()]
    assert len(noted) == 1


async def test_an_app_that_checks_navigator_webdriver_works(sites: SiteServer) -> None:
    spec = lab_spec(sites, "webdriver=1", "strict_app")
    spec.browser_config = {"headless": True, "anti_detection": True}
    provider = await started(spec)
    try:
        answer = await provider.chat(ask("are you a robot"))
        page = provider._pool.pages[0].page  # type: ignore[union-attr]
        webdriver = await page.evaluate("navigator.webdriver")
    finally:
        await provider.stop()
    assert answer.content == bot_reply("lab", 1, "are you a robot")
    assert webdriver is False


async def collect(stream: AsyncIterator[ChatChunk]) -> tuple[list[str], ChatChunk]:
    deltas, final = [], None
    async for chunk in stream:
        if chunk.delta:
            deltas.append(chunk.delta)
        if chunk.finish_reason:
            final = chunk
    assert final is not None
    return deltas, final


async def test_a_rewritten_stream_ends_with_the_page_s_final_text(sites: SiteServer) -> None:
    provider = await started(lab_spec(sites, "bracket=1", "bracket"))
    prompt = "ECHO[twenty one two] end"
    try:
        deltas, final = await collect(provider.stream(ask(prompt, "md")))
        plain = await provider.chat(ask("plain words only here", "plain"))
        plain_deltas, plain_final = await collect(
            provider.stream(ask("streamed words only here", "plain2"))
        )
    finally:
        await provider.stop()
    expected = bot_reply("lab", 1, prompt)
    assert final.content == expected  # not the joined deltas, which lost the "["
    assert "".join(deltas) != expected and len(deltas) >= 3
    # A page that only appends: the deltas add up to the answer exactly.
    assert plain.content == bot_reply("lab", 1, "plain words only here")
    assert "".join(plain_deltas) == plain_final.content
    assert plain_final.content == bot_reply("lab", 1, "streamed words only here")


async def test_answers_come_as_markdown(sites: SiteServer) -> None:
    provider = await started(lab_spec(sites, "rich=1", "rich"))
    try:
        deltas, final = await collect(provider.stream(ask("show me code", "rich")))
    finally:
        await provider.stop()
    reply = bot_reply("lab", 1, "show me code")
    # The code block's header (its language label and Copy button) is not part of the answer.
    assert final.content == (
        f'{reply}\n\n```python\nprint("hi")\n```\n\n- one\n- two\n\n'
        "See [the docs](https://example.com/docs)."
    )
    assert "".join(deltas) == final.content


async def test_send_methods_fall_through_to_the_one_that_works(sites: SiteServer) -> None:
    send = {
        "methods": [{"button": "#no-such-button"}, {"key": "Enter"}, {"key": "Control+Enter"}],
        "wait_enabled_ms": 200,
        "confirm_ms": 300,
    }
    provider = await started(lab_spec(sites, "ctrlenter=1", "ctrl_enter", send=send))
    try:
        answers = await converse(provider, ["one", "two"], "keys")
    finally:
        await provider.stop()
    assert answers == [bot_reply("lab", 1, "one"), bot_reply("lab", 2, "two")]


async def test_an_aria_disabled_send_control_and_its_done_signal(sites: SiteServer) -> None:
    overrides = {
        "send": {"button": "[role=button]#send-div"},
        "completion": {
            # Stability alone would take 10 s: the attribute has to end the answer.
            "stable_ms": 10_000,
            "quorum": 1,
            "attributes": [
                {"selector": "#send-div", "attribute": "aria-disabled", "value": "true"}
            ],
        },
    }
    provider = await started(lab_spec(sites, "aria=1", "aria", **overrides))
    try:
        began = time.monotonic()
        answers = await converse(provider, ["a question of some length", "again"], "aria")
        took = time.monotonic() - began
    finally:
        await provider.stop()
    assert answers == [
        bot_reply("lab", 1, "a question of some length"),
        bot_reply("lab", 2, "again"),
    ]
    assert took < 6


async def test_a_conversation_id_in_an_attribute_survives_a_restart(sites: SiteServer) -> None:
    conversation_config = {
        "url_pattern": None,
        "id_from": {"selector": "#thread", "attribute": "data-conversation-id"},
        "url_template": "/lab/?convattr=1&c={id}",
    }
    spec = lab_spec(sites, "convattr=1", "conv_attr", conversation=conversation_config)
    provider = await started(spec)
    try:
        first = await provider.chat(ask("one", "kept"))
    finally:
        await provider.stop()
    site_id = first.conversation["site_id"]
    assert site_id in sites.state.conversations
    assert first.conversation["url"].endswith(f"c={site_id}")
    provider = await started(spec)  # a restart: a new browser, only the dict is left
    try:
        second = await provider.chat(ask("two", "kept", first.conversation))
    finally:
        await provider.stop()
    assert second.content == bot_reply("lab", 2, "two")
    assert second.transcript_replayed is False


async def test_a_transcript_replay_is_reported(sites: SiteServer) -> None:
    # The id is readable (a hidden input's value) but no URL reopens the conversation.
    conversation_config = {"url_pattern": None, "id_from": {"selector": "#conv-id"}}
    spec = lab_spec(sites, "convattr=1", "no_restore", conversation=conversation_config)
    provider = await started(spec)
    try:
        first = await provider.chat(ask("one", "lost"))
    finally:
        await provider.stop()
    assert first.conversation["site_id"] in sites.state.conversations
    assert "url" not in first.conversation and first.transcript_replayed is False
    provider = await started(spec)
    try:
        history = [Message("user", "one"), Message("assistant", first.content)]
        second = await provider.chat(ask("two", "lost", first.conversation, history))
    finally:
        await provider.stop()
    assert second.content.startswith("[lab] turn 1: you said 'User: one")
    assert second.transcript_replayed is True
    assert second.conversation["transcript_replayed"] is True


async def test_a_new_chat_confirmed_in_a_dialog(sites: SiteServer) -> None:
    conversation = {"new_steps": ["#new", {"click": "#confirm-new button.confirm"}]}
    provider = await started(lab_spec(sites, "confirmnew=1", "confirm", conversation=conversation))
    try:
        first = await provider.chat(ask("in the first chat"))
        second = await provider.chat(ask("in the second chat"))
    finally:
        await provider.stop()
    assert first.content == bot_reply("lab", 1, "in the first chat")
    assert second.content == bot_reply("lab", 1, "in the second chat")


async def test_an_overlay_no_config_names_is_a_clear_error_not_a_timeout(
    sites: SiteServer,
) -> None:
    provider = await started(lab_spec(sites, "overlay=1", "unknown_overlay"))
    try:
        await provider._pool.pages[0].page.wait_for_selector("#whats-new")  # type: ignore[union-attr]
        began = time.monotonic()
        with pytest.raises(ProtocolError, match=r"covered by div#whats-new.*overlays"):
            await provider.chat(ask("blocked"))
        took = time.monotonic() - began
    finally:
        await provider.stop()
    assert took < LAB["answer_timeout_s"]


async def test_a_first_visit_overlay_is_closed_before_typing(sites: SiteServer) -> None:
    provider = await started(
        lab_spec(sites, "overlay=1", "overlay", overlays=["#whats-new .got-it"])
    )
    try:
        await provider._pool.pages[0].page.wait_for_selector("#whats-new")  # type: ignore[union-attr]
        answer = await provider.chat(ask("past the overlay"))
    finally:
        await provider.stop()
    assert answer.content == bot_reply("lab", 1, "past the overlay")


async def test_setup_steps_choose_a_model_on_every_new_conversation(sites: SiteServer) -> None:
    conversation = {"setup_steps": [{"select": "#model", "option": "Fast"}]}
    provider = await started(lab_spec(sites, "models=1", "models", conversation=conversation))
    try:
        first = await converse(provider, ["one", "two"], "m1")
        other = await provider.chat(ask("elsewhere"))
    finally:
        await provider.stop()
    assert first == [f"(Fast) {bot_reply('lab', 1, 'one')}", f"(Fast) {bot_reply('lab', 2, 'two')}"]
    assert other.content == f"(Fast) {bot_reply('lab', 1, 'elsewhere')}"


async def test_after_a_login_the_first_conversation_is_at_the_endpoint_url(
    sites: SiteServer,
) -> None:
    # The sign-in lands on the site's default page (/login/), not on the endpoint's own
    # page, whose URL carries an option the first session must already talk to.
    spec = site_spec(sites, "login", name="variant", credentials=good_credentials())
    spec.url = sites.url("/login/?variant=pirate")
    spec.persistent_session = False
    provider = await started(spec)
    try:
        first = await provider.chat(ask("ahoy", "first"))
    finally:
        await provider.stop()
    assert first.content == f"(pirate) {bot_reply('login', 1, 'ahoy')}"


async def test_clicks_on_older_sessions_pages_are_not_throttled(sites: SiteServer) -> None:
    """With three pages open, the older two are background tabs; a click-to-send turn on
    them took 1.5-2 s (animation frames throttled) against 0.3 s on the newest page."""
    spec = site_spec(sites, "textarea", name="three_tabs", persistent_session=False)
    provider = await started(spec)
    conversations: dict[str, Any] = {}
    took: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    try:
        for round_ in range(3):
            for session in ("a", "b", "c"):
                began = time.monotonic()
                response = await provider.chat(
                    ask(f"round {round_}", session, conversations.get(session))
                )
                took[session].append(time.monotonic() - began)
                conversations[session] = response.conversation
                assert response.content == bot_reply("textarea", round_ + 1, f"round {round_}")
    finally:
        await provider.stop()
    newest = min(took["c"][1:])
    older = max(took["a"][1:] + took["b"][1:])
    assert older < newest + 1.0, took


async def test_a_login_with_site_named_credentials_and_a_one_time_code(sites: SiteServer) -> None:
    secret = base64.b32encode(b"a shared otp secret!").decode()
    login = {
        "fields": [
            {"selector": "input[name=username]", "credential": "email"},
            {"selector": "input[name=password]", "credential": "password"},
        ],
        "after_submit": [
            {"fill": "input[name=code]", "totp": "otp_secret"},
            "form#otp button[type=submit]",
        ],
    }
    credentials = {"email": USERNAME, "password": PASSWORD, "otp_secret": secret}
    spec = site_spec(sites, "login", name="otp", credentials=credentials)
    spec.config = WebChatConfig.model_validate(merged(SITE_CONFIGS["login"], {"login": login}))
    spec.persistent_session = False
    sites.state.otp_secret = secret
    logins = sites.state.logins
    try:
        provider = await started(spec)
        try:
            answer = await provider.chat(ask("after the code"))
        finally:
            await provider.stop()
    finally:
        sites.state.otp_secret = None
    assert answer.content == bot_reply("login", 1, "after the code")
    assert sites.state.logins == logins + 1
