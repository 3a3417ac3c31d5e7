"""Step 5, probe: send a test message and learn from what the page does.

The answer is the new content that appears after the sent message (the page is marked
before sending; whatever is new, after the echo of our message, and not a control, is the
answer), not a change in a count of elements. While the answer grows the probe watches which
end signals fire: a control that appeared and goes away (a stop button), the send control
disabled and enabled again, the text standing still. Those that fired become the completion
quorum. Then the drafted config is driven by the real web chat engine for two turns, which
proves the endpoint will work and that it holds a conversation.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Frame, Page

from discovery.selectors import ElementFacts, collection_selectors, ranked_unique_selectors
from providers.base import ChatRequest, EndpointSpec, Message
from providers.errors import ProviderError
from providers.web_chat.config import WebChatConfig
from providers.web_chat.provider import WebChatProvider

OBSERVE_SCRIPT = Path(__file__).with_name("observe.js").read_text()
PROBE_MESSAGES = (
    "Hello! Please answer in one short sentence: what is the capital of France?",
    "Thanks. And in one short sentence: what is 2 + 2?",
)
POLL_S = 0.1
QUIET_S = 1.5
ANSWER_TIMEOUT_S = 45.0

Scope = Page | Frame

FACTS_SCRIPT = """
(el) => {
  const facts = (e, depth) => {
    if (!e) return null;
    if (e.nodeType !== 1) {
      return e.host ? {tag: 'aiem-shadow', attrs: {'data-aiem-shadow-root': '1'}} : null;
    }
    const attrs = {};
    for (const a of e.attributes) {
      if (a.name !== 'style' && !a.name.startsWith('on')) attrs[a.name] = a.value.slice(0, 200);
    }
    return {tag: e.tagName.toLowerCase(), attrs, classes: [...e.classList],
            text: (e.innerText || '').trim().slice(0, 60),
            parent: depth < 3 ? facts(e.parentNode, depth + 1) : null};
  };
  return facts(el, 0);
}
"""


@dataclass(slots=True)
class Observation:
    """What one probe turn showed."""

    ok: bool = False
    problem: str = ""
    sent: str = ""
    answer: str = ""
    echo_seen: bool = False
    seconds: float = 0.0
    signals: list[str] = field(default_factory=list)
    learned: dict[str, Any] = field(default_factory=dict)
    url_before: str = ""
    url_after: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problem": self.problem,
            "message_sent": self.sent,
            "answer_read": self.answer,
            "echo_of_message_seen": self.echo_seen,
            "signals_fired": self.signals,
            "seconds": round(self.seconds, 2),
            "url_before": self.url_before,
            "url_after": self.url_after,
        }


async def look(scope: Scope, op: str, prompt: str = "", send: list[str] | None = None) -> Any:
    return await scope.evaluate(OBSERVE_SCRIPT, {"op": op, "prompt": prompt, "send": send or []})


async def type_and_send(page: Page, scope: Scope, config: dict[str, Any], text: str) -> None:
    field_ = scope.locator(config["input"][0])
    if config.get("input_method") == "insert_text":
        await field_.click()
        await page.keyboard.insert_text(text)
    else:
        await field_.fill(text)
    button = (config.get("send") or {}).get("button")
    if button:
        control = scope.locator(button[0])
        deadline = time.monotonic() + 3
        while not await control.is_enabled() and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        await control.click()
    else:
        await field_.press((config.get("send") or {}).get("key", "Enter"))


@dataclass(slots=True)
class _Watch:
    text: str = ""
    changed_at: float = 0.0
    max_gap: float = 0.0
    send_disabled_seen: bool = False
    send_disabled_now: bool = False


async def observe_turn(
    page: Page,
    scope: Scope,
    config: dict[str, Any],
    answer_timeout_s: float = ANSWER_TIMEOUT_S,
) -> Observation:
    """Send one message and learn the answer selector and the end signals."""
    obs = Observation(sent=PROBE_MESSAGES[0], url_before=page.url)
    started = time.monotonic()
    send_button = (config.get("send") or {}).get("button")
    try:
        await look(scope, "mark")
        await type_and_send(page, scope, config, obs.sent)
        deadline = started + answer_timeout_s
        watch = await _watch_answer(scope, obs, send_button, deadline)
        obs.url_after = page.url
        if not watch.text:
            obs.problem = "no answer appeared after the message was sent"
            return obs
        obs.learned = await _learn(scope, page, config, obs, watch)
    except PlaywrightError as exc:
        obs.problem = f"the page failed during the probe: {str(exc).splitlines()[0][:160]}"
        return obs
    finally:
        obs.seconds = time.monotonic() - started
    obs.ok = bool(obs.learned.get("assistant_message"))
    if not obs.ok and not obs.problem:
        obs.problem = "no selector matches the answer without the sent message"
    return obs


async def _watch_answer(scope: Scope, obs: Observation, send_button, deadline: float) -> _Watch:
    watch = _Watch(changed_at=time.monotonic())
    while time.monotonic() < deadline:
        seen = await look(scope, "look", obs.sent, send_button)
        now = time.monotonic()
        obs.echo_seen = obs.echo_seen or seen["user"]
        watch.send_disabled_seen |= bool(seen["sendDisabled"])
        watch.send_disabled_now = bool(seen["sendDisabled"])
        if seen["text"] != watch.text:
            if watch.text:
                watch.max_gap = max(watch.max_gap, now - watch.changed_at)
            watch.text, watch.changed_at = seen["text"], now
        busy = seen["appeared"] > 0
        quiet = now - watch.changed_at
        # Controls that stay (copy, retry) must not hold the probe forever.
        if watch.text and (quiet >= QUIET_S and not busy or quiet >= QUIET_S * 3):
            break
        await asyncio.sleep(POLL_S)
    obs.answer = watch.text
    return watch


async def _learn(
    scope: Scope, page: Page, config: dict[str, Any], obs: Observation, watch: _Watch
) -> dict[str, Any]:
    learned: dict[str, Any] = {}
    answer_facts = await scope.evaluate_handle("() => window.__aiemAnswer")
    facts = await answer_facts.evaluate(FACTS_SCRIPT)
    learned["assistant_message"] = await answer_selectors(scope, facts)
    completion: dict[str, Any] = {}
    obs.signals = ["text_stable"]
    stop = await stop_selectors(scope)
    if stop:
        completion["stop_button"] = stop
        obs.signals.append("stop_control_gone")
    send_back = watch.send_disabled_seen and not watch.send_disabled_now
    if send_back and (config.get("send") or {}).get("button"):
        completion["send_enabled"] = True
        obs.signals.append("send_enabled_again")
    completion["stable_ms"] = int(min(4000, max(800, watch.max_gap * 2000 + 300)))
    completion["quorum"] = min(len(obs.signals), 3)
    learned["completion"] = completion
    pattern = conversation_pattern(obs.url_before, obs.url_after)
    if pattern:
        learned["conversation"] = {"url_pattern": pattern}
    return learned


async def answer_selectors(scope: Scope, facts: dict[str, Any] | None) -> list[str]:
    """Selectors whose last match is the answer and that never match the sent message."""
    if not facts:
        return []
    kept: list[str] = []
    for selector in collection_selectors(ElementFacts.from_dict(facts)):
        if await _reads_answer(scope, selector):
            kept.append(selector)
        if len(kept) == 3:
            break
    return kept


READS_ANSWER_SCRIPT = """
(els) => {
  const parentOf = (e) => e.parentNode && e.parentNode.host ? e.parentNode.host : e.parentElement;
  const within = (inner, outer) => {
    for (let e = inner; e; e = parentOf(e)) if (e === outer) return true;
    return false;
  };
  const user = window.__aiemUser;
  if (!els.length || els[els.length - 1] !== window.__aiemAnswer) return false;
  return !user || !els.some((e) => within(user, e) || within(e, user));
}
"""


async def _reads_answer(scope: Scope, selector: str) -> bool:
    try:
        return bool(await scope.locator(selector).evaluate_all(READS_ANSWER_SCRIPT))
    except PlaywrightError:
        return False


STOP_SCRIPT = """
() => (window.__aiemAppeared || []).filter((e) => {
  const r = e.getBoundingClientRect(); return r.width < 2 || r.height < 2
    || getComputedStyle(e).display === 'none' || getComputedStyle(e).visibility === 'hidden';
})
"""


async def stop_selectors(scope: Scope) -> list[str]:
    """Selectors of a control that showed while the answer grew and is gone now."""
    gone = await scope.evaluate_handle(STOP_SCRIPT)
    count = await gone.evaluate("(list) => list.length")
    for i in range(min(count, 3)):
        element = await gone.evaluate_handle("(list, i) => list[i]", i)
        facts = await element.evaluate(FACTS_SCRIPT)
        counts: dict[str, int] = {}
        for selector in _candidate_strings(facts):
            try:
                counts[selector] = await scope.locator(selector).count()
            except PlaywrightError:
                counts[selector] = 0
        found = ranked_unique_selectors(ElementFacts.from_dict(facts), _counter(counts))
        if found:
            return found
    return []


def _counter(counts: dict[str, int]) -> Callable[[str], int]:
    return lambda selector: counts.get(selector, 0)


def _candidate_strings(facts: dict[str, Any]) -> list[str]:
    from discovery.selectors import own_selectors, text_selector, with_parent

    element = ElementFacts.from_dict(facts)
    text = text_selector(element)
    return [*own_selectors(element), *with_parent(element), *([text] if text else [])]


_ID_SEGMENT = re.compile(r"^(?=.*\d)[A-Za-z0-9_-]{6,}$|^[0-9a-f-]{8,}$", re.I)


def conversation_pattern(before: str, after: str) -> str | None:
    """A regular expression for conversation URLs, from the URL change of the first turn."""
    if not after or after.split("#")[0] == before.split("#")[0]:
        return None
    parts = urlsplit(after)
    segments = parts.path.split("/")
    for i in range(len(segments) - 1, -1, -1):
        if _ID_SEGMENT.match(segments[i]) or (i == len(segments) - 1 and segments[i]):
            prefix = "/".join(segments[:i]) + "/"
            base = re.escape(f"{parts.scheme}://{parts.netloc}{prefix}")
            return "^" + base + r"[^/?#]+"
    for key, _, value in (p.partition("=") for p in parts.query.split("&")):
        if value and key:
            return r"[?&]" + re.escape(key) + "="
    return None


@dataclass(slots=True)
class EngineProbe:
    ok: bool = False
    problem: str = ""
    turns: list[dict[str, Any]] = field(default_factory=list)
    conversation_url: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problem": self.problem,
            "turns": self.turns,
            "conversation_url": self.conversation_url,
        }


async def engine_probe(
    url: str,
    config: dict[str, Any],
    credentials: dict[str, str] | None = None,
    answer_timeout_s: float = ANSWER_TIMEOUT_S,
) -> EngineProbe:
    """Drive the config with the real web chat provider: two turns of one conversation."""
    result = EngineProbe()
    try:
        site = WebChatConfig.model_validate({"answer_timeout_s": answer_timeout_s, **config})
    except ValueError as exc:
        result.problem = f"the draft is not a valid web_chat config: {exc}"
        return result
    spec = EndpointSpec(
        name="discovery-probe",
        url=url,
        model_name="probe",
        config=site,
        credentials=dict(credentials or {}),
        max_concurrent_requests=1,
        request_timeout=answer_timeout_s + 15,
    )
    provider = WebChatProvider(spec)
    try:
        await provider.start()
        await _two_turns(provider, result)
    except ProviderError as exc:
        result.problem = f"{exc.kind}: {exc.message}"
    finally:
        await provider.stop()
    return result


async def _two_turns(provider: WebChatProvider, result: EngineProbe) -> None:
    history: list[Message] = []
    conversation = None
    answers = []
    for prompt in PROBE_MESSAGES:
        history.append(Message("user", prompt))
        started = time.monotonic()
        response = await provider.chat(
            ChatRequest(messages=list(history), session_id="probe", conversation=conversation)
        )
        conversation = response.conversation
        answer = response.content.strip()
        result.turns.append(
            {
                "message_sent": prompt,
                "answer_read": answer,
                "seconds": round(time.monotonic() - started, 2),
            }
        )
        history.append(Message("assistant", answer))
        answers.append(answer)
    result.conversation_url = (conversation or {}).get("url")
    if not all(answers):
        result.problem = "the engine read an empty answer"
    elif answers[0] == answers[1]:
        result.problem = "the second turn read the first answer again"
    elif any(a.strip() == p for a, p in zip(answers, PROBE_MESSAGES, strict=True)):
        result.problem = "the engine read the sent message as the answer"
    else:
        result.ok = True
