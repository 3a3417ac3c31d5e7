"""Tables and their API shapes (Base -> Create / Update / table / Public).

Secrets live only in ``*_encrypted`` columns and never appear in a Public model.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import field_validator, model_validator
from sqlalchemy import JSON, Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from store.instance_names import INSTANCE_NAME_MAX


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class EndpointState(StrEnum):
    stopped = "stopped"
    starting = "starting"
    healthy = "healthy"
    degraded = "degraded"
    cooling = "cooling"
    failed = "failed"
    stopping = "stopping"
    disabled = "disabled"


LIVE_STATES = frozenset({EndpointState.healthy, EndpointState.degraded, EndpointState.cooling})


class DesiredState(StrEnum):
    running = "running"
    stopped = "stopped"


# Endpoint names, group names and session ids: one pattern for every identifier a user picks.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"
NAME_RE = re.compile(NAME_PATTERN)
# Per 1,000 tokens; anything above is a typo, and Infinity would poison every total.
MAX_PRICE_PER_1K = 1000.0
MAX_CREDENTIAL_LENGTH = 16_384
PRICE_HELP = f"Price per 1,000 tokens, 0 to {MAX_PRICE_PER_1K:g}."


def find_nul(value: Any, where: str = "") -> str | None:
    """The location of the first NUL character in a JSON-like value, or None.

    PostgreSQL cannot store NUL in text, so it is refused at the edge on both stores.
    """
    if isinstance(value, str):
        return where or "value" if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            found = find_nul(str(key), inner) or find_nul(item, inner)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = find_nul(item, f"{where}.{index}")
            if found:
                return found
    return None


def refuse_nul(data: Any) -> Any:
    where = find_nul(data)
    if where is not None:
        raise ValueError(f"{where}: NUL characters are not allowed")
    return data


def check_credentials(credentials: dict[str, str] | None) -> dict[str, str] | None:
    """Credentials go into HTTP headers and forms: no control characters, sane lengths."""
    for key, value in (credentials or {}).items():
        if not key or len(key) > 100 or any(unicodedata.category(c) == "Cc" for c in key):
            raise ValueError(f"credentials: {key!r} is not a usable credential name")
        if len(value) > MAX_CREDENTIAL_LENGTH:
            raise ValueError(f"credentials.{key}: longer than {MAX_CREDENTIAL_LENGTH} characters")
        if any(unicodedata.category(c) == "Cc" for c in value):
            raise ValueError(
                f"credentials.{key}: contains a control character (such as a line break); "
                "paste the value on one line"
            )
    return credentials


class EndpointBase(SQLModel):
    name: str = Field(
        index=True,
        unique=True,
        max_length=100,
        schema_extra={"pattern": NAME_PATTERN},
        description="Unique name (letters, digits, _ . : -); the model id on /v1.",
    )
    display_name: str = Field(default="", max_length=200)
    endpoint_type: str = Field(max_length=50)
    url: str = Field(default="", max_length=2000)
    model_name: str = Field(default="", max_length=200)
    priority: int = Field(default=100, ge=0, le=1_000_000)
    group_name: str | None = Field(
        default=None,
        max_length=100,
        index=True,
        schema_extra={"pattern": NAME_PATTERN},
        description="A group this endpoint answers for: `model` on /v1 may name the group.",
    )
    persistent_session: bool = False
    max_concurrent_requests: int = Field(default=8, ge=1, le=1000)
    rate_limit_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    request_timeout: float = Field(default=120.0, gt=0, le=3600)
    input_cost_per_1k: float = Field(default=0.0, ge=0, le=MAX_PRICE_PER_1K, description=PRICE_HELP)
    output_cost_per_1k: float = Field(
        default=0.0, ge=0, le=MAX_PRICE_PER_1K, description=PRICE_HELP
    )
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    browser_config: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    # Probes, breaker and passive-signal settings (runtime.health.HealthConfig); {} = defaults.
    health_config: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )


class Endpoint(EndpointBase, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    desired_state: str = Field(default=DesiredState.stopped, max_length=20)
    state: str = Field(default=EndpointState.stopped, max_length=20)
    state_reason: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    state_changed_at: datetime = Field(default_factory=utcnow)
    # When the current state ends by itself (a cooling breaker's reopen time), if it does.
    state_until: datetime | None = None
    credentials_encrypted: str | None = Field(default=None, sa_column=Column(Text))
    # The credentials' key names, kept beside the ciphertext so listing endpoints never decrypts.
    # None (not known yet, see EndpointRepository.backfill_credential_keys) is SQL NULL, not
    # the JSON value null, so the backfill can find it with IS NULL.
    credential_keys: list[str] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True))
    )
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # Set when the endpoint came from an approved discovery draft; the analysis is a summary
    # of the draft's evidence (the draft itself keeps the whole of it).
    discovered_by_ai: bool = False
    discovery_confidence: float | None = None
    discovery_analysis: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class EndpointEvent(SQLModel, table=True):
    __tablename__ = "endpoint_event"
    __table_args__ = (Index("ix_endpoint_event_endpoint_at", "endpoint_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    endpoint_id: str = Field(foreign_key="endpoint.id", ondelete="CASCADE", max_length=32)
    at: datetime = Field(default_factory=utcnow)
    kind: str = Field(max_length=40)
    from_state: str | None = Field(default=None, max_length=20)
    to_state: str | None = Field(default=None, max_length=20)
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


class RequestLog(SQLModel, table=True):
    __tablename__ = "request_log"
    __table_args__ = (Index("ix_request_log_endpoint_at", "endpoint_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    endpoint_id: str = Field(foreign_key="endpoint.id", ondelete="CASCADE", max_length=32)
    session_id: str | None = Field(default=None, max_length=100)
    at: datetime = Field(default_factory=utcnow)
    ok: bool = True
    error_kind: str | None = Field(default=None, max_length=40)
    status_code: int = 200
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_estimated: bool = False
    cost: float = 0.0
    streamed: bool = False


# The instance of bucket rows written before buckets recorded one.
UNRECORDED_INSTANCE = ""


def instance_key() -> Any:
    """The bucket tables' instance column: part of the key, so instances never share a row."""
    return Field(
        default=UNRECORDED_INSTANCE,
        primary_key=True,
        max_length=INSTANCE_NAME_MAX,
        sa_column_kwargs={"server_default": UNRECORDED_INSTANCE},
    )


class MetricBucket(SQLModel, table=True):
    """Per endpoint per instance per minute pre-aggregates, so reports read thousands of rows.

    Each instance writes only its own rows: a report over the cluster sums them, and one
    instance's traffic can be told apart."""

    __tablename__ = "metric_bucket"
    # Reports over all endpoints select a time range: without this, every report scans the table.
    __table_args__ = (Index("ix_metric_bucket_minute", "minute"),)

    endpoint_id: str = Field(
        foreign_key="endpoint.id", ondelete="CASCADE", primary_key=True, max_length=32
    )
    instance: str = instance_key()
    minute: datetime = Field(primary_key=True)
    requests: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    # Counts per latency bucket (bounds in runtime.metrics.LATENCY_BOUNDS_MS), for percentiles.
    latency_hist: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Time to first token of the requests that reported one (streams), summed for an average.
    ttft_sum_ms: float = 0.0
    ttft_count: int = 0
    # Failed requests per error class ({"timeout": 3, ...}), for error classes over time.
    error_kinds: dict[str, int] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )


class MetricHourBucket(SQLModel, table=True):
    """The per-minute buckets rolled up per hour, so a week-long report reads 168 rows per
    endpoint instead of 10,080. Written by the same writer, in the same transaction."""

    __tablename__ = "metric_bucket_hour"

    endpoint_id: str = Field(
        foreign_key="endpoint.id", ondelete="CASCADE", primary_key=True, max_length=32
    )
    instance: str = instance_key()
    hour: datetime = Field(primary_key=True)
    requests: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    latency_hist: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    ttft_sum_ms: float = 0.0
    ttft_count: int = 0
    error_kinds: dict[str, int] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )


class ChatSession(SQLModel, table=True):
    __tablename__ = "chat_session"

    id: str = Field(primary_key=True, max_length=100)
    endpoint_id: str | None = Field(
        default=None, foreign_key="endpoint.id", ondelete="SET NULL", max_length=32
    )
    title: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    last_active_at: datetime = Field(default_factory=utcnow, index=True)
    message_count: int = 0
    # The provider's own conversation state (e.g. a web chat's conversation URL), encrypted.
    provider_state_encrypted: str | None = Field(default=None, sa_column=Column(Text))


class Message(SQLModel, table=True):
    __tablename__ = "message"
    __table_args__ = (UniqueConstraint("session_id", "seq", name="uq_message_session_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(foreign_key="chat_session.id", ondelete="CASCADE", max_length=100)
    seq: int
    role: str = Field(max_length=20)
    content: str = Field(sa_column=Column(Text, nullable=False))
    # What plain text cannot hold, so a conversation replays exactly: the OpenAI content parts
    # (images, audio), an assistant's tool_calls, a tool message's tool_call_id, a name.
    structured: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    endpoint_id: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow)


class BrowserState(SQLModel, table=True):
    """A web chat endpoint's browser storage state (cookies, local storage), encrypted."""

    __tablename__ = "browser_state"

    endpoint_id: str = Field(
        foreign_key="endpoint.id", ondelete="CASCADE", primary_key=True, max_length=32
    )
    data_encrypted: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)


class DiscoveryStatus(StrEnum):
    queued = "queued"
    crawling = "crawling"
    drafting = "drafting"
    validating = "validating"
    probing = "probing"
    refining = "refining"
    ready = "ready"
    failed = "failed"
    approved = "approved"


class DiscoveryDraft(SQLModel, table=True):
    """A discovered chat site: the drafted config, its evidence, and the review outcome."""

    __tablename__ = "discovery_draft"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    url: str = Field(max_length=2000)
    status: str = Field(default=DiscoveryStatus.queued, max_length=20, index=True)
    reason: str = Field(default="", max_length=40)
    message: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    use_llm: bool = False
    # Which LLM drafts: {"endpoint": name} or {"base_url", "model"}; its API key is a secret.
    llm: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # username / password for the site and the LLM's api_key, encrypted.
    secrets_encrypted: str | None = Field(default=None, sa_column=Column(Text))
    config: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    confidence: float = 0.0
    probe_passed: bool = False
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    screenshot: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    endpoint_id: str | None = Field(default=None, max_length=32)
    # The instance whose queue runs this draft's job (jobs live in that process's memory).
    worker: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Instance(SQLModel, table=True):
    """One running aiem process on this store: its heartbeat and what it runs."""

    id: str = Field(primary_key=True, max_length=32)
    # Stable across restarts (the id is new per process start): the key of its metric buckets.
    name: str = Field(
        default="", max_length=INSTANCE_NAME_MAX, sa_column_kwargs={"server_default": ""}
    )
    url: str = Field(default="", max_length=500)
    version: str = Field(default="", max_length=50)
    started_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime = Field(default_factory=utcnow, index=True)
    # Names of the endpoints live on this instance, as of its last heartbeat.
    running: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class EndpointLease(SQLModel, table=True):
    """Which instance owns a browser endpoint on a shared store (PostgreSQL), until when.

    A browser logged into one account must be driven from one place: the holder runs it and
    renews the lease with its heartbeats; the others forward its chats to the holder. Times
    are the database's clock, so instances never compare their own clocks.
    """

    __tablename__ = "endpoint_lease"

    endpoint_id: str = Field(
        foreign_key="endpoint.id", ondelete="CASCADE", primary_key=True, max_length=32
    )
    holder: str = Field(max_length=32, index=True)
    acquired_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(default_factory=utcnow)


class Meta(SQLModel, table=True):
    key: str = Field(primary_key=True, max_length=100)
    value: str = Field(sa_column=Column(Text, nullable=False))


class WebhookDeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    dead = "dead"


# An event filter entry: an event kind ("state_change"), a prefix pattern ("breaker_*") or "*".
EVENT_PATTERN = r"^(\*|[a-z][a-z0-9_.]{0,59}\*?)$"
EVENT_RE = re.compile(EVENT_PATTERN)


class WebhookBase(SQLModel):
    url: str = Field(max_length=2000, description="http(s) URL that receives the events.")
    events: list[str] = Field(
        default_factory=lambda: ["*"],
        sa_column=Column(JSON, nullable=False),
        description='Event kinds to send ("state_change", "restart", "breaker_*", "*" = all).',
    )
    description: str = Field(default="", max_length=200)


class Webhook(WebhookBase, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    secret_encrypted: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class WebhookDelivery(SQLModel, table=True):
    """The outbox: one row per event per subscriber, kept after delivery as its record."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (Index("ix_webhook_delivery_lane", "webhook_id", "status", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    webhook_id: str = Field(foreign_key="webhook.id", ondelete="CASCADE", max_length=32)
    event_id: str = Field(max_length=32)
    kind: str = Field(max_length=40)
    # The exact body sent on every attempt, so each attempt carries the same signature.
    payload: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default=WebhookDeliveryStatus.pending, max_length=20)
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    next_attempt_at: datetime = Field(default_factory=utcnow)
    last_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    delivered_at: datetime | None = None


# ---- API shapes ---------------------------------------------------------------------------


class EndpointCreate(EndpointBase):
    # Left out, it is the endpoint type's own default (a high cap for REST APIs, the page
    # pool's size for web chats).
    max_concurrent_requests: int | None = Field(default=None, ge=1, le=1000)  # type: ignore[assignment]
    credentials: dict[str, str] = Field(default_factory=dict)
    start: bool = Field(default=False, description="Start the endpoint right after creating it.")

    _no_nul = model_validator(mode="before")(refuse_nul)
    _usable_credentials = field_validator("credentials")(check_credentials)


class EndpointUpdate(SQLModel):
    display_name: str | None = Field(default=None, max_length=200)
    url: str | None = Field(default=None, max_length=2000)
    model_name: str | None = Field(default=None, max_length=200)
    priority: int | None = Field(default=None, ge=0, le=1_000_000)
    group_name: str | None = Field(
        default=None, max_length=100, schema_extra={"pattern": NAME_PATTERN}
    )
    persistent_session: bool | None = None
    max_concurrent_requests: int | None = Field(default=None, ge=1, le=1000)
    rate_limit_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    request_timeout: float | None = Field(default=None, gt=0, le=3600)
    input_cost_per_1k: float | None = Field(
        default=None, ge=0, le=MAX_PRICE_PER_1K, description=PRICE_HELP
    )
    output_cost_per_1k: float | None = Field(
        default=None, ge=0, le=MAX_PRICE_PER_1K, description=PRICE_HELP
    )
    config: dict[str, Any] | None = None
    browser_config: dict[str, Any] | None = None
    health_config: dict[str, Any] | None = None
    # Replaces the whole credential set when given; {} clears it.
    credentials: dict[str, str] | None = None

    _no_nul = model_validator(mode="before")(refuse_nul)
    _usable_credentials = field_validator("credentials")(check_credentials)


class EndpointPublic(EndpointBase):
    id: str
    desired_state: str
    state: str
    state_reason: str
    state_changed_at: datetime
    state_until: datetime | None = None
    credential_keys: list[str] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    discovered_by_ai: bool = False
    discovery_confidence: float | None = None
    discovery_analysis: dict[str, Any] | None = None


class EndpointEventPublic(SQLModel):
    id: int
    endpoint_id: str
    at: datetime
    kind: str
    from_state: str | None
    to_state: str | None
    detail: str


class MessagePublic(SQLModel):
    seq: int
    role: str
    content: str
    structured: dict[str, Any] | None = None
    endpoint_id: str | None
    created_at: datetime


class ChatSessionPublic(SQLModel):
    id: str
    endpoint_id: str | None
    title: str
    created_at: datetime
    last_active_at: datetime
    message_count: int


class WebhookCreate(WebhookBase):
    secret: str = Field(
        min_length=16, max_length=500, description="HMAC-SHA256 key; stored encrypted."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("events")
    @classmethod
    def _event_patterns(cls, value: list[str]) -> list[str]:
        if not value or len(value) > 50:
            raise ValueError('give 1 to 50 event kinds or patterns ("*" for every event)')
        for pattern in value:
            if not EVENT_RE.match(pattern):
                raise ValueError(
                    f"{pattern!r} is not an event kind or pattern "
                    "(lower-case letters, digits, _ and ., optionally ending in *)"
                )
        return list(dict.fromkeys(value))


class WebhookPublic(WebhookBase):
    id: str
    created_at: datetime
    pending: int = 0
    delivered: int = 0
    dead: int = 0


class WebhookDeliveryPublic(SQLModel):
    id: int
    webhook_id: str
    event_id: str
    kind: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str
    delivered_at: datetime | None
    payload: dict[str, Any]
