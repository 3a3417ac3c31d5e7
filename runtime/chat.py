"""The chat path: admission, session history, the provider call, metrics, session commit.

Kept lean on purpose: it runs on every request. Without a session nothing here touches the
database; with one, the turn is committed before the reply is handed back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

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
from runtime.errors import Unsupported
from runtime.manager import LiveEndpoint
from runtime.metrics import MetricsHub, RequestRecord
from runtime.sessions import SessionContext, SessionService, new_messages

# Called after every answered or failed request: (endpoint, error or None, latency in ms).
# The health monitor's passive signals come from here; listeners must be quick and not raise.
OutcomeListener = Callable[[LiveEndpoint, ProviderError | None, float], None]


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


def refusal(live: LiveEndpoint, inp: ChatInput) -> Unsupported | None:
    """The error for the first request field or message feature the endpoint's provider
    would otherwise have to drop; None when it honours them all (a router may skip it)."""
    label, param = live.provider.capabilities.refusal(inp.extra, inp.features)
    if not label:
        return None
    return Unsupported(f"{label} is not supported by endpoint type {live.endpoint_type}",
                       param=param)  # fmt: skip


def check_params(live: LiveEndpoint, inp: ChatInput) -> None:
    error = refusal(live, inp)
    if error is not None:
        raise error


PASS_THROUGH_LABELS = {
    "embeddings": "embeddings (/v1/embeddings) are",
    "completions": "legacy completions (/v1/completions) are",
}


def require(live: LiveEndpoint, api: str) -> None:
    if not getattr(live.provider.capabilities, api):
        raise Unsupported(
            f"{PASS_THROUGH_LABELS[api]} not supported by endpoint type {live.endpoint_type}",
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
    def __init__(self, metrics: MetricsHub, sessions: SessionService) -> None:
        self.sessions = sessions
        self.metrics = metrics
        self.outcome_listeners: list[OutcomeListener] = []

    def _outcome(self, live: LiveEndpoint, error: ProviderError | None, latency_ms: float) -> None:
        for listener in self.outcome_listeners:
            listener(live, error, latency_ms)

    async def _context(self, inp: ChatInput) -> tuple[SessionContext | None, list[Message]]:
        if inp.session_id is None:
            return None, [m for m in inp.messages if m.role != "system"]
        ctx = await asyncio.to_thread(self.sessions.load, inp.session_id)
        return ctx, new_messages(ctx.history, inp.messages)

    @staticmethod
    def _request(inp: ChatInput, ctx: SessionContext | None, fresh: list[Message]) -> ChatRequest:
        system = [m for m in inp.messages if m.role == "system"]
        history = ctx.history if ctx is not None else []
        return ChatRequest(
            messages=[*system, *history, *fresh] if ctx is not None else list(inp.messages),
            temperature=inp.temperature,
            max_tokens=inp.max_tokens,
            session_id=inp.session_id,
            conversation=ctx.conversation if ctx is not None else None,
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
        answer: Message,
        conversation: dict | None,
    ) -> None:
        if ctx is None:
            return
        turn = [*fresh, answer]
        await asyncio.to_thread(
            self.sessions.append, ctx, turn, endpoint_id=live.id, conversation=conversation
        )

    # ---- one answer ------------------------------------------------------------------------

    async def chat(self, live: LiveEndpoint, inp: ChatInput) -> ChatResult:
        if inp.extra or inp.features:
            check_params(live, inp)
        live.admit()
        try:
            if inp.session_id is None:
                return await self._chat(live, inp)
            async with self.sessions.lock(inp.session_id):
                return await self._chat(live, inp)
        finally:
            live.gate.leave()

    async def _chat(self, live: LiveEndpoint, inp: ChatInput) -> ChatResult:
        ctx, fresh = await self._context(inp)
        request = self._request(inp, ctx, fresh)
        started = time.perf_counter()
        try:
            response = await self._call(live, request)
        except ProviderError as exc:
            self._record_failure(live, inp, started, exc, streamed=False)
            raise
        latency_ms = (time.perf_counter() - started) * 1000
        usage = settle_usage(response.usage, request, response.content)
        answer = Message("assistant", response.content, tool_calls=response.tool_calls)
        await self._commit(live, ctx, fresh, answer, response.conversation)
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
        self, live: LiveEndpoint, api: str, call: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """Admit, call, record: ``api`` names the capability ("embeddings", "completions")."""
        require(live, api)
        live.admit()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(live.timeout):
                data = await call()
        except TimeoutError:
            exc = ProviderTimeout(f"no answer within {live.timeout:g} s")
            self._record_failure(live, ChatInput([]), started, exc, streamed=False)
            raise exc from None
        except ProviderError as exc:
            self._record_failure(live, ChatInput([]), started, exc, streamed=False)
            raise
        finally:
            live.gate.leave()
        self._record_pass_through(live, started, data.get("usage"))
        return data

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

    def open_pass_through_stream(
        self, live: LiveEndpoint, api: str, stream: Callable[[], AsyncIterator[bytes]]
    ) -> AsyncIterator[bytes]:
        """Admit now (refusals stay plain HTTP errors); the bytes flow when iterated."""
        require(live, api)
        live.admit()
        return self._relay(live, stream)

    async def _relay(
        self, live: LiveEndpoint, stream: Callable[[], AsyncIterator[bytes]]
    ) -> AsyncIterator[bytes]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(live.timeout):
                async for piece in stream():
                    yield piece
        except TimeoutError:
            exc = ProviderTimeout(f"answer not complete within {live.timeout:g} s")
            self._record_failure(live, ChatInput([]), started, exc, streamed=True)
            raise exc from None
        except ProviderError as exc:
            self._record_failure(live, ChatInput([]), started, exc, streamed=True)
            raise
        finally:
            live.gate.leave()
        self._record_pass_through(live, started, None)

    # ---- streaming -------------------------------------------------------------------------

    async def open_stream(self, live: LiveEndpoint, inp: ChatInput) -> ChatStream:
        """Admit the request now (so refusals are plain HTTP errors), stream later."""
        if inp.extra or inp.features:
            check_params(live, inp)
        live.admit()
        return ChatStream(self, live, inp)


class ChatStream:
    """The chunks of one streamed answer, then ``result`` (or the ProviderError raised)."""

    def __init__(self, service: ChatService, live: LiveEndpoint, inp: ChatInput) -> None:
        self.service = service
        self.live = live
        self.inp = inp
        self.result: ChatResult | None = None
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.live.gate.leave()

    async def chunks(self) -> AsyncIterator[ChatChunk]:
        try:
            if self.inp.session_id is None:
                async for chunk in self._run():
                    yield chunk
            else:
                async with self.service.sessions.lock(self.inp.session_id):
                    async for chunk in self._run():
                        yield chunk
        finally:
            self.release()

    async def _run(self) -> AsyncIterator[ChatChunk]:
        service, live, inp = self.service, self.live, self.inp
        ctx, fresh = await service._context(inp)
        request = service._request(inp, ctx, fresh)
        started = time.perf_counter()
        parts: list[str] = []
        reasoning: list[str] = []
        last = ChatChunk()
        ttft: float | None = None
        tools = ToolCallAssembler()
        try:
            async with asyncio.timeout(live.timeout):
                async for chunk in live.provider.stream(request):
                    if chunk.index:  # a further choice (n > 1): forwarded, not kept
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
        except TimeoutError:
            exc = ProviderTimeout(f"answer not complete within {live.timeout:g} s")
            service._record_failure(live, inp, started, exc, streamed=True)
            raise exc from None
        except ProviderError as exc:
            service._record_failure(live, inp, started, exc, streamed=True)
            raise
        # A final chunk's whole content wins: the deltas may not add up to it.
        content = last.content if last.content is not None else "".join(parts)
        latency_ms = (time.perf_counter() - started) * 1000
        usage = settle_usage(last.usage, request, content)
        calls = tools.result()
        answer = Message("assistant", content, tool_calls=calls)
        await service._commit(live, ctx, fresh, answer, last.conversation)
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
