"""Any JSON REST API, described by a request template and response paths.

The body template is a JSON value whose strings may hold placeholders. A string that is
exactly one placeholder is replaced by the typed value (``"{{messages}}"`` becomes a JSON
list, ``"{{temperature}}"`` a number; an object key whose value resolves to null is left
out); placeholders inside longer strings are filled in as text. Headers and the path may
reference credentials as ``{api_key}``-style names, filled once when the endpoint starts.

Placeholders: ``{{prompt}}`` (newest user message), ``{{messages}}`` (list of
``{role, content}``; OpenAI-shaped ``tool_calls`` / ``tool_call_id`` in a tool-call history),
``{{system}}``, ``{{transcript}}`` (the whole conversation as "role: text" lines),
``{{temperature}}``, ``{{max_tokens}}``, ``{{model}}``, ``{{tools}}`` and ``{{tool_choice}}``
(the OpenAI request's, when it has them). An endpoint accepts tools only when its template
has ``{{tools}}`` and its config a ``tool_calls_path``; every other request field is refused.
"""

from __future__ import annotations

import re
import string
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from providers._http import (
    JSON_HEADERS,
    SSE_HEADERS,
    HttpProvider,
    iter_sse,
    loads,
    usage_from,
)
from providers.base import (
    ChatChunk,
    ChatRequest,
    EndpointSpec,
    HealthResult,
    ProviderContext,
    StandardResponse,
    ToolCall,
)
from providers.capabilities import Capabilities
from providers.errors import AuthError, ProtocolError, Unavailable
from providers.hookspecs import hookimpl
from providers.openai_api import openai_message
from providers.util import deep_merge

PLACEHOLDERS = (
    "prompt", "messages", "system", "transcript", "temperature", "max_tokens", "model", "tools",
    "tool_choice",
)  # fmt: skip
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_OMIT = object()

Values = dict[str, Any]
Renderer = Callable[[Values], Any]


# --- templates ------------------------------------------------------------------------------


def compile_template(template: Any, where: str = "body_template") -> tuple[Renderer, set[str]]:
    """Turn a JSON template into a fast renderer; also returns the placeholder names used.

    Raises ValueError naming the location of an unknown placeholder.
    """
    used: set[str] = set()
    return _compile(template, where, used), used


def _compile(node: Any, where: str, used: set[str]) -> Renderer:
    if isinstance(node, str):
        return _compile_string(node, where, used)
    if isinstance(node, dict):
        items = [(key, _compile(value, f"{where}.{key}", used)) for key, value in node.items()]
        return lambda values: _render_object(items, values)
    if isinstance(node, list):
        parts = [_compile(value, f"{where}.{i}", used) for i, value in enumerate(node)]
        return lambda values: [part(values) for part in parts]
    return lambda values: node


def _render_object(items: list[tuple[str, Renderer]], values: Values) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, render in items:
        value = render(values)
        if value is not _OMIT:
            out[key] = value
    return out


def _compile_string(text: str, where: str, used: set[str]) -> Renderer:
    names = _PLACEHOLDER.findall(text)
    for name in names:
        if name not in PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {{{{{name}}}}} at {where}; known: "
                + ", ".join(f"{{{{{n}}}}}" for n in PLACEHOLDERS)
            )
    used.update(names)
    if not names:
        return lambda values: text
    whole = _PLACEHOLDER.fullmatch(text)
    if whole:
        name = whole.group(1)
        return lambda values: _OMIT if values[name] is None else values[name]
    return lambda values: _PLACEHOLDER.sub(lambda m: _as_text(values[m.group(1)]), text)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def build_values(
    request: ChatRequest, used: set[str], model: str, temperature: Any, max_tokens: Any
) -> Values:
    """Only the placeholders a template uses are computed."""
    values: Values = {"temperature": temperature, "max_tokens": max_tokens, "model": model}
    if "tools" in used or "tool_choice" in used:
        values["tools"] = request.extra.get("tools")
        values["tool_choice"] = request.extra.get("tool_choice")
    if "prompt" in used:
        values["prompt"] = request.prompt
    if "system" in used:
        values["system"] = request.system
    if "messages" in used:
        values["messages"] = [openai_message(m) for m in request.messages]
    if "transcript" in used:
        values["transcript"] = "\n\n".join(f"{m.role}: {m.content}" for m in request.messages)
    return values


# --- paths ----------------------------------------------------------------------------------


def parse_path(path: str) -> tuple[str, ...]:
    """``"choices.0.message.content"`` -> segments; raises ValueError on empty segments."""
    segments = tuple(path.strip().split("."))
    if not path.strip() or any(not s for s in segments):
        raise ValueError(f"{path!r} is not a dotted path like 'data.answer' or 'choices.0.text'")
    return segments


def dig(data: Any, segments: tuple[str, ...]) -> Any:
    """Follow a parsed path; list indexes may be negative. Raises LookupError when absent."""
    for segment in segments:
        if isinstance(data, dict):
            data = data[segment]
        elif isinstance(data, list):
            try:
                data = data[int(segment)]
            except ValueError:
                raise KeyError(segment) from None
        else:
            raise KeyError(segment)
    return data


def dig_or_none(data: Any, segments: tuple[str, ...] | None) -> Any:
    if segments is None:
        return None
    try:
        return dig(data, segments)
    except LookupError:
        return None


def _credential_names(text: str, field: str) -> list[str]:
    names = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"{field}: {exc} (write literal braces as {{{{ and }}}})") from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"{field}: placeholder {{{name}}} must be a plain credential name")
        names.append(name)
    return names


def _query_params(body: Any) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in body.items():
        if isinstance(value, bool):
            params[key] = "true" if value else "false"
        elif value is not None:
            params[key] = _as_text(value)
    return params


def _default_body() -> JsonValue:
    return {"prompt": "{{prompt}}"}


# --- provider -------------------------------------------------------------------------------


class RestProvider(HttpProvider):
    endpoint_type: ClassVar[str] = "rest_api"
    title: ClassVar[str] = "Generic JSON REST API"
    description: ClassVar[str] = (
        "Any JSON REST API: a request body template with placeholders, a dotted path to the "
        "answer, optional token-usage paths and optional SSE streaming."
    )
    can_stream: ClassVar[bool] = True
    credential_fields: ClassVar[tuple[str, ...]] = ("api_key",)

    class Config(BaseModel):
        """Settings of a generic JSON REST endpoint."""

        model_config = ConfigDict(extra="forbid")

        method: Literal["POST", "PUT", "PATCH", "GET"] = Field(
            "POST", description="HTTP method. With GET the template object is sent as query."
        )
        path: str = Field(
            "",
            description="Appended to the endpoint URL, e.g. /v1/ask. May reference "
            "credentials as {api_key}.",
        )
        headers: dict[str, str] = Field(
            default_factory=dict,
            description="Extra headers; values may reference credentials, e.g. "
            '{"Authorization": "Bearer {api_key}"}.',
        )
        body_template: JsonValue = Field(
            default_factory=_default_body,
            description="JSON request body with placeholders: {{prompt}}, {{messages}}, "
            "{{system}}, {{transcript}}, {{temperature}}, {{max_tokens}}, {{model}}, "
            "{{tools}}, {{tool_choice}}.",
        )
        response_path: str = Field(
            description="Dotted path to the answer text, e.g. choices.0.message.content."
        )
        tool_calls_path: str | None = Field(
            None,
            description="Dotted path to the tool calls in the answer, OpenAI-shaped "
            "([{id, function: {name, arguments}}]), e.g. choices.0.message.tool_calls. With "
            "{{tools}} in the body template the endpoint accepts tools; streamed answers with "
            "tools arrive in one piece.",
        )
        usage_prompt_tokens_path: str | None = Field(
            None, description="Dotted path to the prompt token count, if the API reports one."
        )
        usage_completion_tokens_path: str | None = Field(
            None, description="Dotted path to the answer token count, if the API reports one."
        )
        default_temperature: float | None = Field(
            None, ge=0.0, le=2.0, description="{{temperature}} when a request sets none."
        )
        default_max_tokens: int | None = Field(
            None, ge=1, description="{{max_tokens}} when a request sets none."
        )
        stream_chunk_path: str | None = Field(
            None,
            description="Enables SSE streaming: dotted path to the text delta in each "
            "event's JSON data, e.g. choices.0.delta.content.",
        )
        stream_body_overrides: dict[str, JsonValue] | None = Field(
            None,
            description='Merged into the body when streaming, e.g. {"stream": true}.',
        )
        stream_done_marker: str | None = Field(
            "[DONE]",
            description="SSE data that ends the answer; null when the stream simply closes.",
        )
        health_path: str | None = Field(
            None,
            description="GET this path (appended to the URL) as the health probe and expect "
            "2xx; when unset the probe only checks the server answers below 500.",
        )

        @field_validator("body_template")
        @classmethod
        def _check_body_template(cls, value: Any) -> Any:
            compile_template(value)
            return value

        @field_validator("stream_body_overrides")
        @classmethod
        def _check_overrides(cls, value: Any) -> Any:
            if value is not None:
                compile_template(value, "stream_body_overrides")
            return value

        @field_validator(
            "response_path",
            "tool_calls_path",
            "usage_prompt_tokens_path",
            "usage_completion_tokens_path",
            "stream_chunk_path",
        )
        @classmethod
        def _check_path(cls, value: str | None) -> str | None:
            if value is not None:
                parse_path(value)
            return value

        @field_validator("path", "health_path")
        @classmethod
        def _check_url_path(cls, value: str | None) -> str | None:
            if value and not value.startswith(("/", "?")):
                raise ValueError(f"{value!r} must start with '/' (or '?' for a query)")
            if value:
                _credential_names(value, "path")
            return value

        @field_validator("headers")
        @classmethod
        def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
            for name, template in value.items():
                _credential_names(template, f"header {name!r}")
            return value

        @model_validator(mode="after")
        def _check_streaming(self) -> RestProvider.Config:
            streaming = self.stream_chunk_path is not None
            if self.stream_body_overrides is not None and not streaming:
                raise ValueError("stream_body_overrides needs stream_chunk_path to be set")
            if (self.method == "GET" or self.stream_body_overrides) and not isinstance(
                self.body_template, dict
            ):
                raise ValueError(
                    "body_template must be a JSON object when method is GET or "
                    "stream_body_overrides is set"
                )
            return self

    def __init__(self, spec: EndpointSpec, context: ProviderContext | None = None) -> None:
        super().__init__(spec, context)
        config = self.config
        self._render, self._used = compile_template(config.body_template)
        overrides = config.stream_body_overrides
        self._render_overrides = compile_template(overrides)[0] if overrides else None
        self._answer = parse_path(config.response_path)
        self._usage_prompt = self._opt_path(config.usage_prompt_tokens_path)
        self._usage_completion = self._opt_path(config.usage_completion_tokens_path)
        self._chunk = self._opt_path(config.stream_chunk_path)
        self._tool_calls = self._opt_path(config.tool_calls_path)
        self._url = ""
        if "tools" in self._used and self._tool_calls is not None:
            # Tools only when the template sends them and the answer has a place for calls.
            self.capabilities = Capabilities(tools=True, tool_choice="tool_choice" in self._used)

    @staticmethod
    def _opt_path(path: str | None) -> tuple[str, ...] | None:
        return parse_path(path) if path else None

    def _fill(self, template: str) -> str:
        names = _credential_names(template, "template")
        missing = [n for n in names if not self.spec.credentials.get(n)]
        if missing:
            raise AuthError(f"{self.label}: credential {missing[0]!r} is not set")
        return template.format_map(self.spec.credentials)

    def default_headers(self) -> dict[str, str]:
        return {name: self._fill(value) for name, value in self.config.headers.items()}

    async def start(self) -> None:
        self._url = self.spec.url.rstrip("/") + self._fill(self.config.path)
        await super().start()

    def _body(self, request: ChatRequest, *, stream: bool) -> Any:
        config = self.config
        temperature = request.temperature
        if temperature is None:
            temperature = config.default_temperature
        values = build_values(
            request,
            self._used,
            self.spec.model_name,
            temperature,
            request.max_tokens or config.default_max_tokens,
        )
        body = self._render(values)
        if stream and self._render_overrides is not None:
            body = deep_merge(body, self._render_overrides(values))
        return body

    def _send(self, body: Any, *, stream: bool) -> Any:
        """The request, for the caller to enter as an async context manager."""
        method = self.config.method
        headers = SSE_HEADERS if stream else JSON_HEADERS
        if method == "GET":
            return self.session.get(self._url, params=_query_params(body), headers=headers)
        return self.session.request(method, self._url, data=orjson.dumps(body), headers=headers)

    async def chat(self, request: ChatRequest) -> StandardResponse:
        with self.boundary():
            async with self._send(self._body(request, stream=False), stream=False) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise self.http_error(resp.status, resp.headers, raw)
        data = loads(raw, self.label)
        try:
            answer = dig(data, self._answer)
        except LookupError:
            if dig_or_none(data, self._tool_calls):
                answer = ""  # an answer that only calls tools
            else:
                raise ProtocolError(
                    f"{self.label} answered without {self.config.response_path!r}"
                ) from None
        content = answer if isinstance(answer, str) else _as_text(answer)
        calls = self._read_tool_calls(data)
        return StandardResponse(
            content=content,
            model=self.spec.model_name,
            usage=usage_from(
                dig_or_none(data, self._usage_prompt),
                dig_or_none(data, self._usage_completion),
                request,
                content,
            ),
            finish_reason="tool_calls" if calls else "stop",
            tool_calls=calls,
        )

    def _read_tool_calls(self, data: Any) -> list[ToolCall] | None:
        raw = dig_or_none(data, self._tool_calls)
        if not raw:
            return None
        if not isinstance(raw, list):
            raise ProtocolError(f"{self.label}: {self.config.tool_calls_path!r} is not a list")
        calls = []
        for k, call in enumerate(raw):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise ProtocolError(f"{self.label}: tool call {k} has no function name")
            arguments = function.get("arguments")
            if not isinstance(arguments, str):  # some APIs send the arguments as an object
                arguments = _as_text(arguments if arguments is not None else {})
            calls.append(ToolCall(str(call.get("id") or f"call_{k}"), function["name"], arguments))
        return calls

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        if self._chunk is None or request.extra.get("tools"):
            async for chunk in super().stream(request):
                yield chunk
            return
        done_marker = self.config.stream_done_marker
        parts: list[str] = []
        usage: list[Any] = [None, None]
        done = False
        with self.boundary():
            async with self._send(self._body(request, stream=True), stream=True) as resp:
                await self.raise_for_stream_status(resp)
                async for _event, data in iter_sse(resp.content):
                    if done_marker is not None and data == done_marker:
                        done = True
                        break
                    text = self._read_event(data, usage)
                    if text:
                        parts.append(text)
                        yield ChatChunk(delta=text)
        if done_marker is not None and not done:
            raise Unavailable(f"{self.label} stream ended before {done_marker!r}")
        yield ChatChunk(
            finish_reason="stop", usage=usage_from(usage[0], usage[1], request, "".join(parts))
        )

    def _read_event(self, data: str, usage: list[Any]) -> str:
        """Text delta of one SSE event; events without the chunk path carry none."""
        payload = loads(data, self.label)
        prompt = dig_or_none(payload, self._usage_prompt)
        completion = dig_or_none(payload, self._usage_completion)
        if prompt is not None:
            usage[0] = prompt
        if completion is not None:
            usage[1] = completion
        text = dig_or_none(payload, self._chunk)
        if text is None:
            return ""
        return text if isinstance(text, str) else _as_text(text)

    async def health(self) -> HealthResult:
        health_path = self.config.health_path
        if health_path:
            return await self.probe("GET", self.spec.url.rstrip("/") + self._fill(health_path))
        return await self.probe("GET", self._url, ok_below=500)


@hookimpl
def register_providers(register: Any) -> None:
    register(RestProvider)
