"""Sessions survive a provider restart: no second login, the same conversation continues."""

from __future__ import annotations

import json

import pytest

from providers.base import ChatRequest, Message
from tests.web_chat.webchat_sites import SiteServer, bot_reply
from tests.web_chat.webchat_support import (
    FileStateStore,
    good_credentials,
    make_provider,
    site_spec,
)

pytestmark = [pytest.mark.browser]


def ask(prompt: str, conversation=None) -> ChatRequest:
    return ChatRequest([Message("user", prompt)], session_id="keep", conversation=conversation)


async def test_restart_restores_login_and_continues_the_conversation(
    sites: SiteServer, tmp_path
) -> None:
    store = FileStateStore(tmp_path / "browser-state.bin")
    spec = site_spec(sites, "login", name="restartable", credentials=good_credentials())
    logins_before = sites.state.logins

    first_life = make_provider(spec, store)
    await first_life.start()
    try:
        one = await first_life.chat(ask("one"))
        two = await first_life.chat(ask("two", one.conversation))
    finally:
        await first_life.stop()
    assert sites.state.logins == logins_before + 1
    saved = json.loads(store.path.read_bytes())
    assert saved["storage_state"]["cookies"], "the login cookie was saved"

    second_life = make_provider(spec, store)
    await second_life.start()
    try:
        three = await second_life.chat(ask("three", two.conversation))
    finally:
        await second_life.stop()
    assert sites.state.logins == logins_before + 1, "no second login after the restart"
    assert three.content == bot_reply("login", 3, "three")
    assert three.conversation["url"] == one.conversation["url"]
    assert three.conversation["id"] == one.conversation["id"]
    assert three.conversation["turns"] == 3


async def test_without_persistent_session_nothing_is_saved(sites: SiteServer, tmp_path) -> None:
    store = FileStateStore(tmp_path / "unused.bin")
    spec = site_spec(sites, "textarea", name="ephemeral", persistent_session=False)
    provider = make_provider(spec, store)
    await provider.start()
    try:
        await provider.chat(ask("hello"))
    finally:
        await provider.stop()
    assert store.saves == 0 and not store.path.exists()
