"""The one place that maps runtime and provider errors to HTTP statuses and bodies.

Every error body is JSON: ``{"detail", "kind"}`` (plus ``errors`` on 422, ``retry_after``
when waiting helps) on the management API, OpenAI's ``{"error": {...}}`` on /v1.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from providers import errors as pe
from runtime import errors as re_

# (status, OpenAI error type) per error class; the first matching base class wins.
STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (re_.NotFound, 404, "not_found_error"),
    (re_.Conflict, 409, "invalid_request_error"),
    (re_.InvalidConfig, 422, "invalid_request_error"),
    (re_.Unsupported, 400, "invalid_request_error"),
    (re_.CapacityExceeded, 429, "rate_limit_error"),
    (re_.EndpointUnavailable, 503, "api_error"),
    (re_.StoreUnavailable, 503, "api_error"),
    (re_.InternalError, 500, "api_error"),
    (pe.AuthError, 401, "authentication_error"),
    (pe.RateLimited, 429, "rate_limit_error"),
    (pe.ProviderTimeout, 504, "timeout_error"),
    (pe.InvalidRequest, 400, "invalid_request_error"),
    (pe.Unavailable, 502, "api_error"),
    (pe.ProtocolError, 502, "api_error"),
    (pe.PageTrouble, 502, "api_error"),
    (pe.ProviderError, 502, "api_error"),
)

KNOWN = (re_.ManagerError, pe.ProviderError)
STORE_RETRY_AFTER_S = 5

log = logging.getLogger("aiem.gateway")


def classify(exc: Exception) -> tuple[int, str]:
    for cls, status, kind in STATUS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "api_error"


def retry_after(exc: Exception) -> float | None:
    return getattr(exc, "retry_after", None)


def headers_for(exc: Exception) -> dict[str, str]:
    wait = retry_after(exc)
    return {"Retry-After": str(max(1, round(wait)))} if wait is not None else {}


def kind_of(exc: Exception) -> str:
    return getattr(exc, "kind", "error")


def error_body(exc: Exception) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": str(exc), "kind": kind_of(exc)}
    if isinstance(exc, re_.InvalidConfig):
        body["errors"] = exc.errors  # the one 422 shape, even when there is no field to name
    if isinstance(exc, pe.PageTrouble):
        body["reason"] = exc.reason
    wait = retry_after(exc)
    if wait is not None:
        body["retry_after"] = wait
    return body


def openai_error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def management_error(exc: Exception) -> Response:
    status, _ = classify(exc)
    return json_response(status, error_body(exc), headers_for(exc))


def openai_error(exc: Exception) -> Response:
    status, kind = classify(exc)
    body = openai_error_body(str(exc), kind, kind_of(exc))
    body["error"]["param"] = getattr(exc, "param", None)
    return json_response(status, body, headers_for(exc))


def sse_error_payload(exc: Exception) -> dict[str, Any]:
    status, kind = classify(exc)
    body = openai_error_body(str(exc), kind, kind_of(exc))
    body["error"]["status"] = status
    wait = retry_after(exc)
    if wait is not None:  # a stream's headers are long gone: the wait travels in the event
        body["error"]["retry_after"] = wait
    return body


def validation_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The one 422 shape: a readable ``detail``, ``kind``, and the ``errors`` list."""
    message = "; ".join(".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in errors)
    return {"detail": message, "kind": "validation", "errors": errors}


def _validation_items(detail: Any) -> list[dict[str, Any]]:
    """FastAPI-style ``[{"loc", "msg", "type"}]`` from an HTTPException's detail."""
    if isinstance(detail, list) and all(isinstance(d, dict) and "msg" in d for d in detail):
        return [
            {"loc": list(d.get("loc", ())), "msg": str(d["msg"]), "type": str(d.get("type", ""))}
            for d in detail
        ]
    return [{"loc": [], "msg": str(detail), "type": "value_error"}]


def _error_response(request: Request, status: int, message: str, kind: str, **extra: Any):
    headers = {"Retry-After": str(extra["retry_after"])} if "retry_after" in extra else None
    if request.url.path.startswith("/v1/"):
        return json_response(status, openai_error_body(message, "api_error", kind), headers)
    return json_response(status, {"detail": message, "kind": kind, **extra}, headers)


def install(app: FastAPI) -> None:
    async def on_known(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/v1/"):
            return openai_error(exc)
        return management_error(exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        body = validation_body(errors)
        if request.url.path.startswith("/v1/"):
            return json_response(422, openai_error_body(body["detail"], "invalid_request_error"))
        return json_response(422, body)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if request.url.path.startswith("/v1/"):
            return json_response(
                exc.status_code, openai_error_body(str(exc.detail), "invalid_request_error")
            )
        if exc.status_code == 422:  # the one 422 shape, whoever raised it
            return json_response(422, validation_body(_validation_items(exc.detail)))
        body = {"detail": str(exc.detail), "kind": "http_error"}
        return json_response(exc.status_code, body, dict(exc.headers or {}))

    async def on_store(request: Request, exc: Exception) -> Response:
        log.warning("store unavailable on %s %s: %s", request.method, request.url.path, exc)
        runtime = getattr(request.app.state, "runtime", None)
        if runtime is not None:
            runtime.metrics.store_errors += 1
        return _error_response(
            request,
            503,
            "the store is unavailable (database down or disk full); try again shortly",
            "store_unavailable",
            retry_after=STORE_RETRY_AFTER_S,
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response(request, 500, "internal error; see the server log", "internal")

    for cls in KNOWN:
        app.add_exception_handler(cls, on_known)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(SQLAlchemyError, on_store)
    app.add_exception_handler(OSError, on_store)
    app.add_exception_handler(Exception, on_unexpected)
