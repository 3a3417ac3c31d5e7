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
SCREENSHOT_ENV = "AIEM_CONSOLE_SCREENSHOT"


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


@pytest.mark.skipif(not os.environ.get(SCREENSHOT_ENV), reason=f"set {SCREENSHOT_ENV}=<png path>")
def test_readme_screenshot(
    browser, gateway_with_console, console_api, make_console_endpoint, closed_port_url
):
    """Writes the README screenshot: endpoints with traffic, an idle one, a broken upstream."""
    priced = {"input_cost_per_1k": 0.15, "output_cost_per_1k": 0.6, "model_name": "gpt-4o-mini"}
    busy = make_console_endpoint(name="gpt-main", display_name="GPT-4o mini (team)", **priced)
    backup = make_console_endpoint(
        name="gpt-backup", display_name="GPT-4o mini (backup)", priority=200, **priced
    )
    broken = make_console_endpoint(
        name="local-llm", display_name="Local LLM", url=closed_port_url + "/v1", model_name="llama"
    )
    make_console_endpoint(
        name="claude",
        display_name="Claude Sonnet",
        endpoint_type="anthropic_api",
        url="https://api.anthropic.com",
        model_name="claude-sonnet-4",
    )
    for endpoint, requests in ((busy, 24), (backup, 6)):
        console_api.post(f"/endpoints/{endpoint['id']}/start").raise_for_status()
        for n in range(requests):
            body = {"prompt": f"Summarise support ticket #{n} in one line, please."}
            console_api.post(f"/endpoints/{endpoint['id']}/chat", json=body).raise_for_status()
    console_api.post(f"/endpoints/{broken['id']}/start").raise_for_status()
    for _ in range(3):  # nothing listens there: real failures, counted and shown
        failed = console_api.post(f"/endpoints/{broken['id']}/chat", json={"prompt": "ping"})
        assert failed.status_code >= 500

    # Tall enough for every row: the app scrolls inside its own container, not the page.
    page = open_console(browser, gateway_with_console.url, height=1000)
    expect(endpoint_row(page, busy["id"])).to_contain_text("healthy")
    page.wait_for_timeout(1000)
    page.screenshot(path=os.environ[SCREENSHOT_ENV], full_page=True)
    assert Path(os.environ[SCREENSHOT_ENV]).stat().st_size > 10_000
