"""``zai_web``: Z.ai's chat spoken to over its web protocol, without a browser.

The protocol is the one the chat.z.ai web app uses:

- a token: the configured ``token`` credential, else ``POST /api/v1/auths/signin`` with the
  ``username``/``password`` credentials, else a guest token from ``GET /api/v1/auths/``;
- ``POST /api/chat/completions`` with the whole history, streaming Server-Sent Events whose
  data is ``{"type": "chat:completion", "data": {"delta_content", "phase", "done", ...}}``;
  ``phase`` is ``thinking`` (reasoning, wrapped in ``<details>`` markup), ``answer``,
  ``other`` (usage) or ``done``.

Thinking text is returned apart, in ``reasoning``. The token is kept in the endpoint's
encrypted state (when ``persistent_session``) so a restart does not sign in again. For
Z.ai in a real browser, use ``web_chat`` with ``{"preset": "zai"}``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from providers._http import HttpProvider, iter_sse, loads, redact, usage_from
from providers.base import (
    ChatChunk,
    ChatRequest,
    EndpointSpec,
    HealthResult,
    ProviderContext,
    StandardResponse,
)
from providers.errors import AuthError, InvalidRequest, ProtocolError, Unavailable
from providers.hookspecs import hookimpl
from providers.web_chat.config import BrowserConfig

# The web app's API lives on chat.z.ai; endpoints often name the marketing host.
API_HOSTS = {"z.ai": "chat.z.ai", "www.z.ai": "chat.z.ai"}
DEFAULT_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/140.0.0.0 Safari/537.36"
)
_THINKING_MARKUP = re.compile(r"(?:<details[^>]*>|</details>|<summary>.*?</summary>)\n?", re.S)


def clean_thinking(text: str) -> str:
    """Thinking text without the web app's ``<details>`` wrapper and quote markers."""
    text = _THINKING_MARKUP.sub("", text)
    return re.sub(r"(^|\n)> ?", r"\1", text)


@dataclass(slots=True)
class _Answer:
    """An answer as it streams in."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    started: bool = False


class ZaiWebProvider(HttpProvider):
    endpoint_type: ClassVar[str] = "zai_web"
    # A chat is several requests (sign-in, polling): the runtime keeps the overall deadline.
    enforces_timeout: ClassVar[bool] = False
    title: ClassVar[str] = "Z.ai web chat (protocol mode)"
    description: ClassVar[str] = (
        "Z.ai's chat web protocol without a browser: guest, token or username/password "
        "sign-in, streamed answers with the thinking phase kept apart."
    )
    can_stream: ClassVar[bool] = True
    credential_fields: ClassVar[tuple[str, ...]] = ("token", "username", "password")
    # A consumer web chat account: a few conversations at a time, like a browser's tabs.
    default_max_concurrent: ClassVar[int] = 4

    class Config(BaseModel):
        """Settings of a Z.ai endpoint spoken to over its web protocol."""

        model_config = ConfigDict(extra="forbid")

        base_url: str | None = Field(
            default=None,
            description="Where the web API lives; default: the endpoint URL's origin "
            "(z.ai becomes chat.z.ai).",
        )
        upstream_model: str | None = Field(
            default=None,
            description="Model id sent to Z.ai; default: the endpoint's model_name.",
        )
        enable_thinking: bool = Field(default=True, description="Ask for the thinking phase.")
        guest: bool = Field(
            default=True, description="Use a guest token when no credentials are given."
        )
        fe_version: str = Field(
            default="prod-fe-1.0.95", description="The web app version sent as X-FE-Version."
        )
        extra_headers: dict[str, str] = Field(
            default_factory=dict,
            description="Headers added to every request to the web API (they override the "
            "defaults, e.g. a different User-Agent or Accept-Language).",
        )

    def __init__(self, spec: EndpointSpec, context: ProviderContext | None = None) -> None:
        super().__init__(spec, context)
        try:
            self.browser_settings = BrowserConfig.model_validate(spec.browser_config or {})
        except ValidationError as exc:
            raise InvalidRequest(f"invalid browser_config: {exc.error_count()} errors") from None
        self.base_url = (self.config.base_url or api_origin(spec.url)).rstrip("/")
        self._token: str | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        token = (self._token,) if self._token and len(self._token) >= 4 else ()
        return super().secrets + token

    def default_headers(self) -> dict[str, str]:
        headers = {
            "User-Agent": self.browser_settings.user_agent or DEFAULT_USER_AGENT,
            "Origin": self.base_url,
            "Referer": f"{self.base_url}/",
            "X-FE-Version": self.config.fe_version,
            "Accept-Language": self.browser_settings.locale or "en-US",
        }
        headers.update(self.config.extra_headers)
        return headers

    # -- lifecycle and auth ------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        try:
            self._token = await self._restored_token() or await self._fresh_token()
        except BaseException:
            await self.stop()
            raise
        await self._save_token()

    async def _restored_token(self) -> str | None:
        if not self.spec.persistent_session or self.spec.credentials.get("token"):
            return None
        raw = await self.context.state_store.load()
        try:
            token = json.loads(raw)["token"] if raw else None
        except (ValueError, KeyError, TypeError):
            return None
        if token and (await self._probe_token(token)).ok:
            return token
        return None

    async def _fresh_token(self) -> str:
        credentials = self.spec.credentials
        if credentials.get("token"):
            return credentials["token"]
        if credentials.get("username") and credentials.get("password"):
            data = await self._sign_in(credentials["username"], credentials["password"])
        elif self.config.guest:
            data = await self.request_json("GET", f"{self.base_url}/api/v1/auths/")
        else:
            raise AuthError(f"{self.label}: no token, no username/password and guest is off")
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolError(f"{self.label}: sign-in answered without a token")
        return token

    async def _sign_in(self, username: str, password: str) -> Any:
        body = {"email": username, "password": password}
        try:
            return await self.request_json("POST", f"{self.base_url}/api/v1/auths/signin", body)
        except InvalidRequest as exc:  # Z.ai answers a refused sign-in with HTTP 400
            raise AuthError(f"sign-in refused: {exc.message}", status=exc.upstream_status) from None

    async def _save_token(self) -> None:
        if self.spec.persistent_session and self._token:
            await self.context.state_store.save(json.dumps({"token": self._token}).encode())

    def _auth(self) -> dict[str, str]:
        if not self._token:
            raise Unavailable(f"{self.label} is not started")
        return {"Authorization": f"Bearer {self._token}"}

    async def _probe_token(self, token: str) -> HealthResult:
        try:
            with self.boundary():
                async with self.session.get(
                    f"{self.base_url}/api/v1/auths/", headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    await response.read()
                    status = response.status
        except Unavailable as exc:
            return HealthResult(ok=False, detail=exc.message, kind=exc.kind)
        rejected = status in (401, 403)
        return HealthResult(
            ok=status < 300, detail=f"HTTP {status}", kind="auth_error" if rejected else ""
        )

    async def health(self) -> HealthResult:
        if not self._token:
            return HealthResult(ok=False, detail="not started")
        return await self._probe_token(self._token)

    # -- chat --------------------------------------------------------------------------------

    def build_body(self, request: ChatRequest, chat_id: str) -> dict[str, Any]:
        return {
            "stream": True,
            "model": self.config.upstream_model or self.spec.model_name,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "params": {},
            "features": {"enable_thinking": self.config.enable_thinking},
            "chat_id": chat_id,
            "id": uuid.uuid4().hex,
        }

    async def chat(self, request: ChatRequest) -> StandardResponse:
        parts: list[str] = []
        reasoning: list[str] = []
        final: ChatChunk | None = None
        async for chunk in self.stream(request):
            parts.append(chunk.delta)
            reasoning.append(chunk.reasoning)
            final = chunk if chunk.finish_reason else final
        assert final is not None  # stream() always ends with a finishing chunk or raises
        return StandardResponse(
            content="".join(parts),
            model=self.spec.model_name,
            usage=final.usage,
            finish_reason=final.finish_reason or "stop",
            conversation=final.conversation,
            reasoning="".join(reasoning).strip() or None,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        conversation = dict(request.conversation or {})
        chat_id = conversation.setdefault("chat_id", str(uuid.uuid4()))
        answer = _Answer()
        for attempt in range(2):
            try:
                async for chunk in self._stream_once(request, chat_id, answer):
                    yield chunk
                break
            except AuthError:
                # An expired session token: sign in again once, before anything was sent.
                if attempt or answer.started or self.spec.credentials.get("token"):
                    raise
                self._token = await self._fresh_token()
                await self._save_token()
        if not answer.done:
            raise Unavailable(f"{self.label} stream ended before the answer was complete")
        conversation["turns"] = int(conversation.get("turns", 0)) + 1
        usage = answer.usage
        yield ChatChunk(
            finish_reason="stop",
            usage=usage_from(
                usage.get("prompt_tokens"),
                usage.get("completion_tokens"),
                request,
                "".join(answer.content),
            ),
            conversation=conversation,
        )

    async def _stream_once(
        self, request: ChatRequest, chat_id: str, answer: _Answer
    ) -> AsyncIterator[ChatChunk]:
        body = orjson.dumps(self.build_body(request, chat_id))
        headers = {**self._auth(), "Content-Type": "application/json"}
        headers["Accept"] = "text/event-stream"
        with self.boundary():
            async with self.session.post(
                f"{self.base_url}/api/chat/completions", data=body, headers=headers
            ) as response:
                await self.raise_for_stream_status(response)
                async for _event, data in iter_sse(response.content):
                    chunk = self._read_event(data, answer)
                    if chunk is not None:
                        answer.started = True
                        yield chunk
                    if answer.done:
                        break

    def _read_event(self, data: str, answer: _Answer) -> ChatChunk | None:
        if data.strip() == "[DONE]":
            answer.done = True
            return None
        event = loads(data, self.label)
        payload = event.get("data") if isinstance(event, dict) else None
        if payload == "[DONE]":
            answer.done = True
            return None
        if not isinstance(payload, dict):
            raise ProtocolError(f"{self.label} sent an event without data")
        error = payload.get("error") or event.get("error")
        if error:
            raise self._reported_error(error)
        if isinstance(payload.get("usage"), dict):
            answer.usage = payload["usage"]
        if payload.get("done") or payload.get("phase") == "done":
            answer.done = True
        return self._text_of(payload, answer)

    def _text_of(self, payload: dict[str, Any], answer: _Answer) -> ChatChunk | None:
        phase = payload.get("phase")
        text = payload.get("delta_content") or ""
        if phase == "answer" and not text and payload.get("edit_content"):
            # The switch from thinking to answer re-sends the closing markup plus the
            # answer's first words; only what follows the thinking block is answer.
            text = str(payload["edit_content"]).rpartition("</details>")[2].lstrip("\n")
        if not isinstance(text, str) or not text:
            return None
        if phase == "thinking":
            thought = clean_thinking(text)
            answer.reasoning.append(thought)
            return ChatChunk(reasoning=thought) if thought else None
        if phase in (None, "answer"):
            answer.content.append(text)
            return ChatChunk(delta=text)
        return None

    def _reported_error(self, error: Any) -> Unavailable:
        detail = error.get("detail") or error.get("message") if isinstance(error, dict) else error
        text = redact(str(detail or error)[:300], self.secrets)
        return Unavailable(f"{self.label} reported an error: {text}")


def api_origin(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = API_HOSTS.get(host, parts.netloc)
    return f"{parts.scheme or 'https'}://{netloc}"


@hookimpl
def register_providers(register: Any) -> None:
    register(ZaiWebProvider)
