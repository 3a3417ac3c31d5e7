"""Reading a chat page: find elements, notice trouble, watch the answer grow until done.

The answer is read as it appears: a MutationObserver on this turn's answer element (see
``answer.py`` for how it is told apart from earlier messages) sends its content through a
binding exposed on the page (``window.__aiemText``) to Python, and a short poll reads it too,
in case the site swaps the element. An answer is done when a quorum of signals agree: the
stop button is gone, a done marker appeared, the send button is enabled again, a watched
attribute came back to its done value, the text has been stable for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Frame, Locator, Page

from providers.errors import PageTrouble, ProtocolError, ProviderTimeout, SessionExpired
from providers.web_chat import answer as answers
from providers.web_chat.config import (
    AttributeSignal,
    CompletionConfig,
    TroubleConfig,
    WebChatConfig,
    url_matches,
)

BINDING_NAME = "__aiemText"
FIND_POLL_S = 0.05
SLOW_CHECK_S = 0.25
OLD_CONVERSATION_POLL_S = 0.05

# Disabled as a user sees it: the property, a disabled fieldset, or aria-disabled.
IS_DISABLED_SCRIPT = """
(element) => Boolean(
  element.disabled || element.closest('fieldset[disabled]') ||
  element.getAttribute('aria-disabled') === 'true'
)
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
    if url_matches(trouble.logged_out_url_pattern, page.url):
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


@dataclass(slots=True)
class AnswerWatch:
    """The answer being read: its latest content and when what it shows last changed.

    Snapshots are compared by their visible text; the configured format (Markdown
    conversion) runs only for streaming and once for the final answer.
    """

    token: int
    format: Callable[[str], str] = answers.formatter("text")
    on_text: Callable[[str], None] | None = None
    raw: str = ""
    shown: str = ""
    changed_at: float = field(default_factory=time.monotonic)
    first_text_at: float | None = None
    # Set when the page reports a change; the reader sleeps on it between polls.
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def update(self, raw: str | None) -> None:
        self.wake.set()
        if raw is None or raw == self.raw:
            return
        self.raw = raw
        shown = answers.visible_text(raw)
        if shown == self.shown:
            return
        self.shown = shown
        self.changed_at = time.monotonic()
        if shown and self.first_text_at is None:
            self.first_text_at = self.changed_at
        if self.on_text is not None:
            self.on_text(self.format(raw))

    @property
    def text(self) -> str:
        """The answer so far in the configured format."""
        return self.format(self.raw)

    def stable_for(self) -> float:
        return (time.monotonic() - self.changed_at) * 1000


@dataclass(slots=True)
class TurnBaseline:
    """What the page showed before sending, so only what this turn adds is read."""

    probe: str
    done_markers: int
    trouble: TroubleBaseline
    # Per attribute signal: whether it has left its done state since the prompt was typed.
    attributes_left: list[bool] = field(default_factory=list)


async def turn_baseline(page: Page, scope: Scope, config: WebChatConfig, text: str) -> TurnBaseline:
    """Remember the assistant messages on screen (by identity) and the done markers."""
    await assistant_messages(scope, config).evaluate_all(answers.MARK_KNOWN_SCRIPT)
    done = await visible_count(scope, config.completion.done_marker)
    return TurnBaseline(
        probe=answers.sent_probe(text),
        done_markers=done,
        trouble=await trouble_baseline(page, scope, config.trouble),
        attributes_left=[False] * len(config.completion.attributes),
    )


# Before a new chat is asked for: the conversation's messages on screen. After it: whether
# any of them is still shown (a site may clear the old chat only after a server round trip,
# and a prompt sent before that would be cleared with it).
MARK_OLD_SCRIPT = "(elements) => { window.__aiemOld = elements; return elements.length; }"
OLD_SHOWN_SCRIPT = """
() => (window.__aiemOld || []).some((e) => e.isConnected && e.getClientRects().length > 0)
"""


async def mark_old_conversation(scope: Scope, config: WebChatConfig) -> int:
    """Remember the assistant messages on screen before a new chat; returns how many."""
    return int(await assistant_messages(scope, config).evaluate_all(MARK_OLD_SCRIPT))


async def wait_old_conversation_gone(scope: Scope, timeout_s: float) -> bool:
    """Wait until none of the remembered messages is shown; False when they stayed.

    A navigation (a new document, or a frame that was replaced) means they are gone.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            shown = await scope.evaluate(OLD_SHOWN_SCRIPT)
        except PlaywrightError:
            return True
        if not shown:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(OLD_CONVERSATION_POLL_S)


def assistant_messages(scope: Scope, config: WebChatConfig) -> Locator:
    return scope.locator(", ".join(config.assistant_message))


async def note_attributes(scope: Scope, completion: CompletionConfig, baseline) -> int:
    """Update which attribute signals left their done state; returns how many are done."""
    done = 0
    for index, signal in enumerate(completion.attributes):
        state = await attribute_done(scope, signal)
        if state is None:
            continue
        if not state:
            baseline.attributes_left[index] = True
        elif baseline.attributes_left[index]:
            done += 1
    return done


async def attribute_done(scope: Scope, signal: AttributeSignal) -> bool | None:
    """Whether the signal's element shows its done value; None when it is not there."""
    locator = scope.locator(", ".join(signal.selector)).first
    if not await locator.count():
        return None
    try:
        value = await locator.get_attribute(signal.attribute, timeout=1000)
    except PlaywrightError:
        return None
    if not signal.present:
        return value is None
    return value is not None and (signal.value is None or value == signal.value)


async def watch_document(scope: Scope, config: WebChatConfig, probe: str, token: int) -> None:
    script = answers.with_lib(answers.DOCUMENT_WATCH_SCRIPT, BINDING_NAME)
    await scope.evaluate(
        script,
        [config.assistant_message, probe, config.user_message or [], config.answer_format, token],
    )


async def stop_watching(scope: Scope) -> None:
    with contextlib.suppress(PlaywrightError):
        await scope.evaluate(answers.STOP_WATCHING_SCRIPT)


def navigated_away(exc: PlaywrightError) -> bool:
    """The page navigated under a script (a site sending a logged-out page to its login):
    the next look at the page tells what it shows now."""
    message = str(exc)
    return "context was destroyed" in message or "navigation" in message.lower()


async def find_answer(scope: Scope, config: WebChatConfig, probe: str, token: int) -> int:
    """Find (or find again) this turn's answer and observe it; 0 when it is not there yet."""
    script = answers.with_lib(answers.FIND_SCRIPT, BINDING_NAME)
    arg = [probe, config.user_message or [], config.answer_format, token]
    try:
        return int(await assistant_messages(scope, config).evaluate_all(script, arg))
    except PlaywrightError as exc:
        if navigated_away(exc):
            return 0
        raise


async def answer_content(scope: Scope, config: WebChatConfig) -> str | None:
    script = answers.with_lib(answers.READ_SCRIPT, BINDING_NAME)
    try:
        raw = await scope.evaluate(script, config.answer_format)
    except PlaywrightError as exc:
        if navigated_away(exc):
            return None
        raise
    return raw if isinstance(raw, str) else None


async def done_signals(
    scope: Scope, completion: CompletionConfig, send_button: list[str] | None, baseline, watch
) -> tuple[int, int]:
    """(signals saying done, signals available) for the answer being read."""
    said, available = 0, 1
    if watch.shown and watch.stable_for() >= completion.stable_ms:
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
    if completion.attributes:
        available += len(completion.attributes)
        said += await note_attributes(scope, completion, baseline)
    return said, available


async def send_enabled(scope: Scope, candidates: list[str]) -> bool:
    locator = scope.locator(", ".join(candidates)).filter(visible=True).first
    return await locator.count() > 0 and not await is_disabled(locator)


async def is_disabled(locator: Locator) -> bool:
    try:
        return bool(await locator.evaluate(IS_DISABLED_SCRIPT, timeout=1000))
    except PlaywrightError:
        return True  # gone between the look and the check


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
    """Wait until the answer is complete and return it; trouble and timeouts raise.

    The done signals are checked on every change the page reports; trouble markers and
    finding the answer element again (a site may swap it) only every ``SLOW_CHECK_S``,
    which keeps 20 pages answering at once affordable on two cores.
    """
    deadline = time.monotonic() + timeout_s
    poll_s = config.completion.poll_ms / 1000
    found = 0
    last_slow_check = 0.0
    send_button = config.send.first_button()
    while True:
        slow_check = time.monotonic() - last_slow_check >= SLOW_CHECK_S
        if slow_check:
            last_slow_check = time.monotonic()
            await raise_on_trouble(page, scope, config.trouble, baseline.trouble)
        if not found or slow_check:
            found = await find_answer(scope, config, baseline.probe, watch.token)
            if found:
                watch.update(await answer_content(scope, config))
        if found:
            said, available = await done_signals(
                scope, config.completion, send_button, baseline, watch
            )
            if watch.shown and said >= quorum(config.completion, available):
                # A banner that came with the end of the text makes it no answer.
                await raise_on_trouble(page, scope, config.trouble, baseline.trouble)
                watch.update(await answer_content(scope, config))
                return watch.text
        if time.monotonic() >= deadline:
            raise ProviderTimeout(f"no complete answer within {timeout_s:.0f}s")
        await next_look(watch, poll_s)


async def next_look(watch: AnswerWatch, poll_s: float) -> None:
    """Sleep until the page reports a change or the poll interval passes."""
    watch.wake.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(poll_s):
            await watch.wake.wait()


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
