"""All settings, declared once, read from the environment (and .env) by their seed names."""

from __future__ import annotations

import ipaddress
import socket
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from store.instance_names import INSTANCE_NAME_MAX, instance_name_for


class SettingsError(ValueError):
    pass


MIN_TOKEN_LENGTH = 16
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", alias="ENDPOINT_MANAGER_HOST", description="Bind address.")
    port: int = Field(8001, alias="ENDPOINT_MANAGER_PORT", ge=1, le=65535, description="Port.")
    health_check_interval: float = Field(
        30.0,
        alias="HEALTH_CHECK_INTERVAL",
        gt=0,
        le=86400,
        description="Seconds between health probes of running endpoints.",
    )
    performance_monitoring: bool = Field(
        True,
        alias="PERFORMANCE_MONITORING",
        description="Keep a RequestLog row per request (per-minute buckets are always kept).",
    )
    auto_restart_failed_endpoints: bool = Field(
        True,
        alias="AUTO_RESTART_FAILED_ENDPOINTS",
        description="Restart failed endpoints with exponential backoff.",
    )
    session_timeout: float = Field(
        3600.0, alias="SESSION_TIMEOUT", gt=0, description="Idle seconds before a session expires."
    )
    session_cleanup_interval: float = Field(
        300.0,
        alias="SESSION_CLEANUP_INTERVAL",
        gt=0,
        le=86400,
        description="Seconds between sweeps of expired sessions.",
    )
    database_url: str | None = Field(
        None, alias="DATABASE_URL", description="SQLAlchemy URL; SQLite in the data dir if unset."
    )
    data_dir: Path = Field(Path("data"), alias="AIEM_DATA_DIR", description="Data directory.")
    secret_key: SecretStr | None = Field(
        None,
        alias="AIEM_SECRET_KEY",
        description="Fernet key(s), comma-separated; a key file in the data dir if unset.",
    )
    admin_token: SecretStr | None = Field(
        None,
        alias="AIEM_ADMIN_TOKEN",
        description="Bearer token for the API and sign-in token for the console (at least "
        f"{MIN_TOKEN_LENGTH} characters, no spaces); required when binding beyond loopback.",
    )
    allowed_hosts: str = Field(
        ",".join(LOOPBACK_NAMES),
        alias="AIEM_ALLOWED_HOSTS",
        description="Comma-separated host names the Host header may carry (the bind address "
        "is added when it is a specific one); '*' allows any.",
    )
    console_session_ttl: float = Field(
        12 * 3600.0,
        alias="AIEM_CONSOLE_SESSION_TTL",
        gt=0,
        le=30 * 86400,
        description="Seconds a console sign-in lasts.",
    )
    min_free_disk_mb: float = Field(
        64.0,
        alias="AIEM_MIN_FREE_DISK_MB",
        ge=0,
        description="/readyz reports the store unavailable when the SQLite data dir has less "
        "free space than this.",
    )
    config_file: Path = Field(
        Path("config/endpoints.json"),
        alias="AIEM_CONFIG_FILE",
        description="Declarative endpoints upserted by name at start-up, when present.",
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        alias="AIEM_MAX_BODY_BYTES",
        ge=1024,
        description="Largest request body accepted.",
    )
    max_fallbacks: int = Field(
        2,
        alias="AIEM_MAX_FALLBACKS",
        ge=0,
        le=20,
        description="Other group members a /v1 request may fall back to after a transient error.",
    )
    queue_timeout: float = Field(
        30.0,
        alias="AIEM_QUEUE_TIMEOUT",
        gt=0,
        le=3600,
        description="Seconds a request over an endpoint's concurrency cap may queue before 429.",
    )
    queue_length: int = Field(
        1000,
        alias="AIEM_QUEUE_LENGTH",
        ge=0,
        le=1_000_000,
        description="Requests that may queue per endpoint; past it, 429 at once.",
    )
    log_level: str = Field("info", alias="AIEM_LOG_LEVEL")
    discovery_allow_private: bool = Field(
        False,
        alias="AIEM_DISCOVERY_ALLOW_PRIVATE",
        description="Let discovery load private, loopback and link-local addresses.",
    )
    discovery_concurrency: int = Field(
        1,
        alias="AIEM_DISCOVERY_CONCURRENCY",
        ge=1,
        le=16,
        description="Discoveries run at once (each drives two Chromium instances).",
    )
    discovery_answer_timeout: float = Field(
        45.0,
        alias="AIEM_DISCOVERY_ANSWER_TIMEOUT",
        gt=0,
        le=600,
        description="Seconds a discovery probe waits for the page to answer its test message "
        "(a draft that drives the wrong element costs this long per round).",
    )
    webhook_timeout: float = Field(
        10.0, alias="AIEM_WEBHOOK_TIMEOUT", gt=0, le=300, description="Seconds per delivery try."
    )
    webhook_retry_base: float = Field(
        5.0,
        alias="AIEM_WEBHOOK_RETRY_BASE",
        gt=0,
        le=3600,
        description="Seconds before a failed webhook delivery's first retry; doubles per retry.",
    )
    webhook_retry_cap: float = Field(
        3600.0,
        alias="AIEM_WEBHOOK_RETRY_CAP",
        gt=0,
        le=86400,
        description="Longest wait between two tries of a webhook delivery.",
    )
    webhook_max_age: float = Field(
        86400.0,
        alias="AIEM_WEBHOOK_MAX_AGE",
        gt=0,
        le=7 * 86400,
        description="Seconds a webhook delivery is retried before it is marked dead.",
    )
    metrics_public: bool = Field(
        False,
        alias="AIEM_METRICS_PUBLIC",
        description="Serve GET /metrics without the admin token (for a Prometheus scraper).",
    )
    drain_timeout: float = Field(
        30.0,
        alias="AIEM_DRAIN_TIMEOUT",
        ge=0,
        le=3600,
        description="Seconds a stopping instance (SIGTERM) lets in-flight requests finish.",
    )
    drain_grace: float = Field(
        2.0,
        alias="AIEM_DRAIN_GRACE",
        ge=0,
        le=60,
        description="Seconds a stopping instance keeps answering, every response closing its "
        "connection, before it stops listening: a proxy in front lets go of its idle "
        "keep-alive connections instead of sending on one as it closes. 0: stop at once.",
    )
    request_log_retention_days: float = Field(
        30.0,
        alias="AIEM_REQUEST_LOG_RETENTION_DAYS",
        gt=0,
        le=3650,
        description="Days a row per request is kept (per-minute and hourly totals stay).",
    )
    advertise_url: str = Field(
        "",
        alias="AIEM_ADVERTISE_URL",
        description=(
            "This instance's URL as the other instances reach it (default: the bind address; "
            "for a bind on every interface, this machine's address)."
        ),
    )
    redis_url: str | None = Field(
        None,
        alias="REDIS_URL",
        description="redis://, rediss:// or unix:// URL: rate and concurrency limits counted "
        "exactly across the cluster in Redis; unset: each instance enforces its share.",
    )
    instance_name: str = Field(
        "",
        alias="AIEM_INSTANCE_NAME",
        max_length=INSTANCE_NAME_MAX,
        description="This instance's name in metrics and /cluster, kept across restarts "
        "(default: AIEM_ADVERTISE_URL's host:port, else the host name and port).",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        alias="AIEM_LOG_FORMAT",
        description="text, or json: one JSON object a line, with a request id per request.",
    )

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value and not value.startswith(("sqlite", "postgresql", "postgres://")):
            raise ValueError("DATABASE_URL must be a sqlite:// or postgresql:// URL")
        return value or None

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None  # an empty variable means no Redis
        from redis.connection import parse_url

        try:
            parse_url(value)
        except ValueError as exc:  # the message names the accepted schemes or the bad part
            raise ValueError(f"not a Redis URL: {exc}") from None
        return value

    @field_validator("instance_name")
    @classmethod
    def _printable_name(cls, value: str) -> str:
        value = value.strip()
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("the instance name may not contain spaces or control characters")
        return value

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        if token == "":
            return None  # an empty variable (e.g. in a .env file) means no token
        if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
            raise ValueError(
                f"the admin token must be at least {MIN_TOKEN_LENGTH} characters with no "
                "whitespace; make one with: python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'"
            )
        return value

    @model_validator(mode="after")
    def _token_off_loopback(self) -> Settings:
        if not is_loopback(self.host) and not self.admin_token:
            raise ValueError(
                f"ENDPOINT_MANAGER_HOST={self.host} is not a loopback address: "
                "set AIEM_ADMIN_TOKEN to protect the API"
            )
        return self

    @cached_property
    def store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir.resolve() / 'aiem.db'}"

    def allowed_host_names(self) -> tuple[str, ...]:
        names = [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]
        if self.host not in WILDCARD_BINDS and self.host not in names:
            names.append(self.host)
        return tuple(names)

    def instance_name_value(self) -> str:
        """The stable name of this instance: set, or from the advertised URL, or host:port.

        Not the per-start instance id, so that an instance's metric buckets stay its own
        across restarts and /system/metrics can name the instances it sums."""
        if self.instance_name:
            return self.instance_name
        if self.advertise_url:
            return instance_name_for(self.advertise_url)[:INSTANCE_NAME_MAX]
        # The port last, so that a long host name loses its end rather than the port.
        return f"{socket.gethostname()[: INSTANCE_NAME_MAX - 6]}:{self.port}"

    def secret_key_value(self) -> str | None:
        return self.secret_key.get_secret_value() if self.secret_key else None

    def admin_token_value(self) -> str | None:
        return self.admin_token.get_secret_value() if self.admin_token else None


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; a bad value becomes one clear SettingsError."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            field = err["loc"][0] if err["loc"] else ""
            alias = Settings.model_fields[field].alias if field in Settings.model_fields else field
            problems.append(f"{alias or field}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


def describe_settings(settings: Settings) -> list[dict[str, object]]:
    """Each setting by its environment name: the value in force, where it came from, its help.

    Secret values are reported only as "set" / "not set"; a database URL loses its password.
    """
    rows: list[dict[str, object]] = []
    for field_name, info in Settings.model_fields.items():
        value = getattr(settings, field_name)
        if isinstance(value, SecretStr) or info.annotation in (SecretStr, SecretStr | None):
            shown: object = "set" if value else "not set"
        elif field_name == "database_url" and value:
            from sqlalchemy.engine import make_url

            shown = make_url(value).render_as_string(hide_password=True)
        elif field_name == "redis_url" and value:
            from runtime.redis_limits import redacted

            shown = redacted(value)
        else:
            shown = str(value) if isinstance(value, Path) else value
        rows.append(
            {
                "name": info.alias or field_name,
                "value": shown,
                "default": field_name not in settings.model_fields_set,
                "description": info.description or "",
            }
        )
    return rows
