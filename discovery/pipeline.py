"""``discover(url)``: crawl, reduce, draft, validate, probe and refine, timed step by step.

Nothing here registers anything: the result is a draft with its evidence, for review.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from playwright.async_api import Error as PlaywrightError
from pydantic import ValidationError

from discovery.assemble import checked, draft_config, merge_learned, off_origin_problems
from discovery.crawl import CrawlSession
from discovery.draft_heuristic import Choice, rank_inputs
from discovery.draft_llm import Complete, LLMDrafter
from discovery.errors import DiscoveryError, UnsafeUrl
from discovery.login_steps import log_in_if_asked
from discovery.outline import outlined_screenshot
from discovery.probe import (
    ANSWER_TIMEOUT_S,
    EngineProbe,
    Observation,
    engine_probe,
    observe_turn,
)
from discovery.reduce import Reduced, reduce_snapshot
from discovery.refine import Refiner
from discovery.safety import AddressPolicy, allow_private_from_env, check_scheme, origin_of
from discovery.validate import validate_config
from providers.errors import ProviderError
from providers.web_chat.browser import first_line

log = logging.getLogger("aiem.discovery")

StepCallback = Callable[[str], Awaitable[None] | None]
DEFAULT_ROUNDS = 3
DEFAULT_TIMEOUT_S = 240.0


@dataclass
class DiscoveryResult:
    url: str
    status: str = "failed"  # ready | failed | analyzed
    reason: str = ""
    message: str = ""
    config: dict[str, Any] | None = None
    confidence: float = 0.0
    probe_passed: bool = False
    candidates: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    refinements: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    screenshot: bytes | None = None
    used_llm: bool = False
    logged_in: bool = False

    def evidence(self) -> dict[str, Any]:
        """Everything but the config and the screenshot, as stored with a draft."""
        return {
            "candidates": self.candidates,
            "chosen": self.chosen,
            "probe": self.probe,
            "refinements": self.refinements,
            "timings": self.timings,
            "notes": self.notes,
            "used_llm": self.used_llm,
            "logged_in": self.logged_in,
        }


class _Clock:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.started = time.monotonic()

    def lap(self, step: str, since: float) -> float:
        now = time.monotonic()
        self.timings[step] = round(self.timings.get(step, 0.0) + now - since, 3)
        return now


async def discover(
    url: str,
    analyze_interface: bool = True,
    generate_config: bool = True,
    *,
    credentials: dict[str, str] | None = None,
    llm: Complete | None = None,
    allow_private: bool | None = None,
    rounds: int = DEFAULT_ROUNDS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    answer_timeout_s: float = ANSWER_TIMEOUT_S,
    on_step: StepCallback | None = None,
) -> DiscoveryResult:
    """Discover a web chat at ``url``; a failure is a ``failed`` result, never an exception.

    ``answer_timeout_s`` is how long a probe waits for the page to answer: a draft that
    drives the wrong element costs that long per round.
    """
    result = DiscoveryResult(url=url)
    clock = _Clock(result.timings)
    allow = allow_private_from_env() if allow_private is None else allow_private
    policy = AddressPolicy(allow_private=allow)
    run = _Run(result, clock, policy, credentials, llm, on_step, answer_timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            await run.go(analyze_interface, generate_config, rounds)
    except DiscoveryError as exc:
        result.status, result.reason, result.message = "failed", exc.reason, exc.message
    except TimeoutError:
        result.status, result.reason = "failed", "timeout"
        result.message = f"discovery did not finish within {timeout_s:.0f}s"
    except ProviderError as exc:
        result.status, result.reason, result.message = "failed", "browser", exc.message
    except PlaywrightError as exc:
        result.status, result.reason = "failed", "page_error"
        result.message = f"the page failed while it was examined: {first_line(exc)}"
    result.timings["total"] = round(time.monotonic() - clock.started, 3)
    return result


class _Run:
    def __init__(self, result, clock, policy, credentials, llm, on_step, answer_timeout_s) -> None:
        self.result: DiscoveryResult = result
        self.clock: _Clock = clock
        self.policy: AddressPolicy = policy
        self.credentials = credentials
        self.drafter = LLMDrafter(llm) if llm is not None else None
        self.on_step = on_step
        self.answer_timeout_s: float = answer_timeout_s

    async def step(self, name: str) -> None:
        if self.on_step is not None:
            outcome = self.on_step(name)
            if inspect.isawaitable(outcome):
                await outcome

    async def go(self, analyze: bool, generate: bool, rounds: int) -> None:
        result = self.result
        await self.step("crawling")
        t = time.monotonic()
        url = await self.policy.check_url(check_scheme(result.url))
        async with CrawlSession(url, self.policy) as crawl:
            await crawl.load()
            login = await log_in_if_asked(crawl, self.credentials)
            result.logged_in = login is not None
            snapshot = await crawl.capture()
            result.screenshot = snapshot.screenshot
            t = self.clock.lap("crawl", t)
            reduced = reduce_snapshot(snapshot)
            t = self.clock.lap("reduce", t)
            result.candidates = self.describe_candidates(reduced)
            if not (analyze and generate):
                result.status = "analyzed"
                return
            await self.rounds(crawl, reduced, login, rounds)

    def describe_candidates(self, reduced: Reduced) -> list[dict[str, Any]]:
        scores = {s.candidate.idx: s for s in rank_inputs(reduced)}
        described = []
        for candidate in reduced.candidates:
            item = candidate.describe()
            item["selectors"] = candidate.selectors[:4]
            if candidate.idx in scores:
                item["input_score"] = scores[candidate.idx].describe()
            described.append(item)
        return described

    async def rounds(self, crawl: CrawlSession, reduced: Reduced, login, rounds: int) -> None:
        result = self.result
        await self.step("drafting")
        t = time.monotonic()
        refiner = Refiner(reduced, self.drafter)
        result.used_llm = refiner.using_llm
        choice: Choice | None = await refiner.first()
        self.clock.lap("draft", t)
        dirty = False
        for number in range(1, max(1, rounds) + 1):
            assert choice is not None
            if dirty:
                await crawl.load()
            ok, diagnostics, dirty = await self.attempt(crawl, reduced, choice, login)
            result.notes = list(refiner.notes)
            if ok:
                result.confidence = self.confidence(refiner, choice, number)
                return
            result.refinements.append(
                {"round": number, "source": choice.source, "diagnostics": diagnostics}
            )
            if number == rounds:
                break
            await self.step("refining")
            t = time.monotonic()
            choice = await refiner.next(diagnostics)
            self.clock.lap("refine", t)
            if choice is None:
                break
        last = result.refinements[-1]["diagnostics"] if result.refinements else []
        raise DiscoveryError(
            "no draft passed its probe: " + "; ".join(last)[:400] if last else "no draft left"
        )

    async def attempt(
        self, crawl: CrawlSession, reduced: Reduced, choice: Choice, login
    ) -> tuple[bool, list[str], bool]:
        """One draft through validate, observe and the engine: (passed, diagnostics, sent)."""
        result = self.result
        assert crawl.page is not None
        config = draft_config(choice, reduced, login=login)
        result.config = config
        result.chosen = self.chosen(choice)
        await self.step("validating")
        t = time.monotonic()
        elements = {
            "input": choice.input.element,
            "send": choice.send.element if choice.send else None,
        }
        report, scope = await validate_config(crawl.page, config, crawl.origin, elements)
        problems = off_origin_problems(config, crawl.origin)
        t = self.clock.lap("validate", t)
        result.probe = {"validation": report.as_dict()}
        if not report.ok or problems or scope is None:
            return False, report.problems + problems, False
        await self.step("probing")
        observation = await observe_turn(crawl.page, scope, config, self.answer_timeout_s)
        t = self.clock.lap("probe", t)
        result.probe["observation"] = observation.as_dict()
        if not observation.ok:
            return False, [observation.problem], True
        merge_learned(config, observation.learned)
        try:
            checked(config)
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"]
            return False, [f"the draft is not a valid web_chat config: {problem}"], True
        outlined = await outlined_screenshot(crawl.page, scope, config)
        result.screenshot = outlined or result.screenshot
        engine = await engine_probe(crawl.url, config, self.credentials, self.answer_timeout_s)
        self.clock.lap("engine_probe", t)
        result.probe["engine"] = engine.as_dict()
        result.probe["signals_fired"] = observation.signals
        self.finish(observation, engine)
        return engine.ok, [] if engine.ok else [engine.problem], True

    def finish(self, observation: Observation, engine: EngineProbe) -> None:
        result = self.result
        result.probe_passed = engine.ok
        if engine.ok:
            result.status, result.reason, result.message = "ready", "", "the draft passed its probe"

    @staticmethod
    def chosen(choice: Choice) -> dict[str, Any]:
        return {
            "source": choice.source,
            "input": choice.input.idx,
            "send": choice.send.idx if choice.send else None,
            "new_chat": choice.new_chat.idx if choice.new_chat else None,
            "notes": choice.notes,
        }

    def confidence(self, refiner: Refiner, choice: Choice, rounds_used: int) -> float:
        probe = self.result.probe
        score = 0.5
        if (probe.get("observation") or {}).get("echo_of_message_seen"):
            score += 0.1
        if len(probe.get("signals_fired") or []) >= 2:
            score += 0.1
        if choice.source == "llm" and refiner.agrees_with_heuristics(choice):
            score += 0.1
        elif choice.source == "heuristic":
            ranked = rank_inputs(refiner.reduced)
            margin = ranked[0].score - ranked[1].score if len(ranked) > 1 else 5.0
            score += 0.1 if margin >= 3 else 0.0
        score += 0.15 if rounds_used == 1 else 0.0
        return round(min(score, 0.99), 2)


async def reprobe(
    url: str,
    config: dict[str, Any],
    *,
    credentials: dict[str, str] | None = None,
    allow_private: bool | None = None,
    answer_timeout_s: float = ANSWER_TIMEOUT_S,
) -> DiscoveryResult:
    """Drive an (edited) config with the real engine again; the result carries the probe."""
    result = DiscoveryResult(url=url, config=config)
    started = time.monotonic()
    allow = allow_private_from_env() if allow_private is None else allow_private
    try:
        url = await AddressPolicy(allow_private=allow).check_url(url)
        problems = off_origin_problems(config, origin_of(url))
        if problems:
            raise UnsafeUrl("; ".join(problems))
        engine = await engine_probe(url, config, credentials, answer_timeout_s)
    except DiscoveryError as exc:
        result.reason, result.message = exc.reason, exc.message
        return result
    result.probe = {"engine": engine.as_dict(), "edited": True}
    result.probe_passed = engine.ok
    if engine.ok:
        result.status, result.message = "ready", "the edited draft passed its probe"
    else:
        result.reason, result.message = "probe_failed", engine.problem
    result.timings["engine_probe"] = round(time.monotonic() - started, 3)
    return result
