"""The console served by `aiem up`, driven by real Chromium: a row appears, Start works."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
UI_TIMEOUT_MS = 30_000


@pytest.fixture
def browser() -> Iterator[Browser]:
    executable = os.environ.get("AIEM_BROWSER_EXECUTABLE", "/usr/bin/chromium")
    if not Path(executable).exists():
        pytest.skip(f"no Chromium at {executable}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_console(browser: Browser, url: str, *, height: int = 900) -> Page:
    page = browser.new_page(viewport={"width": 1440, "height": height})
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(url.rstrip("/") + "/")
    expect(page.get_by_text("Running endpoints")).to_be_visible()
    return page


def endpoint_row(page: Page, endpoint_id: str):
    # st.container(key="endpoint-<id>") renders with the CSS class st-key-endpoint-<id>.
    return page.locator(f".st-key-endpoint-{endpoint_id}")


def test_start_from_the_browser(browser, gateway_with_console, console_api, make_console_endpoint):
    endpoint = make_console_endpoint(display_name="Browser model")
    page = open_console(browser, gateway_with_console.url)
    row = endpoint_row(page, endpoint["id"])
    expect(row).to_contain_text("Browser model")
    expect(row).to_contain_text("stopped")

    row.get_by_role("button", name="Start", exact=True).click()

    expect(row).to_contain_text("healthy")
    expect(row.get_by_role("button", name="Start", exact=True)).to_be_disabled()
    live = console_api.get(f"/endpoints/{endpoint['id']}").json()
    assert (live["desired_state"], live["state"]) == ("running", "healthy")

    # A change made elsewhere shows up without touching the page: the fragment auto-refreshes.
    console_api.post(f"/endpoints/{endpoint['id']}/stop").raise_for_status()
    expect(row.get_by_role("button", name="Start", exact=True)).to_be_enabled(timeout=15_000)
    expect(row).to_contain_text("stopped")
