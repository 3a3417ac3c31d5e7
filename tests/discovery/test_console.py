"""The Discovery page: AppTest against the real API, and a Chromium run of `aiem up`."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect, sync_playwright
from streamlit.testing.v1 import AppTest

from tests.discovery.conftest import wait_done

PAGE = Path(__file__).resolve().parents[2] / "console" / "pages" / "discovery.py"
SCREENSHOT_ENV = "AIEM_DISCOVERY_SCREENSHOT"
UI_TIMEOUT_MS = 60_000


@pytest.fixture
def page_env(monkeypatch: pytest.MonkeyPatch, discovery_gateway) -> None:
    monkeypatch.setenv("AIEM_API_URL", discovery_gateway.url)
    monkeypatch.delenv("AIEM_ADMIN_TOKEN", raising=False)


def run_page() -> AppTest:
    return AppTest.from_file(str(PAGE), default_timeout=30).run()


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


@pytest.mark.browser
def test_start_review_and_approve(page_env, api, discovery_sites):
    url = discovery_sites.url("/iframe/")
    at = run_page()
    assert not at.exception
    at.text_input[0].input(url)
    button(at, "Discover").click().run()
    assert not at.exception
    assert any(f"Discovery of {url} started." in s.value for s in at.success)

    draft_id = at.session_state["discovery_selected"]
    assert wait_done(api, draft_id)["status"] == "ready"
    at.run()
    assert any(s.value.startswith("Ready") for s in at.success)
    assert any(m.label == "Probe passed" and m.value == "yes" for m in at.metric)
    config_box = at.text_area(key=f"config-{draft_id}")
    assert '"frame"' in config_box.value

    name = f"console-found-{uuid.uuid4().hex[:6]}"
    at.text_input(key=f"name-{draft_id}").input(name)
    button(at, "Approve").click().run()
    assert not at.exception
    assert any(f"Endpoint {name} created." in s.value for s in at.success)
    endpoint = next(e for e in api.get("/endpoints").json() if e["name"] == name)
    assert endpoint["discovered_by_ai"] is True and endpoint["state"] == "healthy"
    api.post(f"/endpoints/{endpoint['id']}/stop")


def test_invalid_json_edit_is_refused_without_a_call(page_env, api):
    # A finished draft (an unreachable page fails fast) is enough to see the page's guards.
    at = run_page()
    at.text_input[0].input("ftp://example.com/")
    button(at, "Discover").click().run()
    assert any("only http and https" in e.value for e in at.error)


@pytest.fixture
def browser() -> Iterator[Browser]:
    executable = os.environ.get("AIEM_BROWSER_EXECUTABLE", "/usr/bin/chromium")
    if not Path(executable).exists():
        pytest.skip(f"no Chromium at {executable}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.mark.browser
def test_discover_approve_and_chat_in_chromium(browser, gateway_factory, discovery_sites):
    env = {
        "AIEM_DISCOVERY_ALLOW_PRIVATE": "true",
        "AIEM_BROWSER_EXECUTABLE": os.environ.get("AIEM_BROWSER_EXECUTABLE", "/usr/bin/chromium"),
    }
    gateway = gateway_factory(console=True, env=env)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(gateway.url + "/")
    page.get_by_role("link", name="Discovery").click()
    page.get_by_label("Chat URL").fill(discovery_sites.url("/decoys/"))
    page.get_by_role("button", name="Discover").click()
    expect(page.get_by_text("Ready: the draft passed its probe")).to_be_visible(
        timeout=UI_TIMEOUT_MS
    )
    expect(page.get_by_role("img").first).to_be_visible(timeout=UI_TIMEOUT_MS)

    name = f"ui-found-{uuid.uuid4().hex[:6]}"
    page.get_by_label("Endpoint name", exact=True).fill(name)
    if os.environ.get(SCREENSHOT_ENV):
        page.screenshot(path=os.environ[SCREENSHOT_ENV], full_page=True)
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_text(f"Endpoint {name} created.")).to_be_visible(timeout=UI_TIMEOUT_MS)

    with httpx.Client(base_url=gateway.url, timeout=60) as api:
        endpoint = next(e for e in api.get("/endpoints").json() if e["name"] == name)
        answer = api.post(f"/endpoints/{endpoint['id']}/chat", json={"prompt": "hi from ui"})
        assert answer.status_code == 200 and answer.json()["content"].startswith("Reply 1:")
        api.post(f"/endpoints/{endpoint['id']}/stop")


def test_page_says_when_the_api_is_unreachable(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AIEM_API_URL", f"http://127.0.0.1:{port}")
    # Through the console's navigation, as an operator reaches it.
    at = AppTest.from_file(str(PAGE.parents[1] / "app.py"), default_timeout=30)
    at.switch_page("pages/discovery.py")
    at.run()
    assert not at.exception
    assert any("Cannot reach the management API" in e.value for e in at.error)
