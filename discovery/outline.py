"""The evidence screenshot: the chosen input, send control and answer outlined in colour."""

from __future__ import annotations

from typing import Any

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Frame, Page

COLOURS = {"input": "#e53935", "send": "#1e88e5", "answer": "#43a047"}

OUTLINE_SCRIPT = """
(el, colour) => {
  el.__aiemOutline = el.style.outline;
  el.style.outline = `3px solid ${colour}`;
  el.style.outlineOffset = '2px';
}
"""
CLEAR_SCRIPT = "(el) => { el.style.outline = el.__aiemOutline || ''; }"


def outlined_elements(config: dict[str, Any]) -> list[tuple[str, str]]:
    targets = [("input", config["input"][0])]
    button = (config.get("send") or {}).get("button")
    if button:
        targets.append(("send", button[0]))
    answers = config.get("assistant_message") or []
    if answers:
        targets.append(("answer", answers[0]))
    return targets


async def outlined_screenshot(
    page: Page, scope: Page | Frame, config: dict[str, Any]
) -> bytes | None:
    marked = []
    try:
        for role, selector in outlined_elements(config):
            locator = scope.locator(selector).last
            if await locator.count():
                await locator.evaluate(OUTLINE_SCRIPT, COLOURS[role])
                marked.append(locator)
        return await page.screenshot(type="png", timeout=5000)
    except PlaywrightError:
        return None
    finally:
        for locator in marked:
            try:
                await locator.evaluate(CLEAR_SCRIPT)
            except PlaywrightError:
                pass
