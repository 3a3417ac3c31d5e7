"""Acting on a chat page: clicks, config steps, overlays in the way, and sending a prompt.

Every click goes through ``click``: the element is first found visible (and, for a send
control, enabled) by our own checks, then clicked without Playwright's actionability wait.
That wait runs on animation frames, which Chromium throttles to about one a second on every
page but the front one; with several chat sessions open, each click on an older session's
page would cost a second or two. An overlay that would swallow a click is closed first
(``dismiss_overlays``), and a send that did not take is noticed (the input still holds the
prompt) and passed to the next send method.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import struct
import time
from collections.abc import Awaitable, Callable

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Locator, Page

from providers.errors import ProtocolError
from providers.web_chat.config import Overlay, SendMethod, Step, WebChatConfig
from providers.web_chat.engine import Scope, find_visible, is_disabled, visible_count

ENABLED_POLL_S = 0.05
CONFIRM_POLL_S = 0.05

# The value of a <select>'s option named by its label, text or value.
OPTION_VALUE_SCRIPT = """
(select, option) => {
  for (const o of select.options) {
    if (o.label === option || o.text.trim() === option || o.value === option) return o.value;
  }
  return null;
}
"""

# What the input holds now: a form field's value or an editor's text.
INPUT_TEXT_SCRIPT = """
(element) => ('value' in element && typeof element.value === 'string')
  ? element.value : element.innerText
"""


# What sits on top of an element's centre, when it is not the element (or part of it):
# the check Playwright's own click makes before it clicks, made once instead of retried.
COVER_SCRIPT = """
(element) => {
  const box = element.getBoundingClientRect();
  const x = box.left + box.width / 2, y = box.top + box.height / 2;
  if (x < 0 || y < 0 || x >= innerWidth || y >= innerHeight) return null;
  const top = element.getRootNode().elementFromPoint(x, y);
  if (!top || element.contains(top) || top.contains(element)) return null;
  const id = top.id ? '#' + top.id : '';
  const cls = typeof top.className === 'string' && top.className.trim()
    ? '.' + top.className.trim().split(/\\s+/)[0] : '';
  return top.tagName.toLowerCase() + id + cls;
}
"""


async def click(locator: Locator) -> None:
    """Click an element already found visible, without waiting on animation frames.

    An element under something else (an overlay no config names) is an error at once:
    a blind click would land on the overlay and the turn would only time out.
    """
    cover = await locator.evaluate(COVER_SCRIPT)
    if cover:
        raise ProtocolError(
            f"the element to click is covered by {cover}; list its close control in `overlays`"
        )
    await locator.click(force=True)


def totp_code(secret: str, at: float | None = None, digits: int = 6, step_s: int = 30) -> str:
    """RFC 6238 time-based one-time code (SHA-1, the authenticator-app default)."""
    key = base64.b32decode(secret.replace(" ", "").upper() + "=" * (-len(secret) % 8))
    counter = int((time.time() if at is None else at) // step_s)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    number = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(number % 10**digits).zfill(digits)


def fill_value(step: Step, credentials: dict[str, str]) -> str:
    if step.text is not None:
        return step.text
    key = step.credential or step.totp
    assert key is not None
    value = credentials.get(key)
    if not value:
        raise ProtocolError(f"the step needs the credential {key!r}, which is not set")
    if step.totp is not None:
        try:
            return totp_code(value)
        except ValueError:
            raise ProtocolError(f"credential {key!r} is not a base32 TOTP secret") from None
    return value


async def run_steps(
    page: Page,
    scope: Scope,
    steps: list[Step],
    *,
    timeout_s: float,
    credentials: dict[str, str] | None = None,
    role: str = "step",
) -> None:
    """Run config steps in order; a missing element fails the step unless it is optional."""
    notes: dict[str, str] = {}
    for index, step in enumerate(steps):
        wait = step.timeout_s or timeout_s
        try:
            await run_step(page, scope, step, wait, credentials or {}, f"{role} {index + 1}", notes)
        except ProtocolError:
            if not step.optional:
                raise


async def run_step(
    page: Page,
    scope: Scope,
    step: Step,
    timeout_s: float,
    credentials: dict[str, str],
    role: str,
    notes: dict[str, str],
) -> None:
    if step.wait_ms is not None:
        await asyncio.sleep(step.wait_ms / 1000)
        return
    if step.press is not None:
        await page.keyboard.press(step.press)
        return
    target = step.click or step.fill or step.select or step.wait_for
    assert target is not None
    element = await find_visible(scope, target, timeout_s, role=role, notes=notes)
    if step.click is not None:
        await click(element)
    elif step.fill is not None:
        await element.fill(fill_value(step, credentials))
    elif step.select is not None:
        await choose_option(scope, element, step.option or "", timeout_s, role)


async def choose_option(
    scope: Scope, element: Locator, option: str, timeout_s: float, role: str
) -> None:
    """A native <select> takes the option by label or value; a custom dropdown is opened
    and the item showing the option's text is clicked."""
    tag = await element.evaluate("(el) => el.tagName.toLowerCase()")
    if tag == "select":
        value = await element.evaluate(OPTION_VALUE_SCRIPT, option)
        if value is None:
            raise ProtocolError(f"{role}: the list has no option {option!r}")
        await element.select_option(value=value, timeout=timeout_s * 1000)
        return
    await click(element)
    item = scope.get_by_role("option", name=option).or_(scope.get_by_text(option, exact=True))
    deadline = time.monotonic() + timeout_s
    while not await item.first.is_visible():
        if time.monotonic() >= deadline:
            raise ProtocolError(f"{role}: the dropdown shows no item {option!r}")
        await asyncio.sleep(ENABLED_POLL_S)
    await click(item.first)


async def dismiss_overlays(scope: Scope, overlays: list[Overlay]) -> int:
    """Close every configured overlay that shows now; returns how many were closed.

    One look covers all of them, so a page without overlays pays a single round trip.
    """
    if not overlays:
        return 0
    markers = [s for o in overlays for s in (o.when or o.close)]
    if not await visible_count(scope, markers):
        return 0
    closed = 0
    for overlay in overlays:
        if overlay.when and not await visible_count(scope, overlay.when):
            continue
        control = scope.locator(", ".join(overlay.close)).filter(visible=True).first
        if await control.count():
            await click(control)
            closed += 1
    return closed


async def input_text(field_: Locator) -> str:
    try:
        return str(await field_.evaluate(INPUT_TEXT_SCRIPT, timeout=1000))
    except PlaywrightError:
        return ""  # the input was replaced: the message went


async def send_prompt(
    page: Page,
    scope: Scope,
    config: WebChatConfig,
    text: str,
    notes: dict[str, str],
    before_send: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Close overlays, type the prompt, then send it with the first method that works.

    ``before_send`` runs once the prompt is typed and the send control is ready, just
    before the first send action (the moment done signals take their "before" state).
    """
    await dismiss_overlays(scope, config.overlays)
    field_ = await find_visible(
        scope, config.input, config.page_timeout_s, role="input", notes=notes
    )
    await type_prompt(page, field_, text, config.input_method)
    methods = config.send.ranked_methods()
    for rank, method in enumerate(methods):
        last = rank == len(methods) - 1
        await dismiss_overlays(scope, config.overlays)
        if not await try_method(scope, config, method, field_, notes, last, before_send):
            continue
        if last or await sent(field_, text, config.send.confirm_ms):
            return
    raise ProtocolError("no send method worked (the input still holds the prompt)")


async def try_method(
    scope: Scope,
    config: WebChatConfig,
    method: SendMethod,
    field_: Locator,
    notes: dict[str, str],
    last: bool,
    before_send: Callable[[], Awaitable[object]] | None,
) -> bool:
    """Perform one send method; False when its control is missing or stays disabled."""
    if method.key is not None:
        if before_send is not None:
            await before_send()
        await field_.press(method.key)
        return True
    assert method.button is not None
    wait_s = config.page_timeout_s if last else config.send.wait_enabled_ms / 1000
    try:
        button = await find_visible(scope, method.button, wait_s, role="send button", notes=notes)
    except ProtocolError:
        if last:
            raise
        return False
    enabled_wait_s = config.page_timeout_s if last else config.send.wait_enabled_ms / 1000
    if not await wait_enabled(button, enabled_wait_s):
        if last:
            raise ProtocolError("the send control stayed disabled after typing")
        return False
    if before_send is not None:
        await before_send()
    try:
        await click(button)
    except ProtocolError:
        if last:
            raise
        return False
    return True


async def wait_enabled(button: Locator, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while await is_disabled(button):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(ENABLED_POLL_S)
    return True


async def sent(field_: Locator, text: str, confirm_ms: int) -> bool:
    """True once the input no longer holds the prompt (the site took the message)."""
    deadline = time.monotonic() + confirm_ms / 1000
    typed = text.strip()
    while (await input_text(field_)).strip() == typed and typed:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(CONFIRM_POLL_S)
    return True


async def type_prompt(page: Page, field_: Locator, text: str, method: str) -> None:
    if method == "insert_text":
        await click(field_)
        await field_.press("ControlOrMeta+a")
        await field_.press("Delete")
        await page.keyboard.insert_text(text)
    else:
        await field_.fill(text)
