"""Trouble on the page is raised with a reason, never returned as an answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import psutil
import pytest
import pytest_asyncio

from providers.base import ChatRequest, Message
from providers.errors import AuthError, PageTrouble, ProviderTimeout, SessionExpired, Unavailable
from providers.web_chat.provider import WebChatProvider
from tests.web_chat.webchat_sites import PASSWORD, SiteServer, bot_reply
from tests.web_chat.webchat_support import (
    FileStateStore,
    StateReports,
    good_credentials,
    make_provider,
    site_spec,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


def ask(prompt: str, session: str | None = None, conversation=None) -> ChatRequest:
    return ChatRequest([Message("user", prompt)], session_id=session, conversation=conversation)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def textarea(sites: SiteServer) -> AsyncIterator[WebChatProvider]:
    spec = site_spec(sites, "textarea", name="trouble", overrides={"answer_timeout_s": 2.0})
    provider = make_provider(spec)
    await provider.start()
    yield provider
    await provider.stop()


async def test_error_banner_is_page_trouble(textarea: WebChatProvider) -> None:
    with pytest.raises(PageTrouble) as caught:
        await textarea.chat(ask("TROUBLE:error please", "banner"))
    assert caught.value.reason == "error_banner"
    assert "Something went wrong" in str(caught.value)
    # The banner from that turn stays on screen; it is not blamed on the next turn.
    response = await textarea.chat(ask("all good now", "banner"))
    assert response.content == bot_reply("textarea", 1, "all good now")


async def test_a_banner_that_comes_with_the_end_of_the_answer_is_trouble(
    textarea: WebChatProvider,
) -> None:
    # The answer text is complete and the controls say done; the banner appeared in the same
    # moment. The text must not be returned as an answer. Only the check made as the answer
    # looks finished sees this reliably (the periodic one sometimes does): hence several turns.
    for attempt in range(5):
        with pytest.raises(PageTrouble) as caught:
            await textarea.chat(ask(f"TROUBLE:late banner {attempt}", f"late-{attempt}"))
        assert caught.value.reason == "error_banner"
    response = await textarea.chat(ask("fine again", "late"))
    assert response.content == bot_reply("textarea", 1, "fine again")


async def test_captcha_is_page_trouble(textarea: WebChatProvider) -> None:
    with pytest.raises(PageTrouble) as caught:
        await textarea.chat(ask("TROUBLE:captcha", "captcha"))
    assert caught.value.reason == "captcha"


async def test_slow_answer_times_out(textarea: WebChatProvider) -> None:
    started = time.monotonic()
    with pytest.raises(ProviderTimeout, match="no complete answer within 2s"):
        await textarea.chat(ask("TROUBLE:slow", "slow"))
    assert time.monotonic() - started < 5


async def test_logged_out_page_logs_in_again_once(sites: SiteServer) -> None:
    reports = StateReports()
    spec = site_spec(sites, "login", name="relogin", credentials=good_credentials())
    provider = make_provider(spec, reports=reports)
    await provider.start()
    try:
        first = await provider.chat(ask("before logout", "member"))
        logins = sites.state.logins
        sites.state.expire_sessions()
        second = await provider.chat(ask("after logout", "member", first.conversation))
    finally:
        await provider.stop()
    assert sites.state.logins == logins + 1
    # The conversation survived the logout: same conversation on the site, turn 2.
    assert second.content == bot_reply("login", 2, "after logout")
    assert reports.calls == []


async def test_logged_out_without_credentials_expires_the_session(
    sites: SiteServer, tmp_path
) -> None:
    store = FileStateStore(tmp_path / "state.bin")
    logging_in = make_provider(site_spec(sites, "login", credentials=good_credentials()), store)
    await logging_in.start()
    await logging_in.stop()
    reports = StateReports()
    provider = make_provider(site_spec(sites, "login", credentials={}), store, reports)
    await provider.start()  # the restored cookies still work: no credentials needed
    try:
        assert (await provider.chat(ask("still in"))).content.startswith("[login] turn 1")
        sites.state.expire_sessions()
        with pytest.raises(SessionExpired):
            await provider.chat(ask("now out"))
        assert not (await provider.health()).ok
    finally:
        await provider.stop()
    assert reports.calls and reports.calls[-1][0] == "failed"
    assert reports.calls[-1][1].startswith("session expired")


async def test_wrong_password_fails_start_without_leaking_it(sites: SiteServer) -> None:
    secret = "not-" + PASSWORD
    spec = site_spec(sites, "login", credentials={"username": "ada", "password": secret})
    provider = make_provider(spec)
    with pytest.raises(AuthError) as caught:
        await provider.start()
    assert secret not in str(caught.value) and "login" in str(caught.value)


def browser_process(marker: str) -> psutil.Process:
    for process in psutil.Process().children(recursive=True):
        try:
            cmdline = process.cmdline()
        except psutil.Error:
            continue
        if f"--aiem-endpoint={marker}" in cmdline and not any(
            arg.startswith("--type=") for arg in cmdline
        ):
            return process
    raise LookupError(f"no browser process for {marker}")


async def test_killed_browser_is_reported_and_restartable(sites: SiteServer, tmp_path) -> None:
    reports = StateReports()
    store = FileStateStore(tmp_path / "state.bin")
    spec = site_spec(sites, "sse", name="doomed")
    provider = make_provider(spec, store, reports)
    await provider.start()
    try:
        stream = provider.stream(ask("TROUBLE:drip", "victim"))
        first = await anext(stream)
        assert first.delta.startswith("[sse] turn 1")
        browser_process("doomed").kill()
        with pytest.raises(Unavailable, match="crashed"):
            async for _chunk in stream:
                pass
        await asyncio.sleep(0.2)
        assert ("failed", "browser crashed") in reports.calls
        assert not (await provider.health()).ok
        with pytest.raises(Unavailable):
            await provider.chat(ask("while down"))
        # What the runtime does on a failed endpoint: restart it.
        await provider.stop()
        await provider.start()
        response = await provider.chat(ask("back again"))
        assert response.content == bot_reply("sse", 1, "back again")
    finally:
        await provider.stop()
