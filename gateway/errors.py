"""The one place that maps runtime and provider errors to HTTP statuses and bodies."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
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
    if isinstance(exc, re_.InvalidConfig) and exc.errors:
        body["errors"] = exc.errors
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
    return body


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
        message = "; ".join(".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in errors)
        if request.url.path.startswith("/v1/"):
            return json_response(422, openai_error_body(message, "invalid_request_error"))
        return json_response(422, {"detail": errors, "message": message, "kind": "validation"})

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if request.url.path.startswith("/v1/"):
            return json_response(
                exc.status_code, openai_error_body(str(exc.detail), "invalid_request_error")
            )
        return json_response(exc.status_code, {"detail": exc.detail}, dict(exc.headers or {}))

    for cls in KNOWN:
        app.add_exception_handler(cls, on_known)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
