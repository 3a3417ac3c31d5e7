"""Discovery jobs: a bounded background queue, drafts persisted, approve -> a new endpoint.

A request becomes a ``DiscoveryDraft`` row at once (status ``queued``) and a job on the
queue; a fixed number of workers run ``discovery.discover`` and write each step's status,
then the result and its evidence. Nothing becomes an endpoint until ``approve``. Site
credentials and an LLM API key are stored encrypted with the draft and never returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlmodel import col, select

from discovery.errors import UnsafeUrl
from discovery.safety import check_scheme
from providers.base import Message
from providers.util import deep_merge
from providers.web_chat.config import WebChatConfig
from runtime.chat import ChatInput
from runtime.errors import CapacityExceeded, Conflict, InvalidConfig, NotFound
from runtime.repository import describe_errors, validation_errors
from store.models import (
    DiscoveryDraft,
    DiscoveryStatus,
    Endpoint,
    EndpointCreate,
    utcnow,
)

if TYPE_CHECKING:
    from discovery.draft_llm import Complete
    from discovery.pipeline import DiscoveryResult
    from runtime.core import Runtime

log = logging.getLogger("aiem.discovery")


# ---- API shapes ---------------------------------------------------------------------------


class SiteCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(default="", max_length=500)
    password: str = Field(default="", max_length=500)


class LLMByEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint: str = Field(min_length=1, max_length=100, description="A running endpoint's name.")


class LLMByBaseUrl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str = Field(min_length=1, max_length=2000)
    model: str = Field(min_length=1, max_length=200)
    api_key: str | None = Field(default=None, max_length=1000)

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
        return value


class DiscoveryCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2000, description="The chat page to discover (http or https).")
    credentials: SiteCredentials | None = None
    use_llm: bool | None = Field(
        default=None, description="Draft with the LLM too; default: when `llm` is given."
    )
    llm: LLMByEndpoint | LLMByBaseUrl | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            return check_scheme(value)
        except UnsafeUrl as exc:
            raise ValueError(exc.message) from None


class DiscoveryProbe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any] | None = Field(
        default=None, description="An edited web_chat config; default: the stored draft."
    )


class DiscoveryApprove(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    display_name: str | None = Field(default=None, max_length=200)
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Endpoint fields to set (priority, model_name...); `config` is merged in.",
    )
    start: bool = False
    force: bool = Field(default=False, description="Approve a draft that never passed a probe.")


# ---- the service --------------------------------------------------------------------------


@dataclass(slots=True)
class DiscoveryOptions:
    concurrency: int = 1
    max_queued: int = 20
    allow_private: bool = False
    rounds: int = 3


RUNNING = frozenset({"queued", "crawling", "drafting", "validating", "probing", "refining"})
Job = tuple[str, str, dict[str, Any] | None]  # (kind, draft id, edited config)


class DiscoveryService:
    """Runs on the runtime facade: endpoints are created and LLM endpoints reached through it.

    Jobs run in the instance that accepted them (``worker``); on start, drafts left running
    by an instance that is gone are failed, those of live instances are left alone.
    """

    def __init__(self, runtime: Runtime, options: DiscoveryOptions | None = None) -> None:
        self.rt = runtime
        self.store = runtime.store
        self.options = options or DiscoveryOptions()
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[str, asyncio.Task[Any]] = {}

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        alive = await asyncio.to_thread(self._other_live_instances)
        await asyncio.to_thread(self._fail_interrupted, alive)
        self._workers = [
            asyncio.create_task(self._work(), name=f"aiem-discovery-{i}")
            for i in range(max(1, self.options.concurrency))
        ]

    async def stop(self) -> None:
        tasks = [*self._workers, *self._running.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._workers.clear()

    def _other_live_instances(self) -> set[str]:
        view = self.rt.cluster.view()
        return {i["id"] for i in view["instances"] if i["alive"] and not i["self"]}

    def _fail_interrupted(self, alive: set[str]) -> None:
        with self.store.session() as session:
            rows = session.exec(
                select(DiscoveryDraft).where(col(DiscoveryDraft.status).in_(RUNNING))
            ).all()
            for row in rows:
                if row.worker in alive:
                    continue  # another live instance runs it
                row.status, row.reason = DiscoveryStatus.failed, "interrupted"
                row.message = "the process restarted while this discovery ran"
                session.add(row)
            session.commit()

    # ---- requests ----------------------------------------------------------------------------

    async def submit(self, request: DiscoveryCreate) -> dict[str, Any]:
        use_llm = request.use_llm if request.use_llm is not None else request.llm is not None
        if use_llm and request.llm is None:
            raise InvalidConfig("use_llm needs `llm`: a running endpoint or a base_url and model")
        if isinstance(request.llm, LLMByEndpoint):
            await self.rt.live_endpoint(request.llm.endpoint)  # NotFound / Conflict: not running
        self._check_room()
        row = DiscoveryDraft(url=request.url, use_llm=use_llm, worker=self.rt.cluster.id)
        if request.llm is not None and use_llm:
            row.llm = request.llm.model_dump(exclude={"api_key"})
        row.secrets_encrypted = self._encrypt(self._secrets(request))
        await asyncio.to_thread(self._add, row)
        self._queue.put_nowait(("discover", row.id, None))
        return self.public(row)

    def _check_room(self) -> None:
        if self._queue.qsize() >= self.options.max_queued:
            raise CapacityExceeded(
                f"{self._queue.qsize()} discoveries are queued already; try again later",
                retry_after=30,
            )

    @staticmethod
    def _secrets(request: DiscoveryCreate) -> dict[str, str]:
        secrets: dict[str, str] = {}
        if request.credentials is not None:
            secrets.update({k: v for k, v in request.credentials.model_dump().items() if v})
        if isinstance(request.llm, LLMByBaseUrl) and request.llm.api_key:
            secrets["llm_api_key"] = request.llm.api_key
        return secrets

    async def list_drafts(self) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(self._all)
        return [self.public(row, brief=True) for row in rows]

    async def get(self, draft_id: str) -> dict[str, Any]:
        return self.public(await asyncio.to_thread(self._get, draft_id))

    async def screenshot(self, draft_id: str) -> bytes:
        row = await asyncio.to_thread(self._get, draft_id)
        if not row.screenshot:
            raise NotFound(f"discovery {draft_id!r} has no screenshot yet")
        return row.screenshot

    async def probe(self, draft_id: str, request: DiscoveryProbe) -> dict[str, Any]:
        row = await asyncio.to_thread(self._get, draft_id)
        self._require_idle(row)
        config = request.config if request.config is not None else row.config
        if not config:
            raise Conflict("this draft has no config to probe; send one in the body")
        try:
            WebChatConfig.model_validate(config)
        except ValidationError as exc:
            errors = validation_errors(exc, "config")
            raise InvalidConfig(
                f"invalid web_chat config: {describe_errors(errors)}", errors=errors
            ) from None
        self._check_room()
        await asyncio.to_thread(
            self._update,
            draft_id,
            status=DiscoveryStatus.probing,
            reason="",
            message="",
            config=config,
            worker=self.rt.cluster.id,
        )
        self._queue.put_nowait(("probe", draft_id, config))
        return await self.get(draft_id)

    async def approve(self, draft_id: str, request: DiscoveryApprove) -> dict[str, Any]:
        row = await asyncio.to_thread(self._get, draft_id)
        self._require_idle(row)
        if row.status == DiscoveryStatus.approved:
            raise Conflict(f"discovery {draft_id!r} is approved already")
        if not row.config:
            raise Conflict("this draft has no config to approve")
        if not row.probe_passed and not request.force:
            raise Conflict(
                "this draft never passed its probe; re-probe it or approve with force=true"
            )
        create = self._endpoint_create(row, request)
        endpoint = await self.rt.create_endpoint(create)
        await asyncio.to_thread(self._mark_discovered, endpoint["id"], row)
        await asyncio.to_thread(
            self._update, draft_id, status=DiscoveryStatus.approved, endpoint_id=endpoint["id"]
        )
        return await self.rt.get_endpoint(endpoint["id"])

    def _endpoint_create(self, row: DiscoveryDraft, request: DiscoveryApprove) -> EndpointCreate:
        overrides = dict(request.overrides)
        config = deep_merge(row.config or {}, overrides.pop("config", None) or {})
        secrets = self._decrypt(row.secrets_encrypted)
        credentials = {k: v for k, v in secrets.items() if k in ("username", "password")}
        data: dict[str, Any] = {
            "name": request.name,
            "display_name": request.display_name or "",
            "endpoint_type": "web_chat",
            "url": row.url,
            "model_name": request.name,
            "persistent_session": bool(config.get("login")),
            **overrides,
            "config": config,
            "credentials": credentials,
            "start": request.start,
        }
        try:
            return EndpointCreate.model_validate(data)
        except ValidationError as exc:
            errors = validation_errors(exc, "overrides")
            raise InvalidConfig(
                f"invalid endpoint: {describe_errors(errors)}", errors=errors
            ) from None

    async def delete(self, draft_id: str) -> None:
        await asyncio.to_thread(self._get, draft_id)
        task = self._running.get(draft_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(self._delete, draft_id)

    @staticmethod
    def _require_idle(row: DiscoveryDraft) -> None:
        if row.status in RUNNING:
            raise Conflict(f"discovery {row.id!r} is still {row.status}; wait for it to finish")

    # ---- workers -----------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            kind, draft_id, config = await self._queue.get()
            task = asyncio.create_task(self._run(kind, draft_id, config))
            self._running[draft_id] = task
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # the worker itself is being stopped
            except Exception:  # noqa: BLE001 - one broken job must not stop the worker
                log.exception("discovery %s failed unexpectedly", draft_id)
                await asyncio.to_thread(
                    self._update,
                    draft_id,
                    status=DiscoveryStatus.failed,
                    reason="internal",
                    message="internal error",
                )
            finally:
                self._running.pop(draft_id, None)

    async def _run(self, kind: str, draft_id: str, config: dict[str, Any] | None) -> None:
        row = await asyncio.to_thread(self._get_or_none, draft_id)
        if row is None:
            return  # deleted while queued
        secrets = self._decrypt(row.secrets_encrypted)
        credentials = {k: v for k, v in secrets.items() if k in ("username", "password")}
        # The pipeline (a browser driver and an HTML parser) loads on the first job, so an
        # instance that never discovers does not carry it.
        from discovery.pipeline import discover, reprobe

        if kind == "probe":
            result = await reprobe(
                row.url,
                config or {},
                credentials=credentials or None,
                allow_private=self.options.allow_private,
            )
            await asyncio.to_thread(self._save_probe, draft_id, result)
            return

        async def on_step(step: str) -> None:
            await asyncio.to_thread(self._update, draft_id, status=step)

        result = await discover(
            row.url,
            credentials=credentials or None,
            llm=self._llm(row, secrets),
            allow_private=self.options.allow_private,
            rounds=self.options.rounds,
            on_step=on_step,
        )
        await asyncio.to_thread(self._save_result, draft_id, result)

    def _llm(self, row: DiscoveryDraft, secrets: dict[str, str]) -> Complete | None:
        if not row.use_llm or not row.llm:
            return None
        if "endpoint" in row.llm:
            return self._endpoint_complete(str(row.llm["endpoint"]))
        from discovery.draft_llm import openai_complete

        return openai_complete(
            str(row.llm["base_url"]), str(row.llm["model"]), secrets.get("llm_api_key")
        )

    def _endpoint_complete(self, name: str) -> Complete:
        async def complete(messages: list[dict[str, str]]) -> str:
            live = await self.rt.live_endpoint(name)
            turns = [Message(m["role"], m["content"]) for m in messages]  # type: ignore[arg-type]
            return (await self.rt.chat(live, ChatInput(messages=turns))).content

        return complete

    # ---- rows --------------------------------------------------------------------------------

    def _add(self, row: DiscoveryDraft) -> None:
        with self.store.session() as session:
            session.add(row)
            session.commit()

    def _all(self) -> list[DiscoveryDraft]:
        stmt = select(DiscoveryDraft).order_by(col(DiscoveryDraft.created_at).desc()).limit(200)
        with self.store.session() as session:
            return list(session.exec(stmt).all())

    def _get_or_none(self, draft_id: str) -> DiscoveryDraft | None:
        with self.store.session() as session:
            return session.get(DiscoveryDraft, draft_id)

    def _get(self, draft_id: str) -> DiscoveryDraft:
        row = self._get_or_none(draft_id)
        if row is None:
            raise NotFound(f"discovery {draft_id!r} not found")
        return row

    def _update(self, draft_id: str, **changes: Any) -> None:
        with self.store.session() as session:
            row = session.get(DiscoveryDraft, draft_id)
            if row is None:
                return  # deleted meanwhile
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            session.add(row)
            session.commit()

    def _delete(self, draft_id: str) -> None:
        with self.store.session() as session:
            row = session.get(DiscoveryDraft, draft_id)
            if row is not None:
                session.delete(row)
                session.commit()

    def _save_result(self, draft_id: str, result: DiscoveryResult) -> None:
        self._update(
            draft_id,
            status=result.status if result.status == "ready" else DiscoveryStatus.failed,
            reason=result.reason,
            message=result.message,
            config=result.config,
            confidence=result.confidence,
            probe_passed=result.probe_passed,
            evidence=result.evidence(),
            screenshot=result.screenshot,
        )

    def _save_probe(self, draft_id: str, result: DiscoveryResult) -> None:
        row = self._get_or_none(draft_id)
        if row is None:
            return
        evidence = dict(row.evidence or {})
        evidence["reprobes"] = [*evidence.get("reprobes", []), result.probe][-10:]
        self._update(
            draft_id,
            status=DiscoveryStatus.ready if result.probe_passed else DiscoveryStatus.failed,
            reason=result.reason,
            message=result.message,
            probe_passed=result.probe_passed,
            evidence=evidence,
        )

    def _mark_discovered(self, endpoint_id: str, draft: DiscoveryDraft) -> None:
        evidence = draft.evidence or {}
        analysis = {
            "draft_id": draft.id,
            "url": draft.url,
            "used_llm": evidence.get("used_llm", False),
            "chosen": evidence.get("chosen"),
            "signals_fired": (evidence.get("probe") or {}).get("signals_fired"),
            "timings": evidence.get("timings"),
            "probe_passed": draft.probe_passed,
        }
        with self.store.session() as session:
            endpoint = session.get(Endpoint, endpoint_id)
            if endpoint is None:
                return
            endpoint.discovered_by_ai = True
            endpoint.discovery_confidence = draft.confidence
            endpoint.discovery_analysis = analysis
            session.add(endpoint)
            session.commit()

    # ---- secrets and shapes ------------------------------------------------------------------

    def _encrypt(self, secrets: dict[str, str]) -> str | None:
        return self.store.box.encrypt(orjson.dumps(secrets)) if secrets else None

    def _decrypt(self, blob: str | None) -> dict[str, str]:
        return orjson.loads(self.store.box.decrypt_bytes(blob)) if blob else {}

    def public(self, row: DiscoveryDraft, *, brief: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": row.id,
            "url": row.url,
            "status": row.status,
            "reason": row.reason,
            "message": row.message,
            "use_llm": row.use_llm,
            "llm": row.llm,
            "confidence": row.confidence,
            "probe_passed": row.probe_passed,
            "endpoint_id": row.endpoint_id,
            "has_screenshot": bool(row.screenshot),
            "screenshot_url": f"/discovery/{row.id}/screenshot" if row.screenshot else None,
            "created_at": row.created_at.isoformat(),
            "updated_at": row.updated_at.isoformat(),
        }
        if not brief:
            data["config"] = row.config
            evidence = row.evidence or {}
            data["timings"] = evidence.get("timings", {})
            data["evidence"] = evidence
        return data
