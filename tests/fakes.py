"""A scripted provider for runtime tests (the network is not what those tests are about)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from providers.base import (
    ChatChunk,
    ChatRequest,
    HealthResult,
    Provider,
    StandardResponse,
    Usage,
)
from providers.errors import ProviderError
from providers.hookspecs import hookimpl
from providers.registry import ProviderRegistry


class ScriptedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay: float = Field(0.0, ge=0, description="Seconds each answer takes.")
    fail_start: int = Field(0, ge=0, description="How many start() calls fail first.")
    start_delay: float = Field(0.0, ge=0, description="Seconds start() takes.")


class ScriptedProvider(Provider):
    """Answers "turn N: <prompt>" unless a reply or an error was enqueued."""

    endpoint_type = "scripted"
    Config = ScriptedConfig
    script: ClassVar[deque[Any]] = deque()
    health_script: ClassVar[deque[HealthResult]] = deque()
    probes: ClassVar[int] = 0
    requests: ClassVar[list[ChatRequest]] = []
    starts: ClassVar[int] = 0
    instances: ClassVar[list[ScriptedProvider]] = []

    @classmethod
    def enqueue(cls, *items: Any) -> None:
        cls.script.extend(items)

    @classmethod
    def enqueue_health(cls, *results: HealthResult) -> None:
        """What the next probes answer (after these, probes pass)."""
        cls.health_script.extend(results)

    @classmethod
    def reset(cls) -> None:
        """Forget every script and count, of this class and of its subclasses."""
        cls.script.clear()
        cls.health_script.clear()
        cls.requests.clear()
        cls.instances.clear()
        for klass in (cls, *cls.__subclasses__()):
            klass.probes = klass.starts = 0

    # Per instance: whether stop() was called, and how many chats it answered.
    stopped: bool = False
    answered: int = 0

    async def start(self) -> None:
        type(self).starts += 1
        type(self).instances.append(self)
        await asyncio.sleep(self.spec.config.start_delay)  # type: ignore[attr-defined]
        if type(self).starts <= self.spec.config.fail_start:  # type: ignore[attr-defined]
            raise ProviderError("backend refused to start")

    async def stop(self) -> None:
        self.stopped = True

    def _answer(self, request: ChatRequest) -> str:
        if self.script:
            item = self.script.popleft()
            if isinstance(item, BaseException):
                raise item
            return str(item)
        turns = sum(1 for m in request.messages if m.role == "user")
        return f"turn {turns}: {request.prompt}"

    async def chat(self, request: ChatRequest) -> StandardResponse:
        type(self).requests.append(request)
        await asyncio.sleep(self.spec.config.delay)  # type: ignore[attr-defined]
        text = self._answer(request)
        self.answered += 1
        conversation = {"turns": sum(1 for m in request.messages if m.role == "user")}
        return StandardResponse(
            content=text, model="scripted-1", usage=Usage(5, 7), conversation=conversation
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        type(self).requests.append(request)
        text = self._answer(request)
        for word in text.split(" "):
            await asyncio.sleep(self.spec.config.delay)  # type: ignore[attr-defined]
            yield ChatChunk(delta=word + " ")
        yield ChatChunk(finish_reason="stop", usage=Usage(5, 7))

    async def health(self) -> HealthResult:
        type(self).probes += 1
        if self.health_script:
            return self.health_script.popleft()
        return HealthResult(ok=True, detail="scripted backend is fine")


class ScriptedBrowser(ScriptedProvider):
    """The scripted provider declared as a browser one: one copy at a time (restarted
    stop-first), one owner in a cluster. Its starts and probes are counted apart."""

    endpoint_type = "scripted_browser"
    needs_browser = True


class _Plugin:
    @hookimpl
    def register_providers(self, register):  # type: ignore[no-untyped-def]
        register(ScriptedProvider)
        register(ScriptedBrowser)


def registry_with_scripted() -> ProviderRegistry:
    from providers.registry import make_plugin_manager

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(_Plugin())
    registry = ProviderRegistry()
    pm.hook.register_providers(register=registry.register)
    return registry
