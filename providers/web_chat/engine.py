"""Reading and writing a chat page: find elements, type, send, watch the answer grow.

The answer is read as it appears: a MutationObserver on the newest assistant message sends
its text through a binding exposed on the page (``window.__aiemText``) to Python, and a
short poll reads it too, in case the site swaps the element. An answer is done when a quorum
of signals agree: the stop button is gone, a done marker appeared, the send button is
enabled again, the text has been stable for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Frame, Locator, Page

from providers.errors import PageTrouble, ProtocolError, ProviderTimeout, SessionExpired
from providers.web_chat.config import CompletionConfig, TroubleConfig, WebChatConfig

BINDING_NAME = "__aiemText"
FIND_POLL_S = 0.05
SLOW_CHECK_S = 0.25

# Installed on the answer element. Mutations within one task are coalesced into one
# message, so a burst of DOM updates costs one round trip.
OBSERVE_SCRIPT = """
(element, token) => {
  if (element.__aiemObserver) element.__aiemObserver.disconnect();
  let queued = false;
  const send = () => { queued = false; window.BINDING(token, element.innerText); };
  const observer = new MutationObserver(() => {
    if (!queued) { queued = true; queueMicrotask(send); }
  });
  observer.observe(element, {childList: true, subtree: true, characterData: true});
  element.__aiemObserver = observer;
  send();
}
""".replace("BINDING", BINDING_NAME)

# Installed on the chat's document before sending, so the first words of an answer are
# seen the moment its element appears. Selectors the browser's own querySelectorAll cannot
# read, and answers inside shadow roots, are left to the element observer above.
DOCUMENT_WATCH_SCRIPT = """
([selectors, counts, token]) => {
  if (window.__aiemDocWatch) window.__aiemDocWatch.disconnect();
  let queued = false, last = null;
  const newest = () => {
    for (const selector of selectors) {
      let found;
      try { found = document.querySelectorAll(selector); } catch (e) { continue; }
      if (found.length > (counts[selector] || 0)) return found[found.length - 1];
    }
    return null;
  };
  // Every change is reported (with the answer's text, or null before it exists) so the
  // reader re-checks the done signals at once instead of at its next poll.
  const send = () => {
    queued = false;
    const element = newest();
    window.BINDING(token, element === null ? null : element.innerText);
  };
  const observer = new MutationObserver(() => {
    if (!queued) { queued = true; queueMicrotask(send); }
  });
  observer.observe(document.documentElement, {
    childList: true, subtree: true, characterData: true, attributes: true,
  });
  window.__aiemDocWatch = observer;
}
""".replace("BINDING", BINDING_NAME)

STOP_WATCHING_SCRIPT = """
() => {
  if (window.__aiemDocWatch) { window.__aiemDocWatch.disconnect(); window.__aiemDocWatch = null; }
}
"""

Scope = Page | Frame


class Trouble:
    """Names of the conditions a page can be in instead of answering."""

    LOGGED_OUT = "logged_out"
    CAPTCHA = "captcha"
    ERROR_BANNER = "error_banner"


def ranked(candidates: list[str], preferred: str | None) -> list[str]:
    """Candidates with the one that matched last time first."""
    if preferred in candidates:
        return [preferred, *(c for c in candidates if c != preferred)]
    return list(candidates)


async def find_visible(
    scope: Scope,
    candidates: list[str],
    timeout_s: float,
    *,
    role: str,
    notes: dict[str, str] | None = None,
) -> Locator:
    """The first visible element of the ranked candidates, waiting up to ``timeout_s``."""
    notes = notes if notes is not None else {}
    order = ranked(candidates, notes.get(role))
    deadline = time.monotonic() + timeout_s
    while True:
        for selector in order:
            locator = scope.locator(selector).first
            if await locator.is_visible():
                notes[role] = selector
                return locator
        if time.monotonic() >= deadline:
            raise ProtocolError(f"page has no visible {role} (tried {len(order)} selectors)")
        await asyncio.sleep(FIND_POLL_S)


async def visible_count(scope: Scope, candidates: list[str] | None) -> int:
    if not candidates:
        return 0
    return await scope.locator(", ".join(candidates)).filter(visible=True).count()


async def chat_scope(page: Page, config: WebChatConfig, notes: dict[str, str]) -> Scope:
    """The frame that holds the chat: the page itself, or the configured iframe's document."""
    if not config.frame:
        return page
    holder = await find_visible(
        page, config.frame, config.page_timeout_s, role="chat frame", notes=notes
    )
    handle = await holder.element_handle()
    frame = await handle.content_frame() if handle else None
    if frame is None:
        raise ProtocolError("the chat frame element holds no document")
    await frame.wait_for_load_state("domcontentloaded")
    return frame


@dataclass(slots=True)
class TroubleBaseline:
    """Trouble markers already on screen before a turn, so stale ones are not blamed on it."""

    error_banners: int = 0


async def logged_out(page: Page, trouble: TroubleConfig) -> bool:
    pattern = trouble.logged_out_url_pattern
    if pattern and re.search(pattern, page.url):
        return True
    return await visible_count(page, trouble.logged_out) > 0


async def find_trouble(
    page: Page, scope: Scope, trouble: TroubleConfig, baseline: TroubleBaseline | None = None
) -> str | None:
    """Which trouble the page shows, if any; the main page and the chat frame are checked."""
    if await logged_out(page, trouble):
        return Trouble.LOGGED_OUT
    scopes = [page] if scope is page else [page, scope]
    for where in scopes:
        if await visible_count(where, trouble.captcha):
            return Trouble.CAPTCHA
    banners = 0
    for where in scopes:
        banners += await visible_count(where, trouble.error_banner)
    if banners > (baseline.error_banners if baseline else 0):
        return Trouble.ERROR_BANNER
    return None


async def trouble_baseline(page: Page, scope: Scope, trouble: TroubleConfig) -> TroubleBaseline:
    scopes = [page] if scope is page else [page, scope]
    banners = 0
    for where in scopes:
        banners += await visible_count(where, trouble.error_banner)
    return TroubleBaseline(error_banners=banners)


async def page_trouble_text(scope: Scope, candidates: list[str] | None) -> str:
    """The visible banner's text, cut short: it names the site's complaint, not a secret."""
    if not candidates:
        return ""
    try:
        locator = scope.locator(", ".join(candidates)).filter(visible=True).first
        return (await locator.inner_text(timeout=500)).strip()[:200]
    except PlaywrightError:
        return ""


async def type_prompt(page: Page, field_: Locator, text: str, method: str) -> None:
    if method == "insert_text":
        await field_.click()
        await field_.press("ControlOrMeta+a")
        await field_.press("Delete")
        await page.keyboard.insert_text(text)
    else:
        await field_.fill(text)


@dataclass(slots=True)
class AnswerWatch:
    """The answer being read: its latest text and when it last changed."""

    token: int
    on_text: Callable[[str], None] | None = None
    text: str = ""
    changed_at: float = field(default_factory=time.monotonic)
    first_text_at: float | None = None
    # Set when the page reports a change; the reader sleeps on it between polls.
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def update(self, raw: str | None) -> None:
        self.wake.set()
        if raw is None:
            return
        text = raw.lstrip()
        if text == self.text:
            return
        self.text = text
        self.changed_at = time.monotonic()
        if text and self.first_text_at is None:
            self.first_text_at = self.changed_at
        if self.on_text is not None:
            self.on_text(text)

    def stable_for(self) -> float:
        return (time.monotonic() - self.changed_at) * 1000


@dataclass(slots=True)
class TurnBaseline:
    """Counts taken before sending, so only what this turn adds is read."""

    messages: dict[str, int]
    done_markers: int
    trouble: TroubleBaseline


async def turn_baseline(page: Page, scope: Scope, config: WebChatConfig) -> TurnBaseline:
    messages = {sel: await scope.locator(sel).count() for sel in config.assistant_message}
    done = await visible_count(scope, config.completion.done_marker)
    return TurnBaseline(messages, done, await trouble_baseline(page, scope, config.trouble))


async def send_prompt(page: Page, scope: Scope, config: WebChatConfig, text: str, notes) -> None:
    field_ = await find_visible(
        scope, config.input, config.page_timeout_s, role="input", notes=notes
    )
    await type_prompt(page, field_, text, config.input_method)
    if config.send.button:
        button = await find_visible(
            scope, config.send.button, config.page_timeout_s, role="send button", notes=notes
        )
        await button.click()
    else:
        await field_.press(config.send.key)


async def new_answer(
    scope: Scope, config: WebChatConfig, baseline: TurnBaseline
) -> tuple[Locator, Locator] | None:
    """(all messages, the newest) once this turn has added an assistant message, else None."""
    for selector in config.assistant_message:
        messages = scope.locator(selector)
        count = await messages.count()
        if count > baseline.messages.get(selector, 0):
            return messages, messages.last
    return None


async def watch_document(scope: Scope, selectors: list[str], baseline, token: int) -> None:
    await scope.evaluate(DOCUMENT_WATCH_SCRIPT, [selectors, baseline.messages, token])


async def stop_watching(scope: Scope) -> None:
    with contextlib.suppress(PlaywrightError):
        await scope.evaluate(STOP_WATCHING_SCRIPT)


async def observe(answer: Locator, token: int) -> None:
    handle = await answer.element_handle(timeout=2000)
    await handle.evaluate(OBSERVE_SCRIPT, token)


async def done_signals(
    scope: Scope, completion: CompletionConfig, send_button: list[str] | None, baseline, watch
) -> tuple[int, int]:
    """(signals saying done, signals available) for the answer being read."""
    said, available = 0, 1
    if watch.text and watch.stable_for() >= completion.stable_ms:
        said += 1
    if completion.stop_button:
        available += 1
        said += await visible_count(scope, completion.stop_button) == 0
    if completion.done_marker:
        available += 1
        said += await visible_count(scope, completion.done_marker) > baseline.done_markers
    if completion.send_enabled and send_button:
        available += 1
        said += await send_enabled(scope, send_button)
    return said, available


async def send_enabled(scope: Scope, candidates: list[str]) -> bool:
    locator = scope.locator(", ".join(candidates)).filter(visible=True).first
    return await locator.count() > 0 and await locator.is_enabled()


def quorum(completion: CompletionConfig, available: int) -> int:
    wanted = completion.quorum if completion.quorum is not None else 2
    return max(1, min(wanted, available))


async def read_answer(
    page: Page,
    scope: Scope,
    config: WebChatConfig,
    baseline: TurnBaseline,
    watch: AnswerWatch,
    timeout_s: float,
) -> str:
    """Wait until the answer is complete and return its text; trouble and timeouts raise.

    The done signals are checked on every change the page reports; trouble markers and
    the element bookkeeping only every ``SLOW_CHECK_S``, which keeps 20 pages answering
    at once affordable on two cores.
    """
    deadline = time.monotonic() + timeout_s
    poll_s = config.completion.poll_ms / 1000
    found: tuple[Locator, Locator] | None = None
    observed_count = -1
    last_slow_check = 0.0
    while True:
        slow_check = time.monotonic() - last_slow_check >= SLOW_CHECK_S
        if slow_check:
            last_slow_check = time.monotonic()
            await raise_on_trouble(page, scope, config.trouble, baseline.trouble)
        if found is None:
            found = await new_answer(scope, config, baseline)
        if found is not None:
            messages, answer = found
            if slow_check or observed_count < 0:
                observed_count = await keep_observing(messages, answer, watch, observed_count)
                watch.update(await answer.inner_text())
            said, available = await done_signals(
                scope, config.completion, config.send.button, baseline, watch
            )
            if watch.text and said >= quorum(config.completion, available):
                # A banner that came with the end of the text makes it no answer.
                await raise_on_trouble(page, scope, config.trouble, baseline.trouble)
                return (await answer.inner_text()).strip()
        if time.monotonic() >= deadline:
            raise ProviderTimeout(f"no complete answer within {timeout_s:.0f}s")
        await next_look(watch, poll_s)


async def next_look(watch: AnswerWatch, poll_s: float) -> None:
    """Sleep until the page reports a change or the poll interval passes."""
    watch.wake.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(poll_s):
            await watch.wake.wait()


async def keep_observing(
    messages: Locator, answer: Locator, watch: AnswerWatch, observed: int
) -> int:
    """(Re)install the observer when the answer element is new or another one was added."""
    count = await messages.count()
    if count != observed:
        try:
            await observe(answer, watch.token)
        except PlaywrightError:
            return -1  # element swapped out under us; the poll still reads the text
    return count


async def raise_on_trouble(page: Page, scope: Scope, trouble: TroubleConfig, baseline) -> None:
    found = await find_trouble(page, scope, trouble, baseline)
    if found is None:
        return
    if found == Trouble.LOGGED_OUT:
        raise SessionExpired("the chat page shows a logged-out page")
    banner = await page_trouble_text(
        scope, trouble.captcha if found == Trouble.CAPTCHA else trouble.error_banner
    )
    detail = f": {banner}" if banner else ""
    raise PageTrouble(f"the chat page shows a {found.replace('_', ' ')}{detail}", reason=found)


def transcript(messages, prompt: str) -> str:
    """Earlier turns as plain text, for a conversation the site has not seen."""
    lines = []
    for message in messages[:-1] if messages and messages[-1].content == prompt else messages:
        lines.append(f"{message.role.capitalize()}: {message.content}")
    lines.append(f"User: {prompt}")
    return "\n\n".join(lines)
