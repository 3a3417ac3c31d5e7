"""Any OpenAI-compatible chat completions API (OpenAI itself, vLLM, llama.cpp, Ollama, ...).

``spec.url`` is the base URL including the version prefix (``https://api.openai.com/v1``);
requests go to ``{url}/chat/completions`` and the health probe to ``{url}/models``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from providers._http import (
    SSE_HEADERS,
    HttpProvider,
    StreamState,
    clip,
    iter_sse,
    loads,
    usage_from,
)
from providers.base import (
    ChatChunk,
    ChatRequest,
    Choice,
    EndpointSpec,
    HealthResult,
    Message,
    ProviderContext,
    StandardResponse,
    ToolCall,
    ToolCallDelta,
)
from providers.capabilities import FLAG_OF_FIELD, Capabilities
from providers.errors import ProtocolError, ProviderError, Unavailable
from providers.hookspecs import hookimpl

# Every Chat Completions field is passed as is: the upstream speaks the same API.
CAPABILITIES = Capabilities(
    tools=True,
    tool_choice=True,
    parallel_tool_calls=True,
    vision=True,
    audio=True,
    json_object=True,
    json_schema=True,
    json_with_tools=True,
    logprobs=True,
    n=True,
    embeddings=True,
    completions=True,
    params=frozenset(
        {
            "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias",
            "user", "reasoning_effort", "metadata", "store", "service_tier", "prediction",
            "modalities", "audio", "web_search_options", "verbosity", "safety_identifier",
            "prompt_cache_key", "functions", "function_call",
        }
    ),
)  # fmt: skip

PASSED_FIELDS = CAPABILITIES.params | set(FLAG_OF_FIELD) | {"response_format"}


def openai_message(message: Message) -> dict[str, Any]:
    """A message in the Chat Completions shape (the union's structured fields included)."""
    if message.plain:
        return {"role": message.role, "content": message.content}
    out: dict[str, Any] = {
        "role": message.role,
        "content": message.parts if message.parts is not None else message.content,
    }
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
        if not message.content:
            out["content"] = None
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def tool_calls_of(message: dict[str, Any]) -> list[ToolCall] | None:
    calls = message.get("tool_calls")
    if not calls:
        return None
    out = []
    for call in calls:
        function = call.get("function") or {}
        out.append(
            ToolCall(
                str(call.get("id") or ""),
                str(function.get("name") or ""),
                str(function.get("arguments") or ""),
            )
        )
    return out


def tool_call_deltas(calls: list[dict[str, Any]]) -> list[ToolCallDelta]:
    out = []
    for call in calls:
        function = call.get("function") or {}
        out.append(
            ToolCallDelta(
                index=call.get("index") or 0,
                id=call.get("id"),
                name=function.get("name"),
                arguments=function.get("arguments") or "",
            )
        )
    return out


class OpenAIProvider(HttpProvider):
    endpoint_type: ClassVar[str] = "openai_api"
    title: ClassVar[str] = "OpenAI-compatible API"
    description: ClassVar[str] = (
        "Any OpenAI-compatible chat completions API: OpenAI, Azure-style proxies, vLLM, "
        "llama.cpp, Ollama, LM Studio. URL is the base URL, e.g. https://api.openai.com/v1."
    )
    can_stream: ClassVar[bool] = True
    credential_fields: ClassVar[tuple[str, ...]] = ("api_key",)
    capabilities = CAPABILITIES

    class Config(BaseModel):
        """Settings of an OpenAI-compatible endpoint."""

        model_config = ConfigDict(extra="forbid")

        organization: str | None = Field(
            None, description="OpenAI organization id, sent as the OpenAI-Organization header."
        )
        project: str | None = Field(
            None, description="OpenAI project id, sent as the OpenAI-Project header."
        )
        extra_headers: dict[str, str] = Field(
            default_factory=dict, description="Extra HTTP headers sent with every request."
        )
        default_temperature: float | None = Field(
            None, ge=0.0, le=2.0, description="Temperature used when a request sets none."
        )
        default_max_tokens: int | None = Field(
            None, ge=1, description="Answer length cap used when a request sets none."
        )
        max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
            "max_tokens",
            description="Request field carrying the length cap (newer OpenAI models want "
            "max_completion_tokens).",
        )
        extra_body: dict[str, JsonValue] = Field(
            default_factory=dict,
            description="Extra JSON fields merged into every request body (e.g. top_p).",
        )
        stream_usage: bool = Field(
            True,
            description='Ask for token usage when streaming (stream_options {"include_usage": '
            "true}); turn off for servers that reject stream_options.",
        )

    def __init__(self, spec: EndpointSpec, context: ProviderContext | None = None) -> None:
        super().__init__(spec, context)
        base = spec.url.rstrip("/")
        self._chat_url = f"{base}/chat/completions"
        self._models_url = f"{base}/models"
        self._embeddings_url = f"{base}/embeddings"
        self._completions_url = f"{base}/completions"

    def default_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        api_key = self.spec.credentials.get("api_key")
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        if self.config.organization:
            headers["OpenAI-Organization"] = self.config.organization
        if self.config.project:
            headers["OpenAI-Project"] = self.config.project
        headers.update(self.config.extra_headers)
        return headers

    def build_body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        config = self.config
        body: dict[str, Any] = {
            "model": self.spec.model_name,
            "messages": [openai_message(m) for m in request.messages],
        }
        temperature = request.temperature
        if temperature is None:
            temperature = config.default_temperature
        if temperature is not None:
            body["temperature"] = temperature
        max_tokens = request.max_tokens or config.default_max_tokens
        if max_tokens is not None:
            body[config.max_tokens_field] = max_tokens
        if config.extra_body:
            body.update(config.extra_body)
        if request.extra:  # checked against CAPABILITIES by the runtime; others never sent
            body.update((k, v) for k, v in request.extra.items() if k in PASSED_FIELDS)
        if stream:
            body["stream"] = True
            if config.stream_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    async def chat(self, request: ChatRequest) -> StandardResponse:
        body = self.build_body(request, stream=False)
        data = await self.request_json("POST", self._chat_url, body)
        try:
            choices = data["choices"]
            choice = choices[0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise self._unexpected(data) from None
        content = message.get("content") or ""
        usage = data.get("usage") or {}
        return StandardResponse(
            content=content,
            model=data.get("model") or self.spec.model_name,
            usage=usage_from(
                usage.get("prompt_tokens"), usage.get("completion_tokens"), request, content
            ),
            finish_reason=choice.get("finish_reason") or "stop",
            reasoning=message.get("reasoning_content") or message.get("reasoning") or None,
            tool_calls=tool_calls_of(message),
            logprobs=choice.get("logprobs"),
            more_choices=[_choice(c) for c in choices[1:]] or None,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        body = orjson.dumps(self.build_body(request, stream=True))
        state = StreamState()
        with self.boundary():
            async with self.session.post(self._chat_url, data=body, headers=SSE_HEADERS) as resp:
                await self.raise_for_stream_status(resp)
                async for _event, data in iter_sse(resp.content):
                    if data == "[DONE]":
                        state.done = True
                        break
                    for chunk in self._read_chunk(data, state):
                        yield chunk
        if not state.done and state.finish is None:
            raise Unavailable(f"{self.label} stream ended before the answer was complete")
        usage = state.usage
        yield ChatChunk(
            finish_reason=state.finish or "stop",
            usage=usage_from(
                usage.get("prompt_tokens"),
                usage.get("completion_tokens"),
                request,
                "".join(state.parts),
            ),
        )

    def _read_chunk(self, data: str, state: StreamState) -> Iterator[ChatChunk]:
        """One ``chat.completion.chunk``: the pieces to forward, one per choice that has any."""
        chunk = loads(data, self.label)
        if not isinstance(chunk, dict) or chunk.get("error"):
            raise self._unexpected(chunk)
        if chunk.get("usage"):
            state.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = choice.get("index") or 0
            if index:
                yield self._further_choice(choice, index)
                continue
            if choice.get("finish_reason"):
                state.finish = choice["finish_reason"]
            piece = self._piece(choice)
            if piece is not None:
                state.parts.append(piece.delta)
                yield piece

    @staticmethod
    def _piece(choice: dict[str, Any]) -> ChatChunk | None:
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
        calls = delta.get("tool_calls")
        logprobs = choice.get("logprobs")
        if not (text or reasoning or calls or logprobs):
            return None
        return ChatChunk(
            delta=text,
            reasoning=reasoning,
            tool_calls=tool_call_deltas(calls) if calls else None,
            logprobs=logprobs or None,
        )

    @staticmethod
    def _further_choice(choice: dict[str, Any], index: int) -> ChatChunk:
        delta = choice.get("delta") or {}
        calls = delta.get("tool_calls")
        return ChatChunk(
            delta=delta.get("content") or "",
            finish_reason=choice.get("finish_reason"),
            tool_calls=tool_call_deltas(calls) if calls else None,
            logprobs=choice.get("logprobs") or None,
            index=index,
        )

    async def health(self) -> HealthResult:
        return await self.probe("GET", self._models_url)

    # ---- pass-through APIs ---------------------------------------------------------------

    def _upstream_body(self, body: dict[str, Any]) -> dict[str, Any]:
        return {**body, "model": self.spec.model_name}

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        data = await self.request_json("POST", self._embeddings_url, self._upstream_body(body))
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise self._unexpected(data)
        return data

    async def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        data = await self.request_json("POST", self._completions_url, self._upstream_body(body))
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise self._unexpected(data)
        return data

    async def completions_stream(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        payload = orjson.dumps(self._upstream_body(body))
        with self.boundary():
            async with self.session.post(
                self._completions_url, data=payload, headers=SSE_HEADERS
            ) as resp:
                await self.raise_for_stream_status(resp)
                async for _event, data in iter_sse(resp.content):
                    yield b"data: " + data.encode() + b"\n\n"
                    if data == "[DONE]":
                        return

    def _unexpected(self, data: Any) -> ProviderError:
        if isinstance(data, dict) and data.get("error"):
            message = data["error"]
            if isinstance(message, dict):
                message = message.get("message") or message
            text = clip(str(message), self.secrets)
            return Unavailable(f"{self.label} reported an error: {text}")
        return ProtocolError(f"{self.label} answered without the expected choices")


def _choice(choice: dict[str, Any]) -> Choice:
    message = choice.get("message") or {}
    return Choice(
        content=message.get("content") or "",
        finish_reason=choice.get("finish_reason") or "stop",
        tool_calls=tool_calls_of(message),
        logprobs=choice.get("logprobs"),
    )


@hookimpl
def register_providers(register: Any) -> None:
    register(OpenAIProvider)
