"""The Anthropic Messages API (``POST {url}/v1/messages``).

System messages travel in the top-level ``system`` field, ``max_tokens`` is always sent
(the API requires it), and extended-thinking output is surfaced as ``reasoning``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from providers._http import (
    SSE_HEADERS,
    HttpProvider,
    StreamState,
    clip,
    iter_sse,
    loads,
    usage_from,
)
from providers.anthropic_format import CAPABILITIES, anthropic_messages, apply_extra
from providers.base import (
    ChatChunk,
    ChatRequest,
    EndpointSpec,
    HealthResult,
    ProviderContext,
    StandardResponse,
    ToolCall,
    ToolCallDelta,
)
from providers.errors import (
    AuthError,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    RateLimited,
    Unavailable,
)
from providers.hookspecs import hookimpl

DEFAULT_URL = "https://api.anthropic.com"

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Error ``type`` values of the Messages API, for errors that arrive inside a stream.
ERROR_TYPES: dict[str, type[ProviderError]] = {
    "authentication_error": AuthError,
    "permission_error": AuthError,
    "rate_limit_error": RateLimited,
    "invalid_request_error": InvalidRequest,
    "not_found_error": InvalidRequest,
    "request_too_large": InvalidRequest,
    "overloaded_error": Unavailable,
    "api_error": Unavailable,
}


class AnthropicProvider(HttpProvider):
    endpoint_type: ClassVar[str] = "anthropic_api"
    title: ClassVar[str] = "Anthropic Messages API"
    description: ClassVar[str] = (
        "Claude models through the Anthropic Messages API. URL defaults to "
        "https://api.anthropic.com."
    )
    can_stream: ClassVar[bool] = True
    needs_credentials: ClassVar[bool] = True
    credential_fields: ClassVar[tuple[str, ...]] = ("api_key",)
    capabilities = CAPABILITIES

    class Config(BaseModel):
        """Settings of an Anthropic Messages API endpoint."""

        model_config = ConfigDict(extra="forbid")

        anthropic_version: str = Field(
            "2023-06-01", min_length=1, description="Value of the anthropic-version header."
        )
        max_tokens: int = Field(
            1024, ge=1, description="Answer length cap used when a request sets none (required)."
        )
        default_temperature: float | None = Field(
            None, ge=0.0, le=1.0, description="Temperature used when a request sets none."
        )
        thinking_budget_tokens: int | None = Field(
            None,
            ge=1024,
            description="Enable extended thinking with this token budget; must be below "
            "max_tokens. Thinking text is returned as reasoning.",
        )
        extra_headers: dict[str, str] = Field(
            default_factory=dict,
            description="Extra HTTP headers sent with every request (e.g. anthropic-beta).",
        )
        extra_body: dict[str, JsonValue] = Field(
            default_factory=dict,
            description="Extra JSON fields merged into every request body (e.g. top_k).",
        )

        @model_validator(mode="after")
        def _budget_below_max_tokens(self) -> AnthropicProvider.Config:
            budget = self.thinking_budget_tokens
            if budget is not None and budget >= self.max_tokens:
                raise ValueError(
                    f"thinking_budget_tokens ({budget}) must be less than max_tokens "
                    f"({self.max_tokens})"
                )
            return self

    def __init__(self, spec: EndpointSpec, context: ProviderContext | None = None) -> None:
        super().__init__(spec, context)
        base = (spec.url or DEFAULT_URL).rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        self._messages_url = f"{base}/v1/messages"
        self._models_url = f"{base}/v1/models"

    def default_headers(self) -> dict[str, str]:
        headers = {
            "x-api-key": self.require_credential("api_key"),
            "anthropic-version": self.config.anthropic_version,
        }
        headers.update(self.config.extra_headers)
        return headers

    def build_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        config = self.config
        body: dict[str, Any] = {
            "model": self.spec.model_name,
            "max_tokens": request.max_tokens or config.max_tokens,
            "messages": anthropic_messages(request.messages),
        }
        system = request.system
        if system:
            body["system"] = system
        temperature = request.temperature
        if temperature is None:
            temperature = config.default_temperature
        if temperature is not None:
            body["temperature"] = temperature
        if config.thinking_budget_tokens is not None:
            body["thinking"] = {"type": "enabled", "budget_tokens": config.thinking_budget_tokens}
        if request.extra:  # checked against CAPABILITIES by the runtime
            apply_extra(body, request.extra)
        if config.extra_body:
            body.update(config.extra_body)
        if stream:
            body["stream"] = True
        return body

    async def chat(self, request: ChatRequest) -> StandardResponse:
        data = await self.request_json(
            "POST", self._messages_url, self.build_body(request, stream=False)
        )
        if not isinstance(data, dict):
            raise ProtocolError(f"{self.label} answered something that is not a message")
        if data.get("type") == "error":
            raise self.stream_error(data)
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise ProtocolError(f"{self.label} answered a message without content blocks")
        text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        thinking = "".join(b.get("thinking", "") for b in blocks if b.get("type") == "thinking")
        calls = [
            ToolCall(b.get("id", ""), b.get("name", ""), orjson.dumps(b.get("input")).decode())
            for b in blocks
            if b.get("type") == "tool_use"
        ]
        finish = STOP_REASONS.get(data.get("stop_reason") or "", "stop")
        if json_mode(request) and calls:
            text, calls, finish = calls[0].arguments, [], "stop"
        return StandardResponse(
            content=text,
            model=data.get("model") or self.spec.model_name,
            usage=self._usage(data.get("usage") or {}, request, text),
            finish_reason=finish,
            reasoning=thinking or None,
            tool_calls=calls or None,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        body = orjson.dumps(self.build_body(request, stream=True))
        state = ToolStreamState(json_mode(request))
        with self.boundary():
            async with self.session.post(
                self._messages_url, data=body, headers=SSE_HEADERS
            ) as resp:
                await self.raise_for_stream_status(resp)
                async for event, data in iter_sse(resp.content):
                    chunk = self._read_event(event, data, state)
                    if chunk is not None:
                        yield chunk
                    if state.done:
                        break
        if not state.done and state.finish is None:
            raise Unavailable(f"{self.label} stream ended before the answer was complete")
        finish = STOP_REASONS.get(state.finish or "", "stop")
        yield ChatChunk(
            finish_reason="stop" if state.json_mode else finish,
            usage=self._usage(state.usage, request, "".join(state.parts)),
        )

    def _read_event(self, event: str, data: str, state: ToolStreamState) -> ChatChunk | None:
        """Apply one Messages stream event; returns the chunk to forward, if any."""
        if event == "ping":
            return None
        payload = loads(data, self.label)
        if not isinstance(payload, dict):
            raise ProtocolError(f"{self.label} sent a stream event that is not an object")
        kind = payload.get("type") or event
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if delta.get("type") == "input_json_delta":
                return state.tool_input(payload.get("index"), delta.get("partial_json") or "")
            if state.json_mode and delta.get("type") == "text_delta":
                return None  # the answer is the forced tool's input alone
            return self._delta(delta, state)
        if kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "tool_use":
                return state.tool_start(payload.get("index"), block)
            return self._delta(block, state)
        if kind == "message_start":
            state.usage.update((payload.get("message") or {}).get("usage") or {})
        elif kind == "message_delta":
            state.usage.update(payload.get("usage") or {})
            state.finish = (payload.get("delta") or {}).get("stop_reason") or state.finish
        elif kind == "message_stop":
            state.done = True
        elif kind == "error":
            raise self.stream_error(payload)
        return None

    @staticmethod
    def _delta(delta: dict[str, Any], state: StreamState) -> ChatChunk | None:
        text = delta.get("text") or ""
        thinking = delta.get("thinking") or ""
        if not (text or thinking):
            return None  # signature / tool-input deltas and empty block starts
        state.parts.append(text)
        return ChatChunk(delta=text, reasoning=thinking)

    def _usage(self, usage: dict[str, Any], request: ChatRequest, text: str) -> Any:
        prompt = usage.get("input_tokens")
        if isinstance(prompt, int):
            prompt += (usage.get("cache_creation_input_tokens") or 0) + (
                usage.get("cache_read_input_tokens") or 0
            )
        return usage_from(prompt, usage.get("output_tokens"), request, text)

    def stream_error(self, payload: dict[str, Any]) -> ProviderError:
        """An ``{"type": "error", "error": {...}}`` body received with a 200 or mid-stream."""
        error = payload.get("error") or {}
        kind = str(error.get("type") or "api_error")
        message = (
            f"{self.label} reported {kind}: {clip(str(error.get('message', '')), self.secrets)}"
        )
        return ERROR_TYPES.get(kind, Unavailable)(message)

    async def health(self) -> HealthResult:
        return await self.probe("GET", self._models_url)


def json_mode(request: ChatRequest) -> bool:
    """Whether the answer is the forced JSON tool's input (response_format was asked)."""
    return "response_format" in request.extra


class ToolStreamState(StreamState):
    """Also maps content blocks to OpenAI tool-call indexes, or, in JSON mode, the forced
    tool's input fragments to answer text."""

    __slots__ = ("json_mode", "tool_index")

    def __init__(self, json_mode: bool) -> None:
        super().__init__()
        self.json_mode = json_mode
        self.tool_index: dict[Any, int] = {}

    def tool_start(self, block: Any, content_block: dict[str, Any]) -> ChatChunk | None:
        index = self.tool_index[block] = len(self.tool_index)
        if self.json_mode:
            return None
        call = ToolCallDelta(index, content_block.get("id", ""), content_block.get("name", ""))
        return ChatChunk(tool_calls=[call])

    def tool_input(self, block: Any, fragment: str) -> ChatChunk | None:
        if not fragment or block not in self.tool_index:
            return None
        if self.json_mode:
            self.parts.append(fragment)
            return ChatChunk(delta=fragment)
        return ChatChunk(tool_calls=[ToolCallDelta(self.tool_index[block], arguments=fragment)])


@hookimpl
def register_providers(register: Any) -> None:
    register(AnthropicProvider)
