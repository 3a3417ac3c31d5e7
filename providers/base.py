"""The provider contract: value objects and the abstract ``Provider`` class.

A provider speaks to one kind of backend. It knows nothing of the store or of the HTTP
surface: everything it needs arrives in an ``EndpointSpec`` and a ``ProviderContext``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

Role = Literal["system", "user", "assistant"]


@dataclass(slots=True)
class Message:
    role: Role
    content: str


@dataclass(slots=True)
class ChatRequest:
    """One turn. ``messages`` holds the whole history, the new user message last.

    ``conversation`` is the provider's own state for this chat session as it returned it
    last time (for example a web chat's conversation URL); None on a first turn.
    """

    messages: list[Message]
    temperature: float | None = None
    max_tokens: int | None = None
    session_id: str | None = None
    conversation: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The newest user message."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""

    @property
    def system(self) -> str | None:
        parts = [m.content for m in self.messages if m.role == "system"]
        return "\n\n".join(parts) if parts else None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class StandardResponse:
    content: str
    model: str
    usage: Usage | None = None
    finish_reason: str = "stop"
    conversation: dict[str, Any] | None = None
    reasoning: str | None = None
    # True when earlier turns were typed into a new conversation as a transcript because
    # the session's own conversation could not be reopened.
    transcript_replayed: bool = False


@dataclass(slots=True)
class ChatChunk:
    """A piece of a streamed answer. The last chunk has ``finish_reason`` set and may carry
    ``usage`` and the updated ``conversation``; its ``delta`` may be empty.

    ``content``, when set on the last chunk, is the whole answer and wins over the joined
    deltas (a web page may rewrite text it already showed)."""

    delta: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    conversation: dict[str, Any] | None = None
    reasoning: str = ""
    content: str | None = None
    transcript_replayed: bool = False


@dataclass(slots=True)
class HealthResult:
    ok: bool
    detail: str = ""
    latency_ms: float | None = None
    # The ProviderError kind of a failed probe ("auth_error", "unavailable", ...), so the
    # runtime can tell rejected credentials from an unreachable backend.
    kind: str = ""


@dataclass(slots=True)
class EndpointSpec:
    """What a provider is told about the endpoint it serves."""

    name: str
    url: str
    model_name: str
    config: BaseModel
    credentials: dict[str, str] = field(default_factory=dict)
    browser_config: dict[str, Any] = field(default_factory=dict)
    persistent_session: bool = False
    max_concurrent_requests: int = 4
    request_timeout: float = 120.0


class StateStore(abc.ABC):
    """Encrypted per-endpoint blob storage (a web chat's browser storage state)."""

    @abc.abstractmethod
    async def load(self) -> bytes | None: ...

    @abc.abstractmethod
    async def save(self, data: bytes) -> None: ...


class MemoryStateStore(StateStore):
    def __init__(self, data: bytes | None = None) -> None:
        self.data = data

    async def load(self) -> bytes | None:
        return self.data

    async def save(self, data: bytes) -> None:
        self.data = data


@dataclass(slots=True)
class ProviderContext:
    """Services the runtime lends a provider."""

    state_store: StateStore = field(default_factory=MemoryStateStore)
    # Called by a provider when its backend needs attention outside a request
    # (for example a logged-out page or a crashed browser): (state, reason).
    report_state: Callable[[str, str], Awaitable[None]] | None = None


class EmptyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Provider(abc.ABC):
    """One kind of backend. Subclasses set the class attributes and a nested ``Config``."""

    endpoint_type: ClassVar[str]
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    can_stream: ClassVar[bool] = True
    needs_browser: ClassVar[bool] = False
    needs_credentials: ClassVar[bool] = False
    # True when the provider itself ends a non-streamed chat after spec.request_timeout
    # (raising ProviderTimeout); the runtime then sets no timer of its own.
    enforces_timeout: ClassVar[bool] = False
    # Keys of ``credentials`` this provider reads, for forms and documentation.
    credential_fields: ClassVar[tuple[str, ...]] = ()
    # OpenAI request fields beyond messages / temperature / max_tokens that this provider
    # honours (they arrive in ``ChatRequest.extra``); the runtime refuses any other with 400.
    openai_params: ClassVar[frozenset[str]] = frozenset()
    # Concurrent requests an endpoint of this type takes when its creator does not say;
    # more wait in the runtime's queue.
    default_max_concurrent: ClassVar[int] = 8
    Config: ClassVar[type[BaseModel]] = EmptyConfig

    def __init__(self, spec: EndpointSpec, context: ProviderContext | None = None) -> None:
        self.spec = spec
        self.context = context or ProviderContext()

    @classmethod
    def validate_config(cls, data: dict[str, Any] | None) -> BaseModel:
        """Validate raw settings; raises pydantic.ValidationError naming the field."""
        return cls.Config.model_validate(data or {})

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "endpoint_type": cls.endpoint_type,
            "title": cls.title or cls.endpoint_type,
            "description": cls.description,
            "capabilities": {
                "can_stream": cls.can_stream,
                "needs_browser": cls.needs_browser,
                "needs_credentials": cls.needs_credentials,
                "default_max_concurrent": cls.default_max_concurrent,
                "openai_params": sorted(cls.openai_params),
            },
            "credential_fields": list(cls.credential_fields),
            "config_schema": cls.Config.model_json_schema(),
        }

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections, browsers, logins. Raise a ProviderError when it cannot."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release everything ``start`` took. Must not raise."""

    @abc.abstractmethod
    async def chat(self, request: ChatRequest) -> StandardResponse: ...

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Providers that cannot stream yield one chunk with the whole answer."""
        response = await self.chat(request)
        yield ChatChunk(
            delta=response.content,
            finish_reason=response.finish_reason,
            usage=response.usage,
            conversation=response.conversation,
        )

    async def health(self) -> HealthResult:
        """A cheap probe that is never billed where avoidable."""
        return HealthResult(ok=True, detail="no probe defined")


def estimate_tokens(text: str) -> int:
    """Rough token count for backends that report none (about four characters a token)."""
    return max(1, (len(text) + 3) // 4) if text else 0
