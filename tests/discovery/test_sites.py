"""Heuristic discovery (no LLM) of discovery's own fixture sites, in real Chromium.

Each site is built differently; every draft must pass its own live probe: the engine
sends two messages and reads two different answers of one conversation.
"""

from __future__ import annotations

import re
import socket

import pytest

from discovery import discover
from discovery.selectors import is_hashed_name
from tests.discovery.site_server import EMAIL, PASSWORD

pytestmark = pytest.mark.browser

SITES = ["hashed", "decoys", "divbutton", "streaming", "login", "shadow", "iframe", "convurl"]
TIMINGS: dict[str, dict[str, float]] = {}


def all_selectors(config: dict) -> list[str]:
    found: list[str] = []

    def walk(value):
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if key not in ("url", "url_pattern", "key", "credential"):
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(config)
    return found


def check_site(site: str, config: dict, result) -> None:
    """What each site's draft must have learned about it."""
    if site == "hashed":
        classes = re.findall(r"\.([A-Za-z0-9_-]+)", " ".join(all_selectors(config)))
        assert classes == [] or not any(is_hashed_name(c) for c in classes)
        assert config["assistant_message"][0] == 'div[data-role="assistant"]'
    elif site == "decoys":
        assert 'textarea[name="message"]' in config["input"]
        assert not any("search" in s or "email" in s or "feedback" in s for s in config["input"])
        assert config["send"]["button"][0] == "button#send"
    elif site == "divbutton":
        assert config["input_method"] == "insert_text"
        assert config["send"]["button"][0] == 'div[aria-label="Send"]'
        assert config["completion"]["send_enabled"] is True
    elif site == "streaming":
        assert config["send"] == {"key": "Enter"}
        assert config["completion"]["stop_button"][0] == "button#halt"
        assert "stop_control_gone" in result.probe["signals_fired"]
    elif site == "login":
        fields = {f["credential"]: f["selector"][0] for f in config["login"]["fields"]}
        assert fields == {"username": 'input[name="email"]', "password": 'input[name="pass"]'}
        assert result.logged_in
    elif site == "iframe":
        assert config["frame"][0] == 'iframe[title="Assistant"]'
    elif site == "convurl":
        pattern = config["conversation"]["url_pattern"]
        assert re.search(pattern, result.probe["engine"]["conversation_url"])
        assert config["conversation"]["new_button"][0] == "button#new-chat"


@pytest.mark.parametrize("site", SITES)
async def test_heuristic_draft_passes_its_probe(site, discovery_sites):
    credentials = {"username": EMAIL, "password": PASSWORD} if site == "login" else None
    steps: list[str] = []
    result = await discover(
        discovery_sites.url(f"/{site}/"), credentials=credentials, on_step=steps.append
    )

    assert (result.status, result.reason) == ("ready", ""), result.message
    assert result.probe_passed and result.config is not None
    turns = result.probe["engine"]["turns"]
    assert turns[0]["answer_read"].startswith("Reply ")
    assert turns[1]["answer_read"].startswith("Reply ")
    assert turns[0]["answer_read"] != turns[1]["answer_read"]
    assert steps[:4] == ["crawling", "drafting", "validating", "probing"]
    assert 0.5 <= result.confidence <= 0.99
    assert result.screenshot and result.screenshot.startswith(b"\x89PNG")
    assert {"crawl", "reduce", "validate", "probe", "engine_probe", "total"} <= set(result.timings)
    assert result.candidates and any(c["kind"] == "input" for c in result.candidates)
    check_site(site, result.config, result)
    TIMINGS[site] = result.timings
    print(f"\n{site}: {result.timings}")


async def test_page_without_a_chat_fails_clearly(discovery_sites):
    result = await discover(discovery_sites.url("/nochat/"))
    assert (result.status, result.reason) == ("failed", "no_chat")
    assert result.message == "no chat input found on the page"
    assert result.config is None


async def test_login_wall_without_credentials_asks_for_them(discovery_sites):
    result = await discover(discovery_sites.url("/login/"))
    assert (result.status, result.reason) == ("failed", "login_required")
    assert "give credentials" in result.message


async def test_wrong_password_is_a_clear_failure_and_never_echoed(discovery_sites):
    secret = "not-the-password-93721"
    result = await discover(
        discovery_sites.url("/login/"), credentials={"username": EMAIL, "password": secret}
    )
    assert result.status == "failed" and "login was refused" in result.message
    assert secret not in repr(result.evidence())


async def test_unreachable_host_fails_quickly():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await discover(f"http://127.0.0.1:{port}/")
    assert (result.status, result.reason) == ("failed", "unreachable")
    assert result.timings["total"] < 15


async def test_loopback_is_refused_unless_allowed(discovery_sites):
    result = await discover(discovery_sites.url("/hashed/"), allow_private=False)
    assert (result.status, result.reason) == ("failed", "unsafe_url")
    assert "AIEM_DISCOVERY_ALLOW_PRIVATE" in result.message


async def test_analysis_only_returns_candidates_without_a_config(discovery_sites):
    result = await discover(discovery_sites.url("/decoys/"), generate_config=False)
    assert result.status == "analyzed" and result.config is None
    kinds = {c["kind"] for c in result.candidates}
    assert {"input", "button"} <= kinds
