"""The endpoint's Chromium: anti-detection and a coherent fingerprint kept across restarts."""

from __future__ import annotations

import pytest

from providers.base import ChatRequest, Message
from providers.web_chat.browser import FINGERPRINTS, SavedState, proxy_settings
from tests.web_chat.webchat_sites import SiteServer
from tests.web_chat.webchat_support import FileStateStore, make_provider, site_spec

pytestmark = [pytest.mark.browser]

PROBE = """() => ({
  webdriver: navigator.webdriver,
  userAgent: navigator.userAgent,
  platform: navigator.platform,
  language: navigator.language,
  width: window.innerWidth,
  timezone: Intl.DateTimeFormat().resolvedOptions().timeZone,
})"""


async def page_facts(provider) -> dict:
    page = provider._pool.pages[0].page
    return await page.evaluate(PROBE)


async def test_anti_detection_and_fingerprint_survive_restart(sites: SiteServer, tmp_path) -> None:
    store = FileStateStore(tmp_path / "state.bin")
    spec = site_spec(sites, "textarea", name="stealthy")
    spec.browser_config = {"headless": True, "anti_detection": True, "fingerprint_rotation": True}
    facts = []
    for _life in range(2):
        provider = make_provider(spec, store)
        await provider.start()
        try:
            await provider.chat(ChatRequest([Message("user", "hi")], session_id="s"))
            facts.append(await page_facts(provider))
        finally:
            await provider.stop()
    first, second = facts
    assert first["webdriver"] in (None, False)
    assert "Headless" not in first["userAgent"]
    fingerprint = SavedState.from_bytes(store.path.read_bytes()).fingerprint
    assert fingerprint in FINGERPRINTS and fingerprint.ua_os in first["userAgent"]
    assert first["platform"] == fingerprint.platform
    assert first["language"] == fingerprint.locale
    assert first["width"] == fingerprint.width
    assert first["timezone"] == fingerprint.timezone
    assert second == first, "the restored context keeps the fingerprint its cookies belong to"


async def test_explicit_browser_settings_win(sites: SiteServer) -> None:
    spec = site_spec(sites, "textarea", name="explicit", persistent_session=False)
    spec.browser_config = {
        "headless": True,
        "user_agent": "ExampleAgent/1.0",
        "viewport": {"width": 800, "height": 600},
        "locale": "fr-FR",
        "timezone": "Asia/Tokyo",
    }
    provider = make_provider(spec)
    await provider.start()
    try:
        facts = await page_facts(provider)
    finally:
        await provider.stop()
    assert facts["userAgent"] == "ExampleAgent/1.0"
    assert facts["width"] == 800 and facts["language"] == "fr-FR"
    assert facts["timezone"] == "Asia/Tokyo"


def test_saved_state_round_trip_and_garbage() -> None:
    state = SavedState(storage_state={"cookies": [], "origins": []}, fingerprint=FINGERPRINTS[0])
    assert SavedState.from_bytes(state.to_bytes()) == state
    assert SavedState.from_bytes(b"not json") == SavedState()
    assert SavedState.from_bytes(None) == SavedState()


def test_proxy_credentials_move_out_of_the_url() -> None:
    proxy = proxy_settings("http://user:p%40ss@proxy.local:3128")
    assert proxy == {
        "server": "http://proxy.local:3128",
        "username": "user",
        "password": "p@ss",
    }
    assert proxy_settings(None) is None
