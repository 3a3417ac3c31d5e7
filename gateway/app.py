"""ASGI composition: FastAPI outside, the API routes first, the Streamlit console at "/"."""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from gateway import errors, forward, openai_extra, openai_responses
from gateway.api import discovery, docs, endpoints, reports, system, webhooks
from gateway.logs import RequestIds
from gateway.openai_compat import ChatCompletionsApp
from gateway.openai_compat import router as openai_router
from gateway.security import HEALTH_PATHS, Guard
from gateway.settings import Settings
from runtime.core import Runtime, RuntimeOptions
from runtime.discovery import DiscoveryOptions
from runtime.manager import ManagerOptions
from runtime.router import RoutingOptions
from runtime.webhooks import WebhookOptions

log = logging.getLogger("aiem.gateway")

CONSOLE_SCRIPT = Path(__file__).resolve().parent.parent / "console" / "app.py"


def runtime_options(settings: Settings) -> RuntimeOptions:
    return RuntimeOptions(
        database_url=settings.store_url,
        data_dir=settings.data_dir,
        secret_key=settings.secret_key_value(),
        config_file=settings.config_file,
        advertise_url=settings.advertise_url or default_advertise_url(settings.host, settings.port),
        instance_name=settings.instance_name_value(),
        version=app_version(),
        request_log_retention_days=settings.request_log_retention_days,
        redis_url=settings.redis_url,
        manager=ManagerOptions(
            auto_restart=settings.auto_restart_failed_endpoints,
            session_timeout_s=settings.session_timeout,
            session_cleanup_interval_s=settings.session_cleanup_interval,
            log_requests=settings.performance_monitoring,
            queue_length=settings.queue_length,
            queue_timeout_s=settings.queue_timeout,
            health_check_interval_s=settings.health_check_interval,
        ),
        discovery=DiscoveryOptions(
            concurrency=settings.discovery_concurrency,
            allow_private=settings.discovery_allow_private,
            answer_timeout_s=settings.discovery_answer_timeout,
        ),
        webhooks=WebhookOptions(
            timeout_s=settings.webhook_timeout,
            backoff_base_s=settings.webhook_retry_base,
            backoff_cap_s=settings.webhook_retry_cap,
            max_age_s=settings.webhook_max_age,
        ),
        routing=RoutingOptions(max_fallbacks=settings.max_fallbacks),
    )


def default_advertise_url(host: str, port: int) -> str:
    """Where the other instances reach this one when AIEM_ADVERTISE_URL is not set: the bind
    address, or for a bind on every interface this machine's address (in a container, its
    address on the container network, so scaled replicas reach each other), else loopback."""
    if host not in ("0.0.0.0", "::"):
        return f"http://{host}:{port}"
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        address = "127.0.0.1"
    return f"http://{address}:{port}"


def open_runtime(settings: Settings) -> Runtime:
    rt = Runtime(runtime_options(settings))
    rt.register()  # a second instance on a SQLite store stops here, with one clear line
    return rt


def create_app(settings: Settings, *, console: bool = True, runtime: Runtime | None = None) -> Any:
    """The whole process's ASGI app. ``runtime`` may be given (tests); else opened here."""
    rt = runtime or open_runtime(settings)
    rt.store.min_free_bytes = int(settings.min_free_disk_mb * 1024 * 1024)
    st_app = _console_app() if console else None
    forwarder = forward.Forwarder(rt.cluster.id)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if st_app is not None:
                await stack.enter_async_context(st_app.lifespan()(app))
                _quiet_access_log()
            await rt.start()
            stack.push_async_callback(rt.stop)
            stack.push_async_callback(forwarder.close)
            _freeze_startup_heap()
            yield

    # /docs and /redoc serve their scripts from the installed package: no CDN, no internet.
    app = FastAPIOffline(
        title="Universal AI Endpoint Manager",
        version="0.1.0",
        description="Manage REST and web chat AI endpoints; OpenAI-compatible /v1.",
        lifespan=lifespan,
    )
    app.state.runtime = rt
    app.state.settings = settings
    app.state.forwarder = forwarder
    errors.install(app)
    forward.install(app, forwarder)
    app.include_router(endpoints.router, responses=docs.MANAGEMENT_RESPONSES)
    app.include_router(system.router, responses=docs.MANAGEMENT_RESPONSES)
    app.include_router(discovery.router, responses=docs.MANAGEMENT_RESPONSES)
    app.include_router(webhooks.router, responses=docs.MANAGEMENT_RESPONSES)
    app.include_router(reports.router, responses=docs.MANAGEMENT_RESPONSES)
    app.include_router(openai_router, responses=docs.OPENAI_RESPONSES)
    app.include_router(openai_responses.router, responses=docs.OPENAI_RESPONSES)
    app.include_router(openai_extra.router, responses=docs.OPENAI_RESPONSES)
    docs.install(app)
    if st_app is not None:
        app.mount("/", st_app)
    guard = Guard(
        app,
        max_body=settings.max_body_bytes,
        admin_token=settings.admin_token_value(),
        allowed_hosts=settings.allowed_host_names(),
        session_ttl_s=settings.console_session_ttl,
        fast_routes={("POST", "/v1/chat/completions"): ChatCompletionsApp(rt, forwarder)},
        open_paths=HEALTH_PATHS | {"/metrics"} if settings.metrics_public else HEALTH_PATHS,
    )
    return RequestIds(guard) if settings.log_format == "json" else guard


def app_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aiem")
    except PackageNotFoundError:
        return "0+unknown"


def _freeze_startup_heap() -> None:
    # Everything allocated during start-up (frameworks, models, the console) lives as long as
    # the process: moving it out of the collector's generations keeps full collections short,
    # which would otherwise stall the event loop for tens of milliseconds under load.
    gc.collect()
    gc.freeze()


def _quiet_access_log() -> None:
    # Streamlit attaches a handler to uvicorn's access logger; uvicorn logs every request
    # when that logger has handlers, which costs time on the hot path.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False


def _console_app() -> Any:
    import streamlit as st

    return st.App(str(CONSOLE_SCRIPT))
