"""A new operator's path through the console served by `aiem up`, driven by real Chromium:
add an endpoint through the generated form, start it, chat in the Playground (the answer
streams in), see the Portfolio and Reports move, stop it. And a web chat endpoint added through
the same generated form, then answering through the browser engine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.console.test_portfolio_browser import CHROMIUM_ARGS, UI_TIMEOUT_MS
from tests.fixtures.upstreams import OpenAIUpstream

pytestmark = pytest.mark.browser
expect.set_options(timeout=UI_TIMEOUT_MS)


@pytest.fixture
def browser() -> Iterator[Browser]:
    executable = os.environ.get("AIEM_BROWSER_EXECUTABLE", "/usr/bin/chromium")
    if not Path(executable).exists():
        pytest.skip(f"no Chromium at {executable}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def slow_upstream() -> Iterator[OpenAIUpstream]:
    """Streams each word 150 ms apart, so the browser can see an answer grow."""
    with OpenAIUpstream(chunk_delay=0.15) as server:
        yield server


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(url)
    return page


def go(page: Page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
    expect(page.get_by_role("heading", name=title).first).to_be_visible()


def settle(page: Page) -> None:
    """Wait until the app has finished the run the last input started."""
    page.wait_for_timeout(300)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    page.wait_for_timeout(100)


def fill(page: Page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    # Commit the value to the app: Enter in a one-line input (Tab from a password box only
    # reaches its show-password button, still inside the widget), Tab out of a text area.
    box.press("Tab" if box.evaluate("e => e.tagName") == "TEXTAREA" else "Enter")
    settle(page)


def create_through_form(page: Page, base_url: str, endpoint_type: str, fields: dict[str, str]):
    page.goto(f"{base_url}/edit?type={endpoint_type}")
    expect(page.get_by_role("heading", name="Add endpoint")).to_be_visible()
    settle(page)
    for label, value in fields.items():
        fill(page, label, value)
    page.get_by_text("Start it after saving").click()
    settle(page)
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="Endpoint", exact=True)).to_be_visible()


def streamed_answer(page: Page, expected: str) -> list[str]:
    """The last assistant message's text, sampled until it reads ``expected``."""
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        messages = page.get_by_test_id("stChatMessage")
        text = messages.last.inner_text() if messages.count() else ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if expected in text:
            return seen
        time.sleep(0.03)
    raise AssertionError(f"answer never read {expected!r}; saw {seen}")


def plotted_requests(page: Page, trace_name: str) -> float:
    """Sum of the y values of one trace in the first Plotly chart (the figure's own data)."""
    plot = page.locator(".js-plotly-plot").first  # the locator reaches into shadow roots
    return plot.evaluate(
        """(plot, name) => {
            const trace = (plot.data || []).find(t => t.name === name);
            return trace ? trace.y.reduce((a, b) => a + (b || 0), 0) : -1;
        }""",
        trace_name,
    )


def test_new_operator_adds_chats_watches_and_stops(
    browser, gateway_with_console, console_api, slow_upstream
):
    base = gateway_with_console.url
    name = f"e2e-{time.time_ns() % 10**8}"
    page = open_page(browser, base + "/")
    expect(page.get_by_text("Running endpoints")).to_be_visible()

    create_through_form(page, base, "openai_api", {
        "Name *": name, "Display Name": "E2E model", "Url": slow_upstream.url,
        "Model Name": "fixture-model", "api_key": "sk-e2e-secret",
    })
    endpoint = next(e for e in console_api.get("/endpoints").json() if e["name"] == name)
    assert endpoint["state"] == "healthy" and endpoint["credential_keys"] == ["api_key"]

    page.goto(f"{base}/playground?id={endpoint['id']}")
    page.get_by_test_id("stChatInputTextArea").fill("hello from the browser")
    page.get_by_test_id("stChatInputTextArea").press("Enter")
    seen = streamed_answer(page, "turn 1: hello from the browser")
    partial = [s for s in seen if "turn" in s and "browser" not in s]
    assert partial, f"the answer appeared all at once: {seen}"
    expect(page.get_by_text("TTFT")).to_be_visible()

    page.goto(base + "/")
    row = page.locator(f".st-key-endpoint-{endpoint['id']}")
    expect(row).to_contain_text("healthy")
    expect(row).to_contain_text("100.0%")

    time.sleep(1.5)  # the metrics writer flushes buckets every second
    page.goto(base + "/reports")
    expect(page.locator(".js-plotly-plot").first).to_be_visible()
    assert plotted_requests(page, "E2E model") > 0

    page.goto(base + "/")
    row = page.locator(f".st-key-endpoint-{endpoint['id']}")
    row.get_by_role("button", name="Stop", exact=True).click()
    expect(row).to_contain_text("stopped")
    assert console_api.get(f"/endpoints/{endpoint['id']}").json()["state"] == "stopped"


def test_web_chat_endpoint_added_through_the_form(browser, gateway_with_console, console_api):
    from tests.web_chat.webchat_sites import SiteServer

    sites = SiteServer().start()
    try:
        base = gateway_with_console.url
        name = f"webchat-{time.time_ns() % 10**8}"
        page = open_page(browser, base + "/")
        create_through_form(page, base, "web_chat", {
            "Name *": name, "Url": sites.url("/textarea/"),
            "Input * (one per line)": "#prompt",
            "Assistant Message * (one per line)": ".msg.assistant",
            "Button (one per line)": "#send",
        })
        endpoint = next(e for e in console_api.get("/endpoints").json() if e["name"] == name)
        assert endpoint["config"]["input"] == ["#prompt"]
        assert endpoint["config"]["send"] == {"button": ["#send"]}
        answer = console_api.post(f"/endpoints/{endpoint['id']}/chat", json={"prompt": "hi"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["content"] == "[textarea] turn 1: you said 'hi'"
        console_api.post(f"/endpoints/{endpoint['id']}/stop").raise_for_status()
    finally:
        sites.stop()


SCREENSHOTS_ENV = "AIEM_CONSOLE_SCREENSHOTS"
SHOTS = (
    ("portfolio", "/"),
    ("endpoint", "/endpoint?id={busy}"),
    ("edit", "/edit?type=openai_api"),
    ("playground", "/playground?id={busy}"),
    ("sessions", "/sessions?endpoint={busy}"),
    ("reports", "/reports"),
    ("settings", "/settings"),
)


@pytest.mark.skipif(not os.environ.get(SCREENSHOTS_ENV), reason=f"set {SCREENSHOTS_ENV}=<dir>")
def test_screenshots_of_every_page(
    browser, gateway_with_console, console_api, make_console_endpoint, closed_port_url
):
    """Writes docs/console-<page>.png: endpoints with traffic, a broken one, a session."""
    out = Path(os.environ[SCREENSHOTS_ENV])
    out.mkdir(parents=True, exist_ok=True)
    priced = {"input_cost_per_1k": 0.15, "output_cost_per_1k": 0.6, "model_name": "gpt-4o-mini"}
    busy = make_console_endpoint(name="gpt-main", display_name="GPT-4o mini (team)",
                                 group_name="team", **priced)
    backup = make_console_endpoint(name="gpt-backup", display_name="GPT-4o mini (backup)",
                                   group_name="team", priority=200, input_cost_per_1k=0.3,
                                   output_cost_per_1k=1.2, model_name="gpt-4o-mini")
    broken = make_console_endpoint(name="local-llm", display_name="Local LLM",
                                   url=closed_port_url + "/v1", model_name="llama")
    for endpoint, requests in ((busy, 24), (backup, 8)):
        console_api.post(f"/endpoints/{endpoint['id']}/start").raise_for_status()
        for n in range(requests):
            body = {"prompt": f"Summarise support ticket #{n} in one line, please.",
                    "session_id": f"ticket-{n % 3}" if endpoint is busy else None}
            console_api.post(f"/endpoints/{endpoint['id']}/chat", json=body).raise_for_status()
    console_api.post(f"/endpoints/{broken['id']}/start").raise_for_status()
    for _ in range(3):
        console_api.post(f"/endpoints/{broken['id']}/chat", json={"prompt": "ping"})
    time.sleep(1.5)  # the metrics writer flushes every second

    page = open_page(browser, gateway_with_console.url + "/")
    for name, path in SHOTS:
        page.goto(gateway_with_console.url + path.format(busy=busy["id"]))
        page.wait_for_timeout(1500)
        settle(page)
        if name == "playground":
            box = page.get_by_test_id("stChatInputTextArea")
            box.fill("Which ticket was the most urgent?")
            box.press("Enter")
            expect(page.get_by_text("TTFT")).to_be_visible()
        if name in ("reports", "endpoint"):
            expect(page.locator(".js-plotly-plot").first).to_be_visible()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / f"console-{name}.png"), full_page=name != "reports")
        assert (out / f"console-{name}.png").stat().st_size > 10_000
