"""The chat path: admission, session history, the provider call, metrics, session commit.

Kept lean on purpose: it runs on every request. Without a session nothing here touches the
database; with one, the turn is committed before the reply is handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy.exc import SQLAlchemyError

from providers.base import (
    ChatChunk,
    ChatRequest,
    Choice,
    Message,
    StandardResponse,
    ToolCall,
    ToolCallDelta,
    Usage,
    estimate_tokens,
)
from providers.errors import ProviderError, ProviderTimeout
from runtime.errors import InternalError, StoreUnavailable, Unsupported
from runtime.manager import LiveEndpoint
from runtime.metrics import MetricsHub, RequestRecord
from runtime.router import Attempts, RoutingOptions
from runtime.sessions import SessionContext, SessionService, new_messages
from runtime.throttle import LogThrottle

# Called after every answered or failed request: (endpoint, error or None, latency in ms).
# The health monitor's passive signals come from here; listeners must be quick and not raise.
OutcomeListener = Callable[[LiveEndpoint, ProviderError | None, float], None]
# What a chat goes to: one endpoint, or a route's candidates best first (Router.route).
Target = LiveEndpoint | Sequence[LiveEndpoint]

log = logging.getLogger("aiem.chat")

# What a store call raises when the database is down, full or unreachable.
STORE_ERRORS = (SQLAlchemyError, OSError)


@dataclass(slots=True)
class ChatInput:
    messages: list[Message]
    temperature: float | None = None
    max_tokens: int | None = None
    session_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Message features a provider may lack ("vision", "audio", "tools") -> where first seen.
    features: dict[str, str] | None = None


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
    tool_calls: list[ToolCall] | None = None
    logprobs: Any = None
    more_choices: list[Choice] | None = None
    # Messages in the session once this turn was committed (None without a session).
    session_length: int | None = None
    # A stream whose final text is not what its deltas added up to (a page that rewrote its
    # answer as it finished): the deltas as sent, so the end of the stream can correct them.
    streamed_content: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "tool_calls": [
                {"id": c.id, "name": c.name, "arguments": c.arguments}
                for c in self.tool_calls or ()
            ]
            or None,
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


PASS_THROUGH_LABELS = {
    "embeddings": "embeddings (/v1/embeddings) are",
    "completions": "legacy completions (/v1/completions) are",
}


def pass_through_endpoint(target: Target, api: str) -> LiveEndpoint:
    """The first candidate whose provider has ``api``; else the named 400 of the first."""
    candidates = (target,) if isinstance(target, LiveEndpoint) else target
    for live in candidates:
        if getattr(live.provider.capabilities, api):
            return live
    first = candidates[0]
    raise Unsupported(
        f"{PASS_THROUGH_LABELS[api]} not supported by endpoint type {first.endpoint_type}",
        param="model",
    )


class ToolCallAssembler:
    """Joins streamed tool-call pieces into whole calls (for the session and the result)."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls: dict[int, list[Any]] = {}

    def add(self, deltas: list[ToolCallDelta]) -> None:
        for delta in deltas:
            call = self.calls.setdefault(delta.index, ["", "", []])
            if delta.id is not None:
                call[0] = delta.id
            if delta.name:
                call[1] = delta.name
            call[2].append(delta.arguments)

    def result(self) -> list[ToolCall] | None:
        if not self.calls:
            return None
        return [ToolCall(c[0], c[1], "".join(c[2])) for _, c in sorted(self.calls.items())]


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
        self._store_warnings = LogThrottle(1.0)

    async def _admit(self, target: Target, inp: ChatInput) -> Attempts:
        candidates = (target,) if isinstance(target, LiveEndpoint) else target
        attempts = Attempts(candidates, self.routing, inp.extra, inp.features)
        await attempts.admit()
        return attempts

    def _outcome(self, live: LiveEndpoint, error: ProviderError | None, latency_ms: float) -> None:
        for listener in self.outcome_listeners:
            listener(live, error, latency_ms)

    async def _context(
        self, inp: ChatInput, live: LiveEndpoint
    ) -> tuple[SessionContext | None, list[Message]]:
        if inp.session_id is None:
            return None, [m for m in inp.messages if m.role != "system"]
        started = time.perf_counter()
        try:
            ctx = await asyncio.to_thread(self.sessions.load, inp.session_id)
            problem = self.sessions.store.room_problem()
        except STORE_ERRORS as exc:
            raise self._store_failure(live, inp, started, exc) from exc
        if problem is not None:
            # The turn could not be stored: do not call (and pay) the upstream for it.
            raise self._store_failure(live, inp, started, OSError(problem))
        return ctx, new_messages(ctx.history, inp.messages)

    def _store_failure(
        self, live: LiveEndpoint, inp: ChatInput, started: float, exc: BaseException
    ) -> StoreUnavailable:
        # Not the endpoint's fault: counted in the metrics, not fed to its health signals.
        # While the store is down every session chat fails alike: one line a second says so.
        unsaid = self._store_warnings.due(time.monotonic())
        if unsaid is not None:
            more = f" (and {unsaid} more since the last such line)" if unsaid else ""
            log.warning("store unavailable for a chat on %s: %s%s", live.name, exc, more)
        error = StoreUnavailable("the store is unavailable (database down or disk full)")
        self.metrics.store_errors += 1
        self._record_error(live, inp, started, error.kind, streamed=False)
        return error

    def _internal_failure(
        self, live: LiveEndpoint, inp: ChatInput, started: float, exc: Exception, *, streamed: bool
    ) -> InternalError:
        log.error("unexpected failure in a chat on %s", live.name, exc_info=exc)
        error = InternalError(f"internal error while answering ({type(exc).__name__})")
        self._record_error(live, inp, started, error.kind, streamed=streamed)
        return error

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
        self._record_error(
            live, inp, started, exc.kind, streamed=streamed, status=exc.upstream_status or 0
        )

    def _record_error(
        self,
        live: LiveEndpoint,
        inp: ChatInput,
        started: float,
        kind: str,
        *,
        streamed: bool,
        status: int = 0,
    ) -> None:
        self.metrics.record(
            RequestRecord(
                endpoint_id=live.id,
                at=time.time(),
                ok=False,
                latency_ms=(time.perf_counter() - started) * 1000,
                status_code=status,
                error_kind=kind,
                session_id=inp.session_id,
                streamed=streamed,
            )
        )

    async def _commit(
        self,
        live: LiveEndpoint,
        inp: ChatInput,
        started: float,
        ctx: SessionContext | None,
        fresh: list[Message],
        answer: Message,
        conversation: dict | None,
    ) -> None:
        if ctx is None:
            return
        turn = [*fresh, answer]
        try:
            await asyncio.to_thread(
                self.sessions.append, ctx, turn, endpoint_id=live.id, conversation=conversation
            )
        except STORE_ERRORS as exc:
            raise self._store_failure(live, inp, started, exc) from exc

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
        live: LiveEndpoint | None = attempts.live
        assert live is not None
        ctx, fresh = await self._context(inp, live)
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
            except Exception as exc:  # noqa: BLE001 - a bug or a bad value: a counted JSON error
                raise self._internal_failure(live, inp, started, exc, streamed=False) from exc
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
        answer = Message("assistant", response.content, tool_calls=response.tool_calls)
        await self._commit(live, inp, started, ctx, fresh, answer, response.conversation)
        result = self._finish(live, inp, response, usage, latency_ms)
        result.session_length = ctx.next_seq if ctx is not None else None
        return result

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
            tool_calls=response.tool_calls,
            logprobs=response.logprobs,
            more_choices=response.more_choices,
        )

    # ---- other OpenAI APIs passed through (embeddings, legacy completions) -----------------

    async def pass_through(
        self, target: Target, api: str, call: Callable[[LiveEndpoint], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """Admit, call, record: ``api`` names the capability ("embeddings", "completions").
        The first candidate that has it answers (no fallback: nothing here is retried)."""
        live = pass_through_endpoint(target, api)
        await live.admit()
        async with self._passing_through(live, streamed=False) as started:
            data = await call(live)
        self._record_pass_through(live, started, data.get("usage"))
        return data

    @contextlib.asynccontextmanager
    async def _passing_through(self, live: LiveEndpoint, *, streamed: bool) -> AsyncIterator[float]:
        """A pass-through call on an admitted ``live``: its timeout, its failures recorded, its
        slot released. Yields the start time."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(live.timeout):
                yield started
        except TimeoutError:
            done = "answer not complete" if streamed else "no answer"
            exc = ProviderTimeout(f"{done} within {live.timeout:g} s")
            self._record_failure(live, ChatInput([]), started, exc, streamed=streamed)
            raise exc from None
        except ProviderError as exc:
            self._record_failure(live, ChatInput([]), started, exc, streamed=streamed)
            raise
        finally:
            live.leave()

    def _record_pass_through(self, live: LiveEndpoint, started: float, usage: Any) -> None:
        usage = usage if isinstance(usage, dict) else {}
        tokens_in = usage.get("prompt_tokens") or 0
        tokens_out = usage.get("completion_tokens") or 0
        latency_ms = (time.perf_counter() - started) * 1000
        self._outcome(live, None, latency_ms)
        self.metrics.record(
            RequestRecord(
                endpoint_id=live.id,
                at=time.time(),
                ok=True,
                latency_ms=latency_ms,
                ttft_ms=latency_ms,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                cost=live.cost(tokens_in, tokens_out),
            )
        )

    async def open_pass_through_stream(
        self, target: Target, api: str, stream: Callable[[LiveEndpoint], AsyncIterator[bytes]]
    ) -> AsyncIterator[bytes]:
        """Admit now (refusals stay plain HTTP errors); the bytes flow when iterated."""
        live = pass_through_endpoint(target, api)
        await live.admit()
        return self._relay(live, stream)

    async def _relay(
        self, live: LiveEndpoint, stream: Callable[[LiveEndpoint], AsyncIterator[bytes]]
    ) -> AsyncIterator[bytes]:
        async with self._passing_through(live, streamed=True) as started:
            async for piece in stream(live):
                yield piece
        self._record_pass_through(live, started, None)

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
            ctx, fresh = await self.service._context(self.inp, self.live)
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
        tools = ToolCallAssembler()
        further = False  # a chunk of another choice (n > 1) was handed out
        try:
            async with (
                asyncio.timeout(live.timeout),
                contextlib.aclosing(_generator(live.provider.stream(request))) as stream,
            ):
                async for chunk in stream:
                    if chunk.index:  # a further choice (n > 1): forwarded, not kept
                        further = True
                        yield chunk
                        continue
                    if chunk.tool_calls:
                        if ttft is None:
                            ttft = (time.perf_counter() - started) * 1000
                        tools.add(chunk.tool_calls)
                    if chunk.delta:
                        if ttft is None:
                            ttft = (time.perf_counter() - started) * 1000
                        parts.append(chunk.delta)
                    if chunk.reasoning:
                        reasoning.append(chunk.reasoning)
                    last = chunk
                    if chunk.delta or chunk.reasoning or chunk.tool_calls or chunk.logprobs:
                        yield chunk
        except (TimeoutError, ProviderError) as exc:
            error = (
                exc
                if isinstance(exc, ProviderError)
                else ProviderTimeout(f"answer not complete within {live.timeout:g} s")
            )
            service._record_failure(live, inp, started, error, streamed=True)
            reached = bool(parts or reasoning or tools.calls or further)
            raise _Failed(_Failure(error, reached)) from None
        except Exception as exc:  # noqa: BLE001 - a bug or a bad value: an error event
            raise service._internal_failure(live, inp, started, exc, streamed=True) from exc
        # A final chunk's whole content wins: the deltas may not add up to it.
        content = last.content if last.content is not None else "".join(parts)
        latency_ms = (time.perf_counter() - started) * 1000
        usage = settle_usage(last.usage, request, content)
        calls = tools.result()
        answer = Message("assistant", content, tool_calls=calls)
        await service._commit(live, inp, started, ctx, fresh, answer, last.conversation)
        response = StandardResponse(
            content=content,
            model=live.model_name or live.name,
            usage=usage,
            finish_reason=last.finish_reason or "stop",
            conversation=last.conversation,
            reasoning="".join(reasoning) or None,
            transcript_replayed=last.transcript_replayed,
            tool_calls=calls,
        )
        self.result = service._finish(
            live, inp, response, usage, latency_ms, ttft_ms=ttft, streamed=True
        )
        self.result.session_length = ctx.next_seq if ctx is not None else None
        if last.content is not None and content != (sent := "".join(parts)):
            self.result.streamed_content = sent


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
