"""The runtime facade: the one surface the HTTP layer and the CLI use.

``Runtime`` builds every part (store, repository, event bus, manager, chat path, sessions,
metrics) and offers async methods that do their own thread hops: callers never touch a part
below it, never run SQL and never decide what goes to a worker thread.

Every per-endpoint method takes an endpoint's id or its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlmodel import col, select

from providers.capabilities import TEXT_ONLY
from providers.registry import ProviderRegistry, default_registry
from runtime import prometheus
from runtime.chat import STORE_ERRORS, ChatInput, ChatResult, ChatService, ChatStream, Target
from runtime.cluster import Cluster
from runtime.cluster_limits import ClusterLimits
from runtime.cluster_totals import ClusterTotals
from runtime.declarative import export_endpoints, import_endpoints, import_file
from runtime.discovery import DiscoveryOptions, DiscoveryService
from runtime.errors import Conflict, NotFound, OwnedElsewhere
from runtime.events import EventBus
from runtime.health import HealthMonitor
from runtime.manager import EndpointManager, LiveEndpoint, ManagerOptions
from runtime.metrics import LATENCY_BOUNDS_MS, MetricsHub, merge_instance_rows
from runtime.ownership import Ownership
from runtime.reports import Reports
from runtime.repository import EndpointRepository
from runtime.retention import RetentionReport, run_retention
from runtime.router import Router, RoutingOptions
from runtime.sessions import SessionService
from runtime.webhooks import WebhookOptions, WebhookService
from store.db import Store
from store.instance_names import instance_name_for
from store.models import (
    INSTANCE_NAME_MAX,
    LIVE_STATES,
    Endpoint,
    EndpointCreate,
    EndpointUpdate,
    MetricBucket,
    WebhookCreate,
    utcnow,
)

log = logging.getLogger("aiem.runtime")

_process = psutil.Process()
# Endpoint name -> the live instances running it; endpoint id -> its lease holder.
_ClusterFacts = tuple[dict[str, list[str]], dict[str, dict[str, Any]]]


@dataclass
class RuntimeOptions:
    database_url: str
    data_dir: Path
    secret_key: str | None = None
    config_file: Path | None = None
    advertise_url: str = ""
    # This instance's stable name: the key of its metric buckets (see instance_name_for).
    instance_name: str = ""
    version: str = ""
    # Exact cluster-wide limits in Redis; None: each instance enforces its share.
    redis_url: str | None = None
    request_log_retention_days: float = 30.0
    metrics_rollup_days: float = 7.0
    retention_interval_s: float = 3600.0
    manager: ManagerOptions = field(default_factory=ManagerOptions)
    webhooks: WebhookOptions = field(default_factory=WebhookOptions)
    routing: RoutingOptions = field(default_factory=RoutingOptions)
    discovery: DiscoveryOptions = field(default_factory=DiscoveryOptions)


class Runtime:
    def __init__(self, options: RuntimeOptions, registry: ProviderRegistry | None = None) -> None:
        self.options = options
        self.registry = registry or default_registry()
        self.store = Store.open(
            url=options.database_url, data_dir=options.data_dir, secret_key=options.secret_key
        )
        self.events = EventBus()
        self.repo = EndpointRepository(self.store, self.registry, self.events)
        # Clamped to the bucket tables' column: a long host name must not fail every write.
        name = options.instance_name or instance_name_for(options.advertise_url)
        self.instance_name = name[:INSTANCE_NAME_MAX]
        self.metrics = MetricsHub(
            self.store, log_requests=options.manager.log_requests, instance=self.instance_name
        )
        self.cluster_totals = ClusterTotals(self.store, self.metrics)
        self.sessions = SessionService(self.store, timeout_s=options.manager.session_timeout_s)
        self.health = HealthMonitor(self.repo, interval_s=options.manager.health_check_interval_s)
        self.manager = EndpointManager(self.store, self.repo, options.manager, self.health)
        self.router = Router(self.manager, self.repo)
        self.chat_service = ChatService(self.metrics, self.sessions, options.routing)
        self.chat_service.outcome_listeners.append(self.health.on_outcome)
        self.cluster = Cluster(
            self.store,
            advertise_url=options.advertise_url,
            version=options.version,
            name=self.instance_name,
        )
        if self.cluster.postgres:  # other instances change endpoints too: a tighter safety net
            options.manager.reconcile_interval_s = min(options.manager.reconcile_interval_s, 5.0)
        self.ownership = Ownership(self.cluster, self.repo, self.manager)
        self.manager.may_adopt = self.ownership.may_adopt
        self.router.elsewhere = self.ownership.elsewhere
        self.router.known_elsewhere = self.ownership.known_elsewhere
        self.limits = ClusterLimits(self.manager, self.cluster, redis_url=options.redis_url)
        self.manager.configure_limits = self.limits.apply
        self.registered = False
        # Every instance writes its events to the outbox; the leader delivers them.
        self.webhooks = WebhookService(
            self.store, self.events, options.webhooks, may_deliver=lambda: self.cluster.is_leader
        )
        self.ejections = prometheus.EjectionCounter(self.events)
        self.reports = Reports(self.store)
        self.discovery = DiscoveryService(self, options.discovery)
        self.started = False
        # Set when the process begins to stop (SIGTERM): /readyz turns a load balancer away.
        self.draining = False
        self._background: list[asyncio.Task[None]] = []

    # ---- process lifecycle -----------------------------------------------------------------

    def register(self) -> None:
        """Enter this process in the store's instance list (SQLite: refuse a second one)."""
        if not self.registered:
            self.cluster.register()
            self.registered = True

    async def start(self) -> None:
        await asyncio.to_thread(self.register)
        await asyncio.to_thread(self.repo.backfill_credential_keys)
        if self.options.config_file and Path(self.options.config_file).is_file():
            summary = await asyncio.to_thread(
                import_file, self.repo, Path(self.options.config_file)
            )
            log.info("declarative config %s: %s", self.options.config_file, summary)
        await asyncio.to_thread(self.metrics.load_history)
        # Subscriptions first, so the start-up's own state changes reach the outbox.
        await asyncio.to_thread(self.webhooks.load)
        await self.limits.start()  # first: endpoints start with their share known
        await self.manager.startup()
        self.health.start()
        await self.cluster.start(self._running_names, self._changed_elsewhere, self.ownership.sync)
        self._background = [
            asyncio.create_task(self.webhooks.run(), name="aiem-webhooks"),
            asyncio.create_task(self.metrics.run(), name="aiem-metrics-writer"),
            asyncio.create_task(self._sweep_sessions(), name="aiem-session-sweeper"),
            asyncio.create_task(self._retention_loop(), name="aiem-retention"),
        ]
        await self.discovery.start()
        self.started = True

    def begin_draining(self) -> None:
        """The process is stopping: readiness says so while requests still get answers."""
        if not self.draining:
            self.draining = True
            log.info("stopping: draining (readiness now reports 'draining')")

    async def stop(self) -> None:
        self.started = False
        await self.discovery.stop()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._background = []
        await self.health.stop()
        await self.manager.shutdown()
        await self.limits.stop()
        await self.cluster.stop()
        self.registered = False
        await self.metrics.flush()
        self.store.dispose()

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.retention_interval_s)
            if not self.cluster.is_leader:
                continue  # a singleton job
            try:
                await self.run_retention()
            except Exception:  # noqa: BLE001 - try again next time after a store hiccup
                log.exception("retention failed")

    async def run_retention(self) -> RetentionReport:
        return await asyncio.to_thread(
            run_retention,
            self.store,
            request_log_days=self.options.request_log_retention_days,
            rollup_days=self.options.metrics_rollup_days,
        )

    def _running_names(self) -> list[str]:
        return [live.name for live in self.manager.live.values()]

    async def _changed_elsewhere(self, endpoint_id: str) -> None:
        if endpoint_id:
            await self.manager.apply_change(endpoint_id)
        else:
            await self.manager.reconcile()
        await self.ownership.sync()  # a browser endpoint stopped here frees its lease now

    async def _announce(self, endpoint_id: str) -> None:
        """Let the other instances apply a change at once (PostgreSQL NOTIFY)."""
        if self.cluster.postgres:
            await asyncio.to_thread(self.cluster.notify, endpoint_id)

    async def _sweep_sessions(self) -> None:
        while True:
            await asyncio.sleep(self.options.manager.session_cleanup_interval_s)
            if not self.cluster.is_leader:
                continue  # a singleton job: the leader sweeps for every instance
            try:
                await asyncio.to_thread(self.sessions.sweep)
            except Exception:  # noqa: BLE001 - keep sweeping after a store hiccup
                log.exception("session sweep failed")

    # ---- endpoints -------------------------------------------------------------------------

    def _with_stats(self, data: dict[str, Any], facts: _ClusterFacts) -> dict[str, Any]:
        # The live counters are read here, on the loop that updates them.
        running_on, owners = facts
        data["instances"] = self._instances_running(data["name"], running_on)
        live = self.manager.live.get(data["id"])
        data["owner"] = (
            owners.get(data["id"]) if self.cluster.postgres else self.ownership.local_owner(live)
        )
        in_flight = live.gate.in_flight if live else 0
        data["stats"] = self.metrics.endpoint_snapshot(data["id"], in_flight)
        data["capabilities"] = self._capabilities(data["endpoint_type"], live)
        data["limits"] = self.limits.describe(live)
        return data

    def _capabilities(self, endpoint_type: str, live: LiveEndpoint | None) -> dict[str, Any]:
        """What /v1 passes, translates or refuses for this endpoint: the running provider's
        own (its config may widen them), else its type's."""
        if live is not None:
            return live.provider.capabilities.as_dict()
        try:
            return self.registry.get(endpoint_type).capabilities.as_dict()
        except LookupError:  # a type whose plugin is gone: it accepts nothing beyond text
            return TEXT_ONLY.as_dict()

    async def _public_rows(self, rows: list[Endpoint]) -> list[dict[str, Any]]:
        # Serialising rows is worth a thread; the live counters are read on the loop.
        def dump() -> tuple[list[dict[str, Any]], _ClusterFacts]:
            return [self.repo.public(r) for r in rows], self._cluster_facts()

        dumped, facts = await asyncio.to_thread(dump)
        return [self._with_stats(d, facts) for d in dumped]

    def _cluster_facts(self) -> _ClusterFacts:
        """Which instances run what, and who owns each browser endpoint (PostgreSQL)."""
        if not self.cluster.postgres:
            return {}, {}
        return self.cluster.running_on(), self.ownership.owners()

    def _instances_running(self, name: str, running_on: dict[str, list[str]]) -> list[str]:
        """The instances running an endpoint: the others' heartbeats, and this one's own truth."""
        others = [i for i in running_on.get(name, []) if i != self.cluster.id]
        return [self.cluster.id, *others] if name in self.manager.by_name else others

    async def _resolve(self, ref: str) -> Endpoint:
        return await asyncio.to_thread(self.repo.resolve, ref)

    async def list_endpoints(
        self, *, state: str | None = None, endpoint_type: str | None = None
    ) -> list[dict[str, Any]]:
        def dump() -> tuple[list[dict[str, Any]], _ClusterFacts]:
            rows = self.repo.public_rows(state=state, endpoint_type=endpoint_type)
            return rows, self._cluster_facts()

        dumped, facts = await asyncio.to_thread(dump)
        return [self._with_stats(d, facts) for d in dumped]

    async def get_endpoint(self, ref: str) -> dict[str, Any]:
        return (await self._public_rows([await self._resolve(ref)]))[0]

    async def create_endpoint(self, data: EndpointCreate) -> dict[str, Any]:
        row = await self.manager.create(data)
        await self._announce(row.id)
        return (await self._public_rows([row]))[0]

    async def update_endpoint(self, ref: str, patch: EndpointUpdate) -> dict[str, Any]:
        row = await self.manager.update((await self._resolve(ref)).id, patch)
        await self._announce(row.id)
        return (await self._public_rows([row]))[0]

    async def delete_endpoint(self, ref: str) -> None:
        row = await self._resolve(ref)
        await self.manager.delete(row.id)
        self.metrics.forget(row.id)
        await self._announce(row.id)

    async def start_endpoint(self, ref: str) -> dict[str, Any]:
        row = await self.manager.start((await self._resolve(ref)).id)
        await self._announce(row.id)
        return (await self._public_rows([row]))[0]

    async def stop_endpoint(self, ref: str) -> dict[str, Any]:
        row = await self.manager.stop((await self._resolve(ref)).id)
        await self.ownership.sync()  # its lease is free now, not at the next heartbeat
        await self._announce(row.id)
        return (await self._public_rows([row]))[0]

    async def restart_endpoint(self, ref: str) -> dict[str, Any]:
        row = await self._resolve(ref)
        if row.id not in self.manager.live:
            owner = await asyncio.to_thread(self.ownership.elsewhere, row)
            if isinstance(owner, OwnedElsewhere):
                raise owner  # its browser runs there: the HTTP surface forwards the restart
        row = await self.manager.restart(row.id)
        await self._announce(row.id)
        return (await self._public_rows([row]))[0]

    async def endpoint_events(self, ref: str, *, limit: int = 100) -> list[dict[str, Any]]:
        row = await self._resolve(ref)
        return await asyncio.to_thread(self.repo.events, row.id, limit=limit)

    async def endpoint_health(self, ref: str, *, history: int = 20) -> dict[str, Any]:
        """The stored state with its reason and times, the live breaker, probe and signal
        readings of a running endpoint, and the latest state changes."""
        row = await self._resolve(ref)
        changes = await asyncio.to_thread(self.repo.state_history, row.id, limit=history)
        return {
            "endpoint_id": row.id,
            "name": row.name,
            "desired_state": row.desired_state,
            "state": row.state,
            "reason": row.state_reason,
            "since": row.state_changed_at.isoformat(),
            "until": row.state_until.isoformat() if row.state_until else None,
            **self.health.describe(row.id),
            "restarts": {
                "auto_restart": self.options.manager.auto_restart,
                "recent_crashes": self.manager.recent_crashes(row.id),
                "crash_limit": self.options.manager.crash_limit,
                "crash_window_s": self.options.manager.crash_window_s,
            },
            "history": changes,
        }

    async def endpoint_metrics(self, ref: str, *, minutes: int = 60) -> dict[str, Any]:
        public = await self.get_endpoint(ref)
        buckets = await asyncio.to_thread(self._buckets, public["id"], minutes)
        return {
            "endpoint_id": public["id"],
            "name": public["name"],
            "state": public["state"],
            "live": public["stats"],
            "latency_bounds_ms": [b if b != float("inf") else None for b in LATENCY_BOUNDS_MS],
            "buckets": buckets,
        }

    def _buckets(self, endpoint_id: str, minutes: int) -> list[dict[str, Any]]:
        since = utcnow() - timedelta(minutes=minutes)
        stmt = (
            select(MetricBucket)
            .where(MetricBucket.endpoint_id == endpoint_id, MetricBucket.minute >= since)
            .order_by(col(MetricBucket.minute))
        )
        with self.store.session() as session:
            rows = session.exec(stmt).all()
        return merge_instance_rows(r.model_dump(mode="json", exclude={"endpoint_id"}) for r in rows)

    # ---- chat ------------------------------------------------------------------------------

    async def route(self, model: str) -> Sequence[LiveEndpoint]:
        """The running endpoints a /v1 ``model`` (an endpoint or a group) may go to, best
        first; hand them to ``chat`` / ``open_stream``, which fall back along them."""
        return await self.router.route(model)

    async def live_endpoint(self, ref: str) -> LiveEndpoint:
        """The running endpoint an id or a name refers to, for the per-endpoint chat route."""
        live = self.manager.running(ref)
        if live is None and await self.manager.relaunched(ref):  # a browser endpoint restarted
            live = self.manager.running(ref)
        if live is not None:
            return live
        known = self.ownership.known_elsewhere(ref)
        if known is not None:
            raise known
        raise await asyncio.to_thread(self._not_live_here, ref)

    def _not_live_here(self, ref: str) -> Exception:
        row = self.repo.resolve(ref)
        return self.ownership.elsewhere(row) or self._not_running(row)

    @staticmethod
    def _not_running(row: Endpoint) -> Conflict:
        return Conflict(
            f"endpoint {row.name!r} is not running (state: {row.state}); start it first"
        )

    async def chat(self, target: Target, inp: ChatInput) -> ChatResult:
        """One answer from an endpoint or from a route's candidates (with fallback)."""
        return await self.chat_service.chat(target, inp)

    async def open_stream(self, target: Target, inp: ChatInput) -> ChatStream:
        return await self.chat_service.open_stream(target, inp)

    async def embeddings(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI embeddings request passed to an endpoint that has them (else a 400)."""
        return await self.chat_service.pass_through(
            target, "embeddings", lambda live: live.provider.embeddings(body)
        )

    async def completions(self, target: Target, body: dict[str, Any]) -> dict[str, Any]:
        """A legacy text completions request passed to an endpoint that has them (else 400)."""
        return await self.chat_service.pass_through(
            target, "completions", lambda live: live.provider.completions(body)
        )

    async def completions_stream(
        self, target: Target, body: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        """The upstream's SSE bytes of a streamed legacy completion; admitted now."""
        return await self.chat_service.open_pass_through_stream(
            target, "completions", lambda live: live.provider.completions_stream(body)
        )

    def models(self) -> list[dict[str, Any]]:
        """/v1/models: running endpoints, then groups with their running members."""
        return self.router.models(int(self.metrics.started_at))

    def model(self, model_id: str) -> dict[str, Any]:
        """One running endpoint or group as a /v1 model (``models.retrieve``)."""
        for model in self.models():
            if model["id"] == model_id:
                return model
        raise NotFound(f"model {model_id!r} not found; GET /v1/models lists the running ones")

    # ---- sessions --------------------------------------------------------------------------

    async def list_sessions(
        self, *, endpoint: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        endpoint_id = (await self._resolve(endpoint)).id if endpoint else None
        rows = await asyncio.to_thread(self.sessions.recent, endpoint_id=endpoint_id, limit=limit)
        return [r.model_dump(mode="json") for r in rows]

    async def get_session(self, session_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.sessions.get, session_id)

    async def delete_session(self, session_id: str) -> None:
        await asyncio.to_thread(self.sessions.delete, session_id)

    async def session_length(self, session_id: str) -> int | None:
        """Messages stored in a session; None when it does not exist."""
        return await asyncio.to_thread(self.sessions.length, session_id)

    async def fork_session(self, source_id: str, upto: int, new_id: str) -> None:
        """Copy a session's first ``upto`` messages into a new session ``new_id``."""
        await asyncio.to_thread(self.sessions.fork, source_id, upto, new_id)

    # ---- system ----------------------------------------------------------------------------

    def providers(self) -> list[dict[str, Any]]:
        return self.registry.describe()

    def store_info(self) -> dict[str, str]:
        """Which store this instance uses; the URL without its password."""
        url = self.store.engine.url
        return {"dialect": url.get_backend_name(), "url": url.render_as_string(hide_password=True)}

    async def system_metrics(self, *, instance: str | None = None) -> dict[str, Any]:
        """Endpoint counts, the traffic of the cluster (or of one instance) since this
        instance started, and this process's own figures."""
        try:
            by_state: dict[str, int] | None = await asyncio.to_thread(self.repo.count_by_state)
        except STORE_ERRORS:
            # The counters live in memory: report them (and the outage) rather than fail.
            self.metrics.store_errors += 1
            by_state = None
        return {
            "running_endpoints": len(self.manager.live)
            if by_state is None
            else sum(n for s, n in by_state.items() if s in LIVE_STATES),
            "total_endpoints": None if by_state is None else sum(by_state.values()),
            "endpoints_by_state": by_state or {},
            "store": "unavailable" if by_state is None else "ok",
            **self.metrics.system_snapshot(),
            **await self.cluster_totals.snapshot(instance),
            "in_flight": sum(live.gate.in_flight for live in self.manager.live.values()),
            "memory_mb": round(_process.memory_info().rss / 1024 / 1024, 1),
            "cpu_percent": _process.cpu_percent(interval=None),
        }

    async def prometheus_text(self) -> bytes:
        """The Prometheus exposition of every endpoint's counters and the process."""
        rows, deliveries = await asyncio.to_thread(prometheus.read_store, self.store)
        in_flight = {ep_id: live.gate.in_flight for ep_id, live in self.manager.live.items()}
        samples = prometheus.sample_endpoints(
            rows, self.metrics, in_flight, self.ejections.counts, self.health.last_probes
        )
        scrape = prometheus.Scrape(samples, deliveries)
        return await asyncio.to_thread(prometheus.render, scrape)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        try:
            await asyncio.to_thread(self.store.ping)
            problem = self.store.room_problem()
        except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
            problem = f"unreachable ({type(exc).__name__})"
        if problem is not None:
            # What the store has not been given yet waits in memory, up to a bound.
            buffered = len(self.metrics.queue)
            return False, {"status": "unavailable", "store": problem, "metrics_buffered": buffered}
        if self.draining:
            return False, {"status": "draining"}
        if not self.started:
            return False, {"status": "starting"}
        return True, {"status": "ready", "running_endpoints": len(self.manager.live)}

    async def cluster_view(self) -> dict[str, Any]:
        """The instances, the leader and which instance owns which browser endpoint."""
        view = await asyncio.to_thread(self.cluster.view)
        if not self.cluster.postgres:
            view["leases"] = self.ownership.local_leases()
            for item in view["instances"]:
                item["owns"] = [x["endpoint"] for x in view["leases"]] if item["self"] else []
        # This instance's own view, beside the leader the store names (they differ for a moment
        # after the store came back): it leads only while its lock's connection lives.
        view["leading"] = self.cluster.is_leader
        return view

    # ---- webhooks --------------------------------------------------------------------------

    async def create_webhook(self, data: WebhookCreate) -> dict[str, Any]:
        return await asyncio.to_thread(self.webhooks.create, data)

    async def list_webhooks(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.webhooks.all)

    async def get_webhook(self, webhook_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.webhooks.get, webhook_id)

    async def delete_webhook(self, webhook_id: str) -> None:
        await asyncio.to_thread(self.webhooks.delete, webhook_id)

    async def webhook_deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return await asyncio.to_thread(
            self.webhooks.deliveries, webhook_id, status=status, limit=limit
        )

    # ---- declarative config ----------------------------------------------------------------

    async def export_config(self, *, include_secrets: bool = False) -> dict[str, Any]:
        return await asyncio.to_thread(export_endpoints, self.repo, include_secrets=include_secrets)

    async def import_config(self, data: Any) -> dict[str, int]:
        return await asyncio.to_thread(import_endpoints, self.repo, data)

    def close(self) -> None:
        """Release the store of a runtime that was never started (the CLI's offline commands)."""
        self.store.dispose()
