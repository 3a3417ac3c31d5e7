"""Routing for /v1: a ``model`` names an endpoint or a group; one request walks its candidates.

A group is every running endpoint whose ``group_name`` is the model. Its members are tried by
``priority`` (lower first), then least busy among equals (requests in flight and queued).
Members whose breaker is open are skipped, and stopped or failed ones are not running, so they
are never candidates.

``Attempts`` is one request's walk: admission (a free slot on the first member that has one,
else the queue of the best member), then, after a transient failure before anything reached
the client, either one retry on the same endpoint (only when that cannot send the prompt
twice) or the next member, at most ``max_fallbacks`` times. Errors that are the caller's
(400) or the credentials' (401/403) never move on: another member would answer the same.

Routing a single endpoint's name costs a dict lookup; a group's, a sort of its few members.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from providers.errors import ProviderError, ProviderTimeout, RateLimited, Unavailable
from runtime.errors import (
    CapacityExceeded,
    Conflict,
    EndpointUnavailable,
    NotFound,
    OwnedElsewhere,
    Unsupported,
)
from runtime.manager import EndpointManager, LiveEndpoint
from runtime.repository import EndpointRepository
from store.models import Endpoint

DEFAULT_MAX_FALLBACKS = 2
# The longest upstream Retry-After the runtime waits out before trying the same endpoint again;
# a longer one moves on to the next candidate instead.
DEFAULT_RETRY_AFTER_CAP_S = 2.0


@dataclass(slots=True)
class RoutingOptions:
    max_fallbacks: int = DEFAULT_MAX_FALLBACKS
    retry_after_cap_s: float = DEFAULT_RETRY_AFTER_CAP_S


def is_transient(exc: ProviderError) -> bool:
    """A failure another attempt may not share: timeout, 5xx, connection error, upstream 429."""
    if isinstance(exc, RateLimited):
        return exc.upstream_status == 429  # 402 (out of credit) will not pass by itself
    return isinstance(exc, ProviderTimeout | Unavailable)


def same_endpoint_delay(live: LiveEndpoint, exc: ProviderError, cap_s: float) -> float | None:
    """Seconds to wait before sending the same request to the same endpoint, or None when
    that is not safe: only when nothing was sent, or when a REST API refused the request
    outright (429/503) with a Retry-After within the cap. A web chat that may have typed the
    prompt is never asked again."""
    if exc.nothing_sent:
        return 0.0
    if live.provider.needs_browser or exc.upstream_status not in (429, 503):
        return None
    wait = exc.retry_after
    return wait if wait is not None and wait <= cap_s else None


def refusal(
    live: LiveEndpoint, extra: dict[str, Any], features: dict[str, str] | None
) -> Unsupported | None:
    """The error for the first request field or message feature the endpoint's provider
    would otherwise have to drop (see providers/capabilities.py); None when it honours all."""
    label, param = live.provider.capabilities.refusal(extra, features)
    if not label:
        return None
    return Unsupported(f"{label} is not supported by endpoint type {live.endpoint_type}",
                       param=param)  # fmt: skip


class Router:
    """Name or group -> the running endpoints that may answer, best first."""

    def __init__(self, manager: EndpointManager, repo: EndpointRepository) -> None:
        self.manager = manager
        self.repo = repo
        self._groups: dict[str, list[LiveEndpoint]] = {}
        self._generation = -1
        # Set by the cluster: why an endpoint that does not run here is served elsewhere (its
        # owner instance: the request is forwarded there) or nowhere now; None: not running.
        self.elsewhere: Callable[[Endpoint], Exception | None] = lambda row: None
        # ... and that answer for a model asked about a moment ago, without the store.
        self.known_elsewhere: Callable[[str], Exception | None] = lambda model: None

    def groups(self) -> dict[str, list[LiveEndpoint]]:
        """Running members per group, by (priority, name); rebuilt when ``live`` changed."""
        if self._generation != self.manager.generation:
            groups: dict[str, list[LiveEndpoint]] = {}
            for live in self.manager.live.values():
                if live.group_name:
                    groups.setdefault(live.group_name, []).append(live)
            for members in groups.values():
                members.sort(key=lambda e: (e.priority, e.name))
            self._groups, self._generation = groups, self.manager.generation
        return self._groups

    async def route(self, model: str) -> Sequence[LiveEndpoint]:
        """The candidates for ``model``, best first (the hot path)."""
        found = self._here(model)
        if not found and await self.manager.relaunched(model):  # a browser endpoint restarted
            found = self._here(model)
        if found:
            return found
        known = self.known_elsewhere(model)
        if known is not None:
            raise known
        raise await asyncio.to_thread(self._not_routable, model)

    def _here(self, model: str) -> Sequence[LiveEndpoint]:
        """The endpoint or the group's members running here, best first (empty: none)."""
        live = self.manager.by_name.get(model)
        if live is not None:
            return (live,)
        members = self.groups().get(model, ())
        if len(members) > 1:
            # Least busy among equal priorities; sorted() is stable, so names break ties.
            return sorted(members, key=_load_order)
        return members

    def _not_routable(self, model: str) -> Exception:
        row = self.repo.get_by_name(model)
        if row is not None:
            return self.elsewhere(row) or Conflict(
                f"endpoint {row.name!r} is not running (state: {row.state}); start it first"
            )
        members = self.repo.group_members(model)
        if members:
            # None runs here: the best member another instance runs (a browser endpoint's
            # owner) gets the request, which it routes within the group itself.
            reasons = [e for e in map(self.elsewhere, members) if e is not None]
            reasons.sort(key=lambda e: not isinstance(e, OwnedElsewhere))  # forwarding first
            if reasons:
                return reasons[0]
            return Conflict(f"no member of group {model!r} is running; start one first")
        return NotFound(f"model {model!r} not found; GET /v1/models lists the running ones")

    def models(self, created: int) -> list[dict[str, Any]]:
        """/v1/models: every running endpoint, then every group with a running member."""
        endpoints = sorted(self.manager.live.values(), key=lambda e: (e.priority, e.name))
        listed: list[dict[str, Any]] = [model_entry(e, created) for e in endpoints]
        for name, members in sorted(self.groups().items()):
            listed.append(
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "aiem-group",
                    "group": True,
                    "members": [m.name for m in members],
                }
            )
        return listed


def model_entry(live: LiveEndpoint, created: int) -> dict[str, Any]:
    """A running endpoint as a /v1 model: OpenAI's fields, then extra fields clients ignore
    or may show (a display name, what /v1 passes, translates or refuses there)."""
    return {
        "id": live.name,
        "object": "model",
        "created": created,
        "owned_by": live.endpoint_type,
        "display_name": live.display_name or live.name,
        "upstream_model": live.model_name or None,
        "capabilities": {
            "streaming": live.provider.can_stream,
            **live.provider.capabilities.as_dict(),
        },  # fmt: skip
    }


def _load_order(live: LiveEndpoint) -> tuple[int, int]:
    return live.priority, live.gate.in_flight + live.gate.waiting


class Attempts:
    """One request's walk over its candidates. Holds the slot of ``live`` until released."""

    __slots__ = (
        "candidates", "extra", "features", "options", "live", "refusal", "_next", "_fallbacks",
        "_retried",
    )  # fmt: skip

    def __init__(
        self,
        candidates: Sequence[LiveEndpoint],
        options: RoutingOptions,
        extra: dict[str, Any],
        features: dict[str, str] | None = None,
    ) -> None:
        self.candidates = candidates
        self.extra = extra
        self.features = features
        self.options = options
        self.live: LiveEndpoint | None = None
        self.refusal: Exception = EndpointUnavailable("no endpoint to try")
        self._next = 0
        self._fallbacks = options.max_fallbacks
        self._retried = False

    async def admit(self) -> LiveEndpoint:
        """The first candidate to try, its slot taken; raises when none can take the request."""
        live = await self._admit_from(0)
        if live is None:
            raise self.refusal
        return live

    async def after_failure(self, exc: ProviderError) -> LiveEndpoint | None:
        """What to try after ``exc`` (the same endpoint again, or the next candidate, its slot
        taken), or None when the request ends with ``exc``. Releases what it gives up."""
        live = self.live
        assert live is not None
        if not is_transient(exc):
            self.release()
            return None
        if not self._retried:
            delay = same_endpoint_delay(live, exc, self.options.retry_after_cap_s)
            # Not once the breaker is open (or half-open): the failure may have opened it.
            if delay is not None and (live.breaker is None or not live.breaker.blocking):
                self._retried = True
                if delay:
                    await asyncio.sleep(delay)
                return live
        self.release()
        if self._fallbacks <= 0:
            return None
        self._fallbacks -= 1
        self._retried = False
        try:
            return await self._admit_from(self._next)
        except (CapacityExceeded, EndpointUnavailable):
            return None  # the failure itself says more than "the others were busy"

    def release(self) -> None:
        live, self.live = self.live, None
        if live is not None:
            live.leave()

    async def _admit_from(self, start: int) -> LiveEndpoint | None:
        """A candidate from ``start`` on whose breaker and concurrency slot are free; else wait
        in the queue of the first one that was only busy. None when every candidate refused
        (``refusal`` says why)."""
        busy: LiveEndpoint | None = None
        refused: CapacityExceeded | EndpointUnavailable | None = None
        candidates = self.candidates
        for index in range(start, len(candidates)):
            live = candidates[index]
            if (self.extra or self.features) and refusal(live, self.extra, self.features):
                continue
            try:
                # Redis mode: a cluster with every slot taken makes this one only busy.
                if live.try_admit() and (live.shared is None or await live.take_shared(wait=False)):
                    return self._take(live, index)
            except (CapacityExceeded, EndpointUnavailable) as exc:
                refused = _sooner(refused, exc)  # rate limit spent, or breaker open
                continue
            busy = busy or live
        if busy is not None:
            try:
                await busy.admit()
            except EndpointUnavailable as exc:  # its breaker opened while this one queued
                refused = _sooner(refused, exc)
            else:
                return self._take(busy, candidates.index(busy))
        self.refusal = self._why_not(candidates[start:], refused)
        return None

    def _take(self, live: LiveEndpoint, index: int) -> LiveEndpoint:
        self.live = live
        self._next = index + 1
        return live

    def _why_not(self, candidates: Sequence[LiveEndpoint], refused: Exception | None) -> Exception:
        if refused is not None:
            return refused
        if (self.extra or self.features) and candidates:
            refused_here = refusal(candidates[0], self.extra, self.features)
            if refused_here is not None:
                return refused_here
        return EndpointUnavailable("no endpoint left to try")


def _sooner(
    kept: CapacityExceeded | EndpointUnavailable | None, new: CapacityExceeded | EndpointUnavailable
) -> CapacityExceeded | EndpointUnavailable:
    """Of two refusals, the one whose Retry-After comes first (a refusal without one last)."""
    if kept is None:
        return new
    if new.retry_after is not None and (
        kept.retry_after is None or new.retry_after < kept.retry_after
    ):
        return new
    return kept
