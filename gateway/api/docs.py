"""What the OpenAPI document says about errors, and /v1/chat/completions, which has no
framework route (the guard hands it to a bare ASGI app) and so is described here by hand.

Every status a route can answer is listed with its body: the guard's refusals (400 host, 401
token, 403 origin, 413 size, 415 content type, 422 NUL, 429 throttle), the runtime's and the
providers' errors (404, 409, 422, 429, 500, 502, 503, 504).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from store.models import NAME_PATTERN


class ErrorBody(BaseModel):
    """Every management API error but 422."""

    detail: str = Field(description="What went wrong, for people.")
    kind: str = Field(description="What went wrong, for programs (e.g. not_found, timeout).")
    retry_after: float | None = Field(None, description="Seconds to wait, when waiting helps.")
    reason: str | None = Field(None, description="A web chat page's trouble, when that is it.")


class ValidationItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """The one 422 shape: readable ``detail``, ``kind`` and the list of problems."""

    detail: str
    kind: str
    errors: list[ValidationItem]


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """Errors on /v1, shaped as OpenAI's so its clients raise the right exceptions."""

    error: OpenAIError


def _responses(model: type[BaseModel], validation: type[BaseModel]) -> dict[int | str, Any]:
    described = {
        400: "Bad request, or a Host header that is not an allowed host name",
        401: "Missing or wrong admin token (when AIEM_ADMIN_TOKEN is set)",
        403: "A state-changing request from another origin",
        404: "No such endpoint, session or model",
        409: "Conflict: a duplicate name, or the endpoint is not running",
        413: "Request body larger than AIEM_MAX_BODY_BYTES",
        415: "A request body that is not JSON",
        429: "Rate limit, concurrency cap, or too many wrong tokens (see Retry-After)",
        500: "An unexpected error (counted in the metrics)",
        502: "The upstream failed or answered something unreadable",
        503: "The store is unavailable (database down or disk full); see Retry-After",
        504: "The upstream did not answer in time",
    }
    responses: dict[int | str, Any] = {
        status: {"model": model, "description": text} for status, text in described.items()
    }
    responses[422] = {"model": validation, "description": "Invalid input; names each field"}
    return responses


MANAGEMENT_RESPONSES = _responses(ErrorBody, ValidationErrorBody)
OPENAI_RESPONSES = _responses(OpenAIErrorBody, OpenAIErrorBody)

_ERROR_REF = {"$ref": "#/components/schemas/OpenAIErrorBody"}
_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}
_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"enum": ["system", "user", "assistant", "developer"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]},
    },
}
CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "description": "An endpoint's name."},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        "stream": {"type": "boolean"},
        "stream_options": {
            "type": "object",
            "properties": {"include_usage": {"type": "boolean"}},
        },
        "user_session_id": {"type": "string", "pattern": NAME_PATTERN},
    },
}
CHAT_COMPLETION = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array", "items": {"type": "object"}},
        "usage": {"type": "object"},
    },
}


def chat_completions_operation() -> dict[str, Any]:
    errors = {
        str(status): {
            "description": spec["description"],
            "content": {"application/json": {"schema": _ERROR_REF}},
        }
        for status, spec in OPENAI_RESPONSES.items()
    }
    ok = {
        "description": "The answer; with stream=true, Server-Sent Events ending in [DONE]",
        "content": {
            "application/json": {"schema": CHAT_COMPLETION},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
    return {
        "tags": ["openai"],
        "summary": "Chat completions (OpenAI-compatible)",
        "operationId": "chat_completions_v1_chat_completions_post",
        "parameters": [
            {
                "name": "X-Session-Id",
                "in": "header",
                "required": False,
                "description": "Continue (or start) this conversation.",
                "schema": {"type": "string", "pattern": NAME_PATTERN},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": CHAT_REQUEST}},
        },
        "responses": {"200": ok, **errors},
    }


def install(app: FastAPI) -> None:
    """Generate the document once, with the hand-described /v1/chat/completions added."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema["paths"]["/v1/chat/completions"] = {"post": chat_completions_operation()}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
