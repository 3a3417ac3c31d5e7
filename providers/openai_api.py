"""Any OpenAI-compatible chat completions API (OpenAI itself, vLLM, llama.cpp, Ollama, ...).

``spec.url`` is the base URL including the version prefix (``https://api.openai.com/v1``);
requests go to ``{url}/chat/completions`` and the health probe to ``{url}/models``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from providers._http import (
    SSE_HEADERS,
    HttpProvider,
    StreamState,
    iter_sse,
    loads,
    redact,
    usage_from,
)
from providers.base import (
    ChatChunk,
    ChatRequest,
    EndpointSpec,
    HealthResult,
    ProviderContext,
    StandardResponse,
)
from providers.errors import ProtocolError, ProviderError, Unavailable
from providers.hookspecs import hookimpl

# Keys of ``ChatRequest.extra`` forwarded verbatim as OpenAI sampling parameters.
PASSTHROUGH_PARAMS = frozenset(
    {
        "top_p",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "response_format",
        "logit_bias",
        "user",
        "reasoning_effort",
    }
)


class OpenAIProvider(HttpProvider):
    endpoint_type: ClassVar[str] = "openai_api"
    title: ClassVar[str] = "OpenAI-compatible API"
    description: ClassVar[str] = (
        "Any OpenAI-compatible chat completions API: OpenAI, Azure-style proxies, vLLM, "
        "llama.cpp, Ollama, LM Studio. URL is the base URL, e.g. https://api.openai.com/v1."
    )
    can_stream: ClassVar[bool] = True
    credential_fields: ClassVar[tuple[str, ...]] = ("api_key",)
    openai_params: ClassVar[frozenset[str]] = PASSTHROUGH_PARAMS

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
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
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
        if request.extra:
            body.update((k, v) for k, v in request.extra.items() if k in PASSTHROUGH_PARAMS)
        if stream:
            body["stream"] = True
            if config.stream_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    async def chat(self, request: ChatRequest) -> StandardResponse:
        body = self.build_body(request, stream=False)
        data = await self.request_json("POST", self._chat_url, body)
        try:
            choice = data["choices"][0]
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
                    chunk = self._read_chunk(data, state)
                    if chunk is not None:
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

    def _read_chunk(self, data: str, state: StreamState) -> ChatChunk | None:
        """One ``chat.completion.chunk``: the text delta to forward, if any."""
        chunk = loads(data, self.label)
        if not isinstance(chunk, dict) or chunk.get("error"):
            raise self._unexpected(chunk)
        if chunk.get("usage"):
            state.usage = chunk["usage"]
        text = reasoning = ""
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
            if choice.get("finish_reason"):
                state.finish = choice["finish_reason"]
        if not (text or reasoning):
            return None
        state.parts.append(text)
        return ChatChunk(delta=text, reasoning=reasoning)

    async def health(self) -> HealthResult:
        return await self.probe("GET", self._models_url)

    def _unexpected(self, data: Any) -> ProviderError:
        if isinstance(data, dict) and data.get("error"):
            message = data["error"]
            if isinstance(message, dict):
                message = message.get("message") or message
            text = redact(str(message)[:300], self.secrets)
            return Unavailable(f"{self.label} reported an error: {text}")
        return ProtocolError(f"{self.label} answered without the expected choices")


@hookimpl
def register_providers(register: Any) -> None:
    register(OpenAIProvider)
