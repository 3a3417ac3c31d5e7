"""The Codegen agent API: create an agent run, poll it until it finishes, return its result.

Follows the public Developer API (https://docs.codegen.com/api-reference):
``POST {base}/v1/organizations/{org_id}/agent/run`` with ``{"prompt": ...}`` and a bearer
token, then ``GET {base}/v1/organizations/{org_id}/agent/run/{id}`` until the run's
``status`` is terminal; the answer is its ``result``. ``GET {base}/v1/users/me`` is the
health probe.

Documented rate limits, enforced client-side: agent-run creation 10 requests per minute,
other endpoints 60 requests per 30 seconds. A 429 is honoured through its Retry-After.

The API takes one prompt, so a multi-turn history is sent as one clearly tagged transcript.
This is not token streaming: ``stream`` yields the finished answer as one chunk.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from providers._http import HttpProvider, SlidingWindowLimiter, clip, estimate_prompt_tokens
from providers.base import (
    ChatRequest,
    EndpointSpec,
    HealthResult,
    Message,
    ProviderContext,
    StandardResponse,
    Usage,
    estimate_tokens,
)
from providers.errors import ProtocolError, ProviderError, ProviderTimeout, RateLimited
from providers.hookspecs import hookimpl

DEFAULT_URL = "https://api.codegen.com"
# Documented: "Agent creation: 10 requests per minute", "Standard endpoints: 60 requests per
# 30 seconds". Our windows are a little longer: the limiter stamps a call when it is sent,
# the server counts it when it arrives, and network jitter must not push us over.
CREATE_LIMIT_PERIOD = 61.0
STANDARD_LIMIT = (60, 31.0)
MAX_CREATE_ATTEMPTS = 3

# Status strings seen from the API (upper case) and the SDK (lower case), compared upper-cased.
SUCCEEDED = frozenset({"COMPLETE", "COMPLETED", "SUCCEEDED", "SUCCESS"})
FAILED = frozenset({"FAILED", "ERROR", "STOPPED", "CANCELLED", "CANCELED", "TIMEOUT"})

TRANSCRIPT_HEADER = (
    "Below is a conversation, oldest message first, each message inside a tag named after "
    "its author. Reply to the last <user> message."
)


def render_prompt(messages: list[Message]) -> str:
    """One prompt text for the whole history; a lone user message is sent as it is."""
    if len(messages) == 1 and messages[0].role == "user":
        return messages[0].content
    parts = [TRANSCRIPT_HEADER]
    parts.extend(f"<{m.role}>\n{m.content}\n</{m.role}>" for m in messages)
    return "\n\n".join(parts)


class CodegenProvider(HttpProvider):
    endpoint_type: ClassVar[str] = "codegen_api"
    # A chat is several requests (sign-in, polling): the runtime keeps the overall deadline.
    enforces_timeout: ClassVar[bool] = False
    title: ClassVar[str] = "Codegen agent API"
    description: ClassVar[str] = (
        "Codegen coding agents: each request creates an agent run and waits for its result. "
        "URL defaults to https://api.codegen.com."
    )
    can_stream: ClassVar[bool] = False
    needs_credentials: ClassVar[bool] = True
    credential_fields: ClassVar[tuple[str, ...]] = ("api_token",)

    class Config(BaseModel):
        """Settings of a Codegen agent endpoint."""

        model_config = ConfigDict(extra="forbid")

        org_id: int = Field(ge=1, description="Codegen organization id (codegen.com/token).")
        poll_interval: float = Field(
            2.0,
            ge=0.05,
            le=300.0,
            description="Seconds between status polls. 2 s keeps four concurrent runs within "
            "the documented 60 requests per 30 seconds.",
        )
        max_wait: float = Field(
            900.0, gt=0.0, description="Seconds to wait for an agent run before giving up."
        )
        create_limit_per_minute: int = Field(
            10,
            ge=1,
            le=10,
            description="Agent runs created per minute at most (the API allows 10).",
        )
        max_rate_limit_wait: float = Field(
            15.0,
            ge=0.0,
            description="Longest Retry-After (seconds) waited out on a 429 before failing "
            "with rate_limited.",
        )
        repo_id: int | None = Field(None, description="Repository id the agent works in.")
        model: str | None = Field(
            None, description="Model for the agent run; the organization default when unset."
        )
        agent_type: Literal["codegen", "claude_code"] | None = Field(
            None, description="Agent type; the organization default when unset."
        )

    def __init__(self, spec: EndpointSpec, context: ProviderContext | None = None) -> None:
        super().__init__(spec, context)
        base = (spec.url or DEFAULT_URL).rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        org = self.config.org_id
        self._runs_url = f"{base}/v1/organizations/{org}/agent/run"
        self._me_url = f"{base}/v1/users/me"
        self.create_limiter = SlidingWindowLimiter(
            self.config.create_limit_per_minute, CREATE_LIMIT_PERIOD
        )
        self.standard_limiter = SlidingWindowLimiter(*STANDARD_LIMIT)

    def default_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.require_credential('api_token')}"}

    async def chat(self, request: ChatRequest) -> StandardResponse:
        deadline = time.monotonic() + self.config.max_wait
        prompt = render_prompt(request.messages)
        run = await self._within(deadline, self._create_run(prompt))
        run = await self._within(deadline, self._wait_for(run))
        content = run.get("result") or run.get("summary") or ""
        if not isinstance(content, str):
            raise ProtocolError(f"{self.label}: agent run {run['id']} has a non-text result")
        return StandardResponse(
            content=content,
            model=self.config.model or self.spec.model_name,
            usage=Usage(estimate_prompt_tokens(request), estimate_tokens(content), estimated=True),
            conversation={"agent_run_id": run["id"], "web_url": run.get("web_url")},
        )

    async def _within(self, deadline: float, step: Any) -> dict[str, Any]:
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await step
        except TimeoutError:
            raise ProviderTimeout(
                f"{self.label}: agent run not finished within {self.config.max_wait:g}s"
            ) from None

    async def _create_run(self, prompt: str) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": prompt}
        for key in ("repo_id", "model", "agent_type"):
            value = getattr(self.config, key)
            if value is not None:
                body[key] = value
        for attempt in range(1, MAX_CREATE_ATTEMPTS + 1):
            await self.create_limiter.acquire()
            try:
                return self._checked(await self.request_json("POST", self._runs_url, body))
            except RateLimited as exc:
                spacing = CREATE_LIMIT_PERIOD / self.config.create_limit_per_minute
                wait = self._back_off(self.create_limiter, exc, spacing)
                if attempt == MAX_CREATE_ATTEMPTS or wait > self.config.max_rate_limit_wait:
                    raise
        raise AssertionError("unreachable")

    async def _wait_for(self, run: dict[str, Any]) -> dict[str, Any]:
        url = f"{self._runs_url}/{run['id']}"
        while True:
            status = str(run.get("status") or "").upper()
            if status in SUCCEEDED:
                return run
            if status in FAILED:
                detail = str(run.get("result") or run.get("summary") or "no detail given")
                raise ProviderError(
                    f"{self.label}: agent run {run['id']} ended {status}: "
                    + clip(detail, self.secrets, 500)
                )
            await asyncio.sleep(self.config.poll_interval)
            await self.standard_limiter.acquire()
            try:
                run = self._checked(await self.request_json("GET", url))
            except RateLimited as exc:
                if self._back_off(self.standard_limiter, exc, 0.0) > self.config.max_wait:
                    raise

    def _checked(self, run: Any) -> dict[str, Any]:
        if not isinstance(run, dict) or "id" not in run:
            raise ProtocolError(f"{self.label} answered an agent run without an id")
        return run

    @staticmethod
    def _back_off(limiter: SlidingWindowLimiter, exc: RateLimited, fallback: float) -> float:
        """Hold the limiter back for a 429's Retry-After; returns the wait (inf: don't retry).

        A 402 (the plan's run allowance is used up) is not worth waiting for.
        """
        if exc.upstream_status != 429:
            return float("inf")
        wait = exc.retry_after if exc.retry_after is not None else fallback
        limiter.block_for(wait)
        return wait

    async def health(self) -> HealthResult:
        await self.standard_limiter.acquire()
        return await self.probe("GET", self._me_url)


@hookimpl
def register_providers(register: Any) -> None:
    register(CodegenProvider)
