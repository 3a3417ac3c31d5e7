"""Step 1, crawl: load the page in Chromium (the web chat engine's browser setup), log in when
a login form shows and credentials were given, let the app settle, and capture every
document: the page, its open shadow roots and its same-origin iframes, plus a screenshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Frame, Page

from discovery.errors import Unreachable, UnsafeUrl
from discovery.safety import AddressPolicy, origin_of, same_origin
from providers.web_chat.browser import BrowserSession, SavedState, first_line
from providers.web_chat.config import BrowserConfig

SNAPSHOT_SCRIPT = (Path(__file__).with_name("snapshot.js")).read_text()
MAX_ELEMENTS = 6000
MAX_CHARS = 3_000_000
MAX_FRAMES = 8
SETTLE_QUIET_S = 0.5
SETTLE_MAX_S = 5.0

# Counts DOM changes so "settled" means nothing changed for a while (apps render late).
MUTATION_COUNTER = """
() => {
  if (window.__aiemMutations === undefined) {
    window.__aiemMutations = 0;
    new MutationObserver((m) => { window.__aiemMutations += m.length; })
      .observe(document.documentElement, {childList: true, subtree: true, attributes: true});
  }
  return window.__aiemMutations;
}
"""


@dataclass(slots=True)
class FrameDoc:
    """One captured document: index 0 is the page, the others same-origin iframes."""

    index: int
    url: str
    html: str
    frame: Frame | None = None
    # Facts of the <iframe> element in the page, to build the config's `frame` selector.
    holder: dict[str, Any] | None = None
    truncated: bool = False


@dataclass(slots=True)
class Snapshot:
    url: str
    title: str
    width: int
    height: int
    docs: list[FrameDoc] = field(default_factory=list)
    screenshot: bytes | None = None


class CrawlSession:
    """A browser and one page on the URL, kept open for validation and the probe."""

    def __init__(self, url: str, policy: AddressPolicy, *, page_timeout_s: float = 20.0) -> None:
        self.url = url
        self.policy = policy
        self.origin = origin_of(url)
        self.page_timeout_s = page_timeout_s
        self._session = BrowserSession(BrowserConfig(headless=True), marker="discovery")
        self.page: Page | None = None

    async def __aenter__(self) -> CrawlSession:
        await self._session.open(SavedState(), on_disconnect=lambda: None)
        assert self._session.context is not None
        await self._session.context.route("**/*", self.policy.route)
        self.page = await self._session.context.new_page()
        self.page.set_default_timeout(self.page_timeout_s * 1000)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._session.close()

    async def load(self, url: str | None = None) -> None:
        """Open the URL (the start URL by default) and wait for the app to settle."""
        assert self.page is not None
        try:
            await self.page.goto(url or self.url, wait_until="domcontentloaded")
        except PlaywrightError as exc:
            raise Unreachable(f"unreachable: {first_line(exc)}") from None
        await self.check_final_url()
        await self.settle()

    async def check_final_url(self) -> None:
        """Redirects are checked again: the page must still be allowed and on its origin."""
        assert self.page is not None
        final = self.page.url
        await self.policy.check_url(final)
        if not same_origin(final, self.origin):
            raise UnsafeUrl(f"the page redirected off its origin to {origin_of(final)}")

    async def settle(self, quiet_s: float = SETTLE_QUIET_S, max_s: float = SETTLE_MAX_S) -> None:
        assert self.page is not None
        with contextlib.suppress(PlaywrightError):
            await self.page.wait_for_load_state("load", timeout=max_s * 1000)
        deadline = time.monotonic() + max_s
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            try:
                count = await self.page.evaluate(MUTATION_COUNTER)
            except PlaywrightError:
                count = -2  # navigating: not settled
            if count != last:
                last, quiet_since = count, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                return
            await asyncio.sleep(0.1)

    async def capture(self) -> Snapshot:
        assert self.page is not None
        page = self.page
        main = await page.evaluate(SNAPSHOT_SCRIPT, [MAX_ELEMENTS, MAX_CHARS])
        snapshot = Snapshot(page.url, main["title"], main["width"], main["height"])
        snapshot.docs.append(
            FrameDoc(0, page.url, main["html"], page.main_frame, None, main["truncated"])
        )
        for frame in self.child_frames():
            doc = await self._capture_frame(frame, len(snapshot.docs))
            if doc is not None:
                snapshot.docs.append(doc)
        snapshot.screenshot = await self.screenshot()
        return snapshot

    def child_frames(self) -> list[Frame]:
        """Same-origin iframes, up to a limit: cross-origin ones are other sites."""
        assert self.page is not None
        frames = [f for f in self.page.frames if f is not self.page.main_frame]
        return [f for f in frames if f.url and same_origin(f.url, self.origin)][:MAX_FRAMES]

    async def _capture_frame(self, frame: Frame, index: int) -> FrameDoc | None:
        try:
            holder = await frame.frame_element()
            facts = await holder.evaluate(ELEMENT_FACTS_SCRIPT)
            if not facts.get("visible"):
                return None
            data = await frame.evaluate(SNAPSHOT_SCRIPT, [MAX_ELEMENTS, MAX_CHARS])
        except PlaywrightError:
            return None  # the frame went away while we looked
        return FrameDoc(index, frame.url, data["html"], frame, facts, data["truncated"])

    async def screenshot(self) -> bytes | None:
        assert self.page is not None
        try:
            return await self.page.screenshot(type="png", timeout=5000)
        except PlaywrightError:
            return None


# Facts of one element (and its parents) for the selector builder; used on live elements.
ELEMENT_FACTS_SCRIPT = """
(el) => {
  const facts = (e, depth) => {
    if (!e || e.nodeType !== 1) {
      return e && e.host ? {tag: 'aiem-shadow', attrs: {'data-aiem-shadow-root': '1'}} : null;
    }
    const attrs = {};
    for (const a of e.attributes) {
      if (a.name !== 'style' && a.name !== 'value' && !a.name.startsWith('on')) {
        attrs[a.name] = a.value.slice(0, 300);
      }
    }
    const parent = e.parentNode;
    return {
      tag: e.tagName.toLowerCase(), attrs, classes: [...e.classList],
      text: (e.innerText || '').trim().slice(0, 200),
      parent: depth < 3 ? facts(parent, depth + 1) : null,
    };
  };
  const rect = el.getBoundingClientRect();
  return {...facts(el, 0), visible: rect.width > 4 && rect.height > 4};
}
"""
