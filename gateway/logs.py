"""Logging set-up: plain text by default, JSON lines with request ids when AIEM_LOG_FORMAT=json.

In JSON mode every request gets an id (the caller's ``X-Request-Id`` when it is sane, else a
new one) that is returned in the response's ``X-Request-Id`` header, attached to every log
line written while the request runs, and ends the request with one access line. Plain mode
adds nothing to a request.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import re
import time
import uuid
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "aiem_request_id", default=None
)
_ID_OK = re.compile(rb"^[A-Za-z0-9._:-]{1,100}$")
_PREFIX = uuid.uuid4().hex[:10]
_counter = itertools.count(1)
access_log = logging.getLogger("aiem.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Console polls would otherwise log an httpx line each; still there at debug.
    if root.level > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)


class RequestIds:
    """ASGI middleware of the JSON mode: request ids in the context, headers and access log."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = _incoming_id(scope) or f"{_PREFIX}-{next(_counter):x}"
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        # Lets a streamed response find the server's own disconnect flag (openai_compat).
        send_with_id.__wrapped__ = send  # type: ignore[attr-defined]
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "fields": {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    }
                },
            )
            request_id.reset(token)


def _incoming_id(scope: Any) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return value.decode("ascii") if _ID_OK.match(value) else None
    return None
