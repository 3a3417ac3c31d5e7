"""The chat path: admission, session history, the provider call, metrics, session commit.

Kept lean on purpose: it runs on every request. Without a session nothing here touches the
database; with one, the turn is committed before the reply is handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from providers.base import ChatChunk, ChatRequest, Message, StandardResponse, Usage, estimate_tokens
from providers.errors import ProviderError, ProviderTimeout
from runtime.manager import LiveEndpoint
from runtime.metrics import MetricsHub, RequestRecord
from runtime.router import Attempts, RoutingOptions
from runtime.sessions import SessionContext, SessionService, new_messages

# Called after every answered or failed request: (endpoint, error or None, latency in ms).
# The health monitor's passive signals come from here; listeners must be quick and not raise.
OutcomeListener = Callable[[LiveEndpoint, ProviderError | None, float], None]
# What a chat goes to: one endpoint, or a route's candidates best first (Router.route).
Target = LiveEndpoint | Sequence[LiveEndpoint]


@dataclass(slots=True)
class ChatInput:
    messages: list[Message]
    temperature: float | None = None
    max_tokens: int | None = None
    session_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ChatResult:
    content: str
    endpoint: LiveEndpoint
    model: str
    session_id: str | None
    usage: Usage
    latency_ms: float
    ttft_ms: float | None
    cost: float
    finish_reason: str = "stop"
    reasoning: str | None = None
    transcript_replayed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "endpoint": self.endpoint.name,
            "endpoint_id": self.endpoint.id,
            "model": self.model,
            "session_id": self.session_id,
            "finish_reason": self.finish_reason,
            "reasoning": self.reasoning,
            "usage": usage_dict(self.usage),
            "latency_ms": round(self.latency_ms, 2),
            "time_to_first_token_ms": None if self.ttft_ms is None else round(self.ttft_ms, 2),
            "cost": round(self.cost, 8),
            "transcript_replayed": self.transcript_replayed,
        }


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "estimated": usage.estimated,
    }


def settle_usage(usage: Usage | None, request: ChatRequest, content: str) -> Usage:
    if usage is not None:
        return usage
    prompt = sum(estimate_tokens(m.content) for m in request.messages)
    return Usage(prompt, estimate_tokens(content), estimated=True)


class ChatService:
    def __init__(
        self,
        metrics: MetricsHub,
        sessions: SessionService,
        routing: RoutingOptions | None = None,
    ) -> None:
        self.sessions = sessions
        self.metrics = metrics
        self.routing = routing or RoutingOptions()
        self.outcome_listeners: list[OutcomeListener] = []

    async def _admit(self, target: Target, inp: ChatInput) -> Attempts:
        candidates = (target,) if isinstance(target, LiveEndpoint) else target
        attempts = Attempts(candidates, self.routing, inp.extra)
        await attempts.admit()
        return attempts

    def _outcome(self, live: LiveEndpoint, error: ProviderError | None, latency_ms: float) -> None:
        for listener in self.outcome_listeners:
            listener(live, error, latency_ms)

    async def _context(self, inp: ChatInput) -> tuple[SessionContext | None, list[Message]]:
        if inp.session_id is None:
            return None, [m for m in inp.messages if m.role != "system"]
        ctx = await asyncio.to_thread(self.sessions.load, inp.session_id)
        return ctx, new_messages(ctx.history, inp.messages)

    @staticmethod
    def _request(
        live: LiveEndpoint, inp: ChatInput, ctx: SessionContext | None, fresh: list[Message]
    ) -> ChatRequest:
        if ctx is None:
            return ChatRequest(
                messages=list(inp.messages),
                temperature=inp.temperature,
                max_tokens=inp.max_tokens,
                extra=inp.extra,
            )
        system = [m for m in inp.messages if m.role == "system"]
        # A provider's conversation state (a web chat's page) is its own: another endpoint
        # (a group member, a fallback) gets the history instead.
        own = ctx.endpoint_id is None or ctx.endpoint_id == live.id
        return ChatRequest(
            messages=[*system, *ctx.history, *fresh],
            temperature=inp.temperature,
            max_tokens=inp.max_tokens,
            session_id=inp.session_id,
            conversation=ctx.conversation if own else None,
            extra=inp.extra,
        )

    def _record_failure(
        self,
        live: LiveEndpoint,
        inp: ChatInput,
        started: float,
        exc: ProviderError,
        *,
        streamed: bool,
    ) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        self._outcome(live, exc, latency_ms)
        self.metrics.record(
            RequestRecord(
                endpoint_id=live.id,
                at=time.time(),
                ok=False,
                latency_ms=latency_ms,
                status_code=exc.upstream_status or 0,
                error_kind=exc.kind,
                session_id=inp.session_id,
                streamed=streamed,
            )
        )

    async def _commit(
        self,
        live: LiveEndpoint,
        ctx: SessionContext | None,
        fresh: list[Message],
        content: str,
        conversation: dict | None,
    ) -> None:
        if ctx is None:
            return
        turn = [*fresh, Message("assistant", content)]
        await asyncio.to_thread(
            self.sessions.append, ctx, turn, endpoint_id=live.id, conversation=conversation
        )

    # ---- one answer ------------------------------------------------------------------------

    async def chat(self, target: Target, inp: ChatInput) -> ChatResult:
        """One answer from ``target``: on a transient failure, the same endpoint again when
        that is safe, else the next candidate (see runtime/router.py)."""
        attempts = await self._admit(target, inp)
        try:
            if inp.session_id is None:
                return await self._chat(attempts, inp)
            async with self.sessions.lock(inp.session_id):
                return await self._chat(attempts, inp)
        finally:
            attempts.release()

    async def _chat(self, attempts: Attempts, inp: ChatInput) -> ChatResult:
        ctx, fresh = await self._context(inp)
        live: LiveEndpoint | None = attempts.live
        while live is not None:
            request = self._request(live, inp, ctx, fresh)
            started = time.perf_counter()
            try:
                response = await self._call(live, request)
            except ProviderError as exc:
                self._record_failure(live, inp, started, exc, streamed=False)
                live = await attempts.after_failure(exc)
                if live is None:
                    raise
                continue
            return await self._answered(live, inp, ctx, fresh, request, response, started)
        raise AssertionError("an admitted request always has an endpoint")

    async def _answered(
        self,
        live: LiveEndpoint,
        inp: ChatInput,
        ctx: SessionContext | None,
        fresh: list[Message],
        request: ChatRequest,
        response: StandardResponse,
        started: float,
    ) -> ChatResult:
        latency_ms = (time.perf_counter() - started) * 1000
        usage = settle_usage(response.usage, request, response.content)
        await self._commit(live, ctx, fresh, response.content, response.conversation)
        return self._finish(live, inp, response, usage, latency_ms)

    @staticmethod
    async def _call(live: LiveEndpoint, request: ChatRequest) -> StandardResponse:
        if live.provider.enforces_timeout:
            # Its client already holds the endpoint's deadline: no second timer per request.
            return await live.provider.chat(request)
        try:
            async with asyncio.timeout(live.timeout):
                return await live.provider.chat(request)
        except TimeoutError:
            raise ProviderTimeout(f"no answer within {live.timeout:g} s") from None

    def _finish(
        self,
        live: LiveEndpoint,
        inp: ChatInput,
        response: StandardResponse,
        usage: Usage,
        latency_ms: float,
        ttft_ms: float | None = None,
        streamed: bool = False,
    ) -> ChatResult:
        cost = live.cost(usage.prompt_tokens, usage.completion_tokens)
        self._outcome(live, None, latency_ms)
        self.metrics.record(
            RequestRecord(
                endpoint_id=live.id,
                at=time.time(),
                ok=True,
                latency_ms=latency_ms,
                session_id=inp.session_id,
                ttft_ms=latency_ms if ttft_ms is None else ttft_ms,
                tokens_in=usage.prompt_tokens,
                tokens_out=usage.completion_tokens,
                tokens_estimated=usage.estimated,
                cost=cost,
                streamed=streamed,
            )
        )
        return ChatResult(
            content=response.content,
            endpoint=live,
            model=response.model or live.model_name or live.name,
            session_id=inp.session_id,
            usage=usage,
            latency_ms=latency_ms,
            ttft_ms=latency_ms if ttft_ms is None else ttft_ms,
            cost=cost,
            finish_reason=response.finish_reason,
            reasoning=response.reasoning,
            transcript_replayed=response.transcript_replayed,
        )

    # ---- streaming -------------------------------------------------------------------------

    async def open_stream(self, target: Target, inp: ChatInput) -> ChatStream:
        """Admit the request now (so refusals are plain HTTP errors), stream later."""
        attempts = await self._admit(target, inp)
        return ChatStream(self, attempts, inp)


class ChatStream:
    """The chunks of one streamed answer, then ``result`` (or the ProviderError raised).

    Until the first chunk is out, a transient failure moves on like a plain chat does, and
    ``live`` follows; after it, a failure is raised for the caller to report in the stream.
    """

    def __init__(self, service: ChatService, attempts: Attempts, inp: ChatInput) -> None:
        self.service = service
        self.attempts = attempts
        live = attempts.live
        assert live is not None
        self.live: LiveEndpoint = live
        self.inp = inp
        self.result: ChatResult | None = None

    def release(self) -> None:
        self.attempts.release()

    async def chunks(self) -> AsyncGenerator[ChatChunk, None]:
        session_id = self.inp.session_id
        lock = None if session_id is None else self.service.sessions.lock(session_id)
        held = False
        try:
            if lock is not None:
                await lock.acquire()
                held = True
            ctx, fresh = await self.service._context(self.inp)
            while True:
                try:
                    # Closed explicitly: a client that goes away must stop the upstream now.
                    async with contextlib.aclosing(self._attempt(ctx, fresh)) as attempt:
                        async for chunk in attempt:
                            yield chunk
                    return
                except _Failed as failed:
                    failure = failed.error
                if failure.reached_client:
                    raise failure.exc
                nxt = await self.attempts.after_failure(failure.exc)
                if nxt is None:
                    raise failure.exc
                self.live = nxt
        finally:
            if held:
                lock.release()  # type: ignore[union-attr]
            self.release()

    async def _attempt(
        self, ctx: SessionContext | None, fresh: list[Message]
    ) -> AsyncGenerator[ChatChunk, None]:
        service, live, inp = self.service, self.live, self.inp
        request = service._request(live, inp, ctx, fresh)
        started = time.perf_counter()
        parts: list[str] = []
        reasoning: list[str] = []
        last = ChatChunk()
        ttft: float | None = None
        try:
            async with (
                asyncio.timeout(live.timeout),
                contextlib.aclosing(_generator(live.provider.stream(request))) as stream,
            ):
                async for chunk in stream:
                    if chunk.delta:
                        if ttft is None:
                            ttft = (time.perf_counter() - started) * 1000
                        parts.append(chunk.delta)
                    if chunk.reasoning:
                        reasoning.append(chunk.reasoning)
                    last = chunk
                    if chunk.delta or chunk.reasoning:
                        yield chunk
        except (TimeoutError, ProviderError) as exc:
            error = (
                exc
                if isinstance(exc, ProviderError)
                else ProviderTimeout(f"answer not complete within {live.timeout:g} s")
            )
            service._record_failure(live, inp, started, error, streamed=True)
            raise _Failed(_Failure(error, bool(parts or reasoning))) from None
        # A final chunk's whole content wins: the deltas may not add up to it.
        content = last.content if last.content is not None else "".join(parts)
        latency_ms = (time.perf_counter() - started) * 1000
        usage = settle_usage(last.usage, request, content)
        await service._commit(live, ctx, fresh, content, last.conversation)
        response = StandardResponse(
            content=content,
            model=live.model_name or live.name,
            usage=usage,
            finish_reason=last.finish_reason or "stop",
            conversation=last.conversation,
            reasoning="".join(reasoning) or None,
            transcript_replayed=last.transcript_replayed,
        )
        self.result = service._finish(
            live, inp, response, usage, latency_ms, ttft_ms=ttft, streamed=True
        )


@dataclass(slots=True)
class _Failure:
    exc: ProviderError
    reached_client: bool  # a chunk of this attempt was handed out: no moving on


class _Failed(Exception):
    """Carries an attempt's failure out of its generator to the fallback loop."""

    def __init__(self, error: _Failure) -> None:
        super().__init__(str(error.exc))
        self.error = error


def _generator(stream: AsyncIterator[ChatChunk]) -> AsyncGenerator[ChatChunk, None]:
    """``stream`` as something ``aclose`` stops (providers' streams almost always are)."""
    if hasattr(stream, "aclose"):
        return cast(AsyncGenerator[ChatChunk, None], stream)
    return _iterate(stream)


async def _iterate(stream: AsyncIterator[ChatChunk]) -> AsyncGenerator[ChatChunk, None]:
    async for chunk in stream:
        yield chunk
