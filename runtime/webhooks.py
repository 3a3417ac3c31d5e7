"""Webhooks: endpoint events delivered to subscribers, signed, from a persisted outbox.

    repository commits an EndpointEvent
      -> EventBus -> WebhookService.on_event            (in the committing thread)
           one WebhookDelivery row per matching subscription, committed right there
      -> the dispatcher (a task on the event loop) is woken
           one lane per subscription: its oldest pending delivery is POSTed, then the next,
           so a receiver sees events in the order they happened; a failed attempt parks
           the lane until the retry time (exponential backoff), and a delivery that still
           fails ``max_age_s`` after its event is marked dead and the lane moves on.

The outbox row is written before the call that committed the event returns, not later from
a queue: an in-memory queue would lose every event committed before a crash or a stop that
came before its turn, and the outbox is what lets a restarted process carry on delivering.
Writing costs one INSERT per event that a subscription wants; events are rare (state
changes, restarts), and nothing on the chat path commits them.

Deliveries run on the event loop with their own HTTP client and a deadline per attempt, and
their store work goes to worker threads, so a slow or dead receiver holds only its own lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import delete, func
from sqlmodel import col, select

from runtime.errors import NotFound
from runtime.events import EndpointEventNote, EventBus
from runtime.throttle import LogThrottle, warn_of_failure
from store.db import Store
from store.models import (
    Webhook,
    WebhookCreate,
    WebhookDelivery,
    WebhookDeliveryPublic,
    WebhookDeliveryStatus,
    WebhookPublic,
    new_id,
    utcnow,
)

log = logging.getLogger("aiem.webhooks")

SIGNATURE_HEADER = "X-Aiem-Signature"
TIMESTAMP_HEADER = "X-Aiem-Timestamp"
USER_AGENT = "aiem-webhooks/1"
PENDING = WebhookDeliveryStatus.pending


@dataclass(slots=True)
class WebhookOptions:
    timeout_s: float = 10.0  # one attempt, connection to last byte
    backoff_base_s: float = 5.0  # first retry after this, doubling per failed attempt
    backoff_cap_s: float = 3600.0
    max_age_s: float = 24 * 3600.0  # then the delivery is dead
    max_lanes: int = 16  # subscriptions delivered to at the same time
    poll_interval_s: float = 30.0  # safety net; new events and lane ends wake the dispatcher
    retention_s: float = 7 * 24 * 3600.0  # delivered and dead rows kept this long
    reload_interval_s: float = 30.0  # subscriptions re-read (another instance may add some)


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Aiem-Signature`` value: HMAC-SHA256 of the exact body, hex."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def matches(patterns: list[str], kind: str) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == kind:
            return True
        if pattern.endswith("*") and kind.startswith(pattern[:-1]):
            return True
    return False


def event_body(note: EndpointEventNote, event_id: str) -> str:
    return orjson.dumps(
        {
            "id": event_id,
            "type": note.kind,
            "occurred_at": note.at.isoformat(),
            "endpoint": {"id": note.endpoint_id, "name": note.endpoint_name},
            "from_state": note.from_state,
            "to_state": note.to_state,
            "detail": note.detail,
        }
    ).decode()


def retry_delay(attempts: int, options: WebhookOptions) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones (with 10% jitter)."""
    base = min(options.backoff_cap_s, options.backoff_base_s * 2 ** max(0, attempts - 1))
    return base * random.uniform(0.9, 1.0)


@dataclass(slots=True, frozen=True)
class Subscription:
    id: str
    url: str
    patterns: list[str]
    secret: bytes


@dataclass(slots=True, frozen=True)
class Attempt:
    ok: bool
    status_code: int | None
    error: str


class WebhookService:
    def __init__(
        self,
        store: Store,
        events: EventBus,
        options: WebhookOptions | None = None,
        *,
        may_deliver: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store = store
        self.options = options or WebhookOptions()
        # Instances sharing a store all write the outbox; only the one this says yes to (the
        # cluster's leader) delivers, so a receiver never gets an event twice.
        self.may_deliver = may_deliver
        self._loaded_at = 0.0
        self._subs: dict[str, Subscription] = {}
        # Outbox rows whose write failed (a store hiccup): written again by the dispatcher.
        self._unsaved: deque[WebhookDelivery] = deque()
        self._lanes: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self._pruned_at = 0.0
        events.subscribe(self.on_event)

    # ---- subscriptions (synchronous: the facade calls these in a worker thread) ------------

    def load(self) -> int:
        with self.store.session() as session:
            rows = session.exec(select(Webhook)).all()
        self._subs = {row.id: self._subscription(row) for row in rows}
        self._loaded_at = time.monotonic()
        return len(self._subs)

    def _subscription(self, row: Webhook) -> Subscription:
        secret = self.store.box.decrypt_bytes(row.secret_encrypted)
        return Subscription(row.id, row.url, list(row.events), secret)

    def create(self, data: WebhookCreate) -> dict[str, Any]:
        row = Webhook(
            url=data.url,
            events=list(data.events),
            description=data.description,
            secret_encrypted=self.store.box.encrypt(data.secret),
        )
        with self.store.session() as session:
            session.add(row)
            session.commit()
        self._subs[row.id] = self._subscription(row)
        return self._public(row, {})

    def all(self) -> list[dict[str, Any]]:
        with self.store.session() as session:
            rows = session.exec(select(Webhook).order_by(col(Webhook.created_at))).all()
            counts = self._counts(session)
        return [self._public(row, counts.get(row.id, {})) for row in rows]

    def get(self, webhook_id: str) -> dict[str, Any]:
        with self.store.session() as session:
            row = session.get(Webhook, webhook_id)
            if row is None:
                raise NotFound(f"webhook {webhook_id!r} not found")
            counts = self._counts(session, webhook_id)
        return self._public(row, counts.get(row.id, {}))

    def delete(self, webhook_id: str) -> None:
        with self.store.session() as session:
            row = session.get(Webhook, webhook_id)
            if row is None:
                raise NotFound(f"webhook {webhook_id!r} not found")
            session.delete(row)  # its deliveries go with it (ON DELETE CASCADE)
            session.commit()
        self._subs.pop(webhook_id, None)

    def deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        self.get(webhook_id)
        stmt = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
        if status:
            stmt = stmt.where(WebhookDelivery.status == status)
        stmt = stmt.order_by(col(WebhookDelivery.id).desc()).limit(limit)
        with self.store.session() as session:
            rows = session.exec(stmt).all()
        return [
            WebhookDeliveryPublic.model_validate(
                {**row.model_dump(), "payload": orjson.loads(row.payload)}
            ).model_dump(mode="json")
            for row in rows
        ]

    @staticmethod
    def _counts(session: Any, webhook_id: str | None = None) -> dict[str, dict[str, int]]:
        stmt = select(WebhookDelivery.webhook_id, WebhookDelivery.status, func.count())
        if webhook_id is not None:
            stmt = stmt.where(WebhookDelivery.webhook_id == webhook_id)
        stmt = stmt.group_by(WebhookDelivery.webhook_id, WebhookDelivery.status)
        counts: dict[str, dict[str, int]] = {}
        for hook, status, n in session.exec(stmt).all():
            counts.setdefault(hook, {})[status] = int(n)
        return counts

    @staticmethod
    def _public(row: Webhook, counts: dict[str, int]) -> dict[str, Any]:
        return WebhookPublic.model_validate({**row.model_dump(), **counts}).model_dump(mode="json")

    # ---- the outbox (runs in the thread that committed the event) --------------------------

    def on_event(self, note: EndpointEventNote) -> None:
        wanted = [s for s in list(self._subs.values()) if matches(s.patterns, note.kind)]
        if not wanted:
            return
        event_id = new_id()
        body = event_body(note, event_id)
        rows = [
            WebhookDelivery(webhook_id=s.id, event_id=event_id, kind=note.kind, payload=body)
            for s in wanted
        ]
        try:
            self._insert(rows)
        except Exception:  # noqa: BLE001 - keep the event in memory; the dispatcher retries
            log.exception("writing %d webhook deliveries failed; retrying soon", len(rows))
            self._unsaved.extend(rows)
        self._wake_soon()

    def _insert(self, rows: list[WebhookDelivery]) -> None:
        with self.store.session() as session:
            session.add_all(rows)
            session.commit()

    def _wake_soon(self) -> None:
        loop = self._loop
        if loop is None:
            return  # not dispatching yet: the first pass after start finds the rows
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._wake.set)

    # ---- the dispatcher (event loop) -------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        # The client's own timeouts match the attempt's deadline (httpx's default is 5 s).
        self._client = httpx.AsyncClient(
            timeout=self.options.timeout_s, follow_redirects=False, trust_env=False
        )
        unreachable = LogThrottle(30.0)
        try:
            while True:
                self._wake.clear()
                try:
                    await self._save_unsaved()
                    delay = await self._dispatch()
                except Exception as exc:  # noqa: BLE001 - a store hiccup must not end delivery
                    warn_of_failure(log, unreachable, "webhook dispatch", exc)
                    delay = 1.0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            self._loop = None
            await self._stop_lanes()
            await self._client.aclose()

    async def _stop_lanes(self) -> None:
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.cancel()
        for lane in lanes:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await lane
        self._lanes.clear()

    async def _save_unsaved(self) -> None:
        if not self._unsaved:
            return
        rows = list(self._unsaved)
        try:
            await asyncio.to_thread(self._insert, rows)
        except Exception:  # noqa: BLE001 - the store is still down: keep them and try later
            log.warning("the store still refuses %d webhook deliveries", len(rows))
            return
        for _ in rows:
            self._unsaved.popleft()

    async def _dispatch(self) -> float:
        """Open a lane for every subscription whose oldest delivery is due; the next wait."""
        if time.monotonic() - self._loaded_at > self.options.reload_interval_s:
            await asyncio.to_thread(self.load)  # subscriptions made on another instance
        if not self.may_deliver():
            return min(self.options.poll_interval_s, 1.0)  # ask again soon: leaders change
        if time.monotonic() - self._pruned_at > 3600:
            self._pruned_at = time.monotonic()
            await asyncio.to_thread(self._prune)
        if self._subs and self._subs.keys() <= self._lanes.keys():
            return self.options.poll_interval_s  # every lane busy: a lane's end wakes us
        heads = await asyncio.to_thread(self._heads)
        now = utcnow()
        delay = self.options.poll_interval_s
        if self._unsaved:
            delay = min(delay, 1.0)
        for webhook_id, due in heads:
            if webhook_id in self._lanes or webhook_id not in self._subs:
                continue
            wait = (due - now).total_seconds()
            if wait > 0:
                delay = min(delay, wait)
            elif len(self._lanes) < self.options.max_lanes:
                self._open_lane(webhook_id)
        return max(delay, 0.01)

    def _open_lane(self, webhook_id: str) -> None:
        task = asyncio.create_task(self._lane(webhook_id), name=f"aiem-webhook-{webhook_id}")
        self._lanes[webhook_id] = task

        def closed(_task: asyncio.Task[None]) -> None:
            if self._lanes.get(webhook_id) is _task:
                del self._lanes[webhook_id]
            self._wake.set()  # its next retry time, or a free lane slot, is news

        task.add_done_callback(closed)

    async def _lane(self, webhook_id: str) -> None:
        try:
            await self._deliver_due(webhook_id)
        except Exception:  # noqa: BLE001 - a store hiccup: the dispatcher opens the lane again
            log.exception("webhook lane %s failed; retrying", webhook_id)
            await asyncio.sleep(1.0)  # held a moment: no tight loop while the store is down

    async def _deliver_due(self, webhook_id: str) -> None:
        """Deliver this subscription's due deliveries, oldest first, until one fails."""
        while True:
            sub = self._subs.get(webhook_id)
            head = await asyncio.to_thread(self._head, webhook_id)
            if sub is None or head is None or head.next_attempt_at > utcnow():
                return
            attempt = await self._attempt(sub, head)
            status = await asyncio.to_thread(self._settle, head.id, attempt)
            if status == PENDING:
                return  # parked until its retry time
            if status != WebhookDeliveryStatus.delivered:
                log.warning("webhook delivery %s to %s is dead", head.id, webhook_id)

    async def _attempt(self, sub: Subscription, row: WebhookDelivery) -> Attempt:
        assert self._client is not None
        body = row.payload.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(sub.secret, body),
            TIMESTAMP_HEADER: str(int(time.time())),
            "X-Aiem-Event": row.kind,
            "X-Aiem-Event-Id": row.event_id,
            "X-Aiem-Delivery": str(row.id),
        }
        try:
            async with asyncio.timeout(self.options.timeout_s):
                response = await self._client.post(sub.url, content=body, headers=headers)
        except TimeoutError:
            return Attempt(False, None, f"no answer within {self.options.timeout_s:g} s")
        except httpx.HTTPError as exc:
            # The exception's type only: its text may carry the URL, which can hold a token.
            return Attempt(False, None, type(exc).__name__)
        if 200 <= response.status_code < 300:
            return Attempt(True, response.status_code, "")
        return Attempt(False, response.status_code, f"HTTP {response.status_code}")

    # ---- outbox rows (worker threads) ------------------------------------------------------

    def _heads(self) -> list[tuple[str, datetime]]:
        """Each subscription's oldest pending delivery and when it is due."""
        oldest = (
            select(func.min(WebhookDelivery.id))
            .where(WebhookDelivery.status == PENDING)
            .group_by(WebhookDelivery.webhook_id)
        )
        stmt = select(WebhookDelivery.webhook_id, WebhookDelivery.next_attempt_at).where(
            col(WebhookDelivery.id).in_(oldest)
        )
        with self.store.session() as session:
            return [(hook, due) for hook, due in session.exec(stmt).all()]

    def _head(self, webhook_id: str) -> WebhookDelivery | None:
        stmt = (
            select(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.status == PENDING)
            .order_by(col(WebhookDelivery.id))
            .limit(1)
        )
        with self.store.session() as session:
            return session.exec(stmt).first()

    def _settle(self, delivery_id: int | None, attempt: Attempt) -> str | None:
        """Record an attempt; the delivery's status after it (None when it is gone)."""
        now = utcnow()
        with self.store.session() as session:
            row = session.get(WebhookDelivery, delivery_id)
            if row is None:
                return None  # its subscription was deleted meanwhile
            row.attempts += 1
            row.last_attempt_at = now
            row.last_status_code = attempt.status_code
            row.last_error = attempt.error
            if attempt.ok:
                row.status, row.delivered_at = WebhookDeliveryStatus.delivered, now
            else:
                self._reschedule(row, now)
            session.add(row)
            session.commit()
            return row.status

    def _reschedule(self, row: WebhookDelivery, now: datetime) -> None:
        deadline = row.created_at + timedelta(seconds=self.options.max_age_s)
        if now >= deadline:
            row.status = WebhookDeliveryStatus.dead
            return
        retry_at = now + timedelta(seconds=retry_delay(row.attempts, self.options))
        row.next_attempt_at = min(retry_at, deadline)  # one last attempt at the deadline

    def _prune(self) -> None:
        cutoff = utcnow() - timedelta(seconds=self.options.retention_s)
        stmt = delete(WebhookDelivery).where(
            col(WebhookDelivery.status) != PENDING, col(WebhookDelivery.created_at) < cutoff
        )
        with self.store.session() as session:
            session.execute(stmt)
            session.commit()


__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookOptions",
    "WebhookService",
    "matches",
    "sign",
]
