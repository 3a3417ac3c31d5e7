"""HTTP client of the management REST API, the console's only way to reach the manager.

Pages call these methods, render what comes back and show ``ApiError.message`` on failure.
Every failure — connection refused, timeout, a 4xx/5xx answer, a body that is not JSON — is
raised as one ``ApiError`` with a message fit to show an operator. The admin token is only ever
sent in the Authorization header; it never appears in a message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import streamlit as st

DEFAULT_API_URL = "http://127.0.0.1:8001"
# Reads are cheap; actions (start/restart) may wait on a provider starting, so they get longer.
READ_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
ACTION_TIMEOUT = httpx.Timeout(30.0, connect=2.0)


class ApiError(Exception):
    """A failed call to the management API; ``message`` is safe to show to an operator."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        field_errors: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        # Dotted field path (e.g. "config.input", "name") -> the server's message for it.
        self.field_errors = field_errors or {}

    def __str__(self) -> str:
        return self.message


class ApiClient:
    """Thin typed wrapper over the endpoints the console uses. Thread-safe (one httpx.Client)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=READ_TIMEOUT, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    # -- endpoints -------------------------------------------------------------------------
    def list_endpoints(
        self, *, state: str | None = None, endpoint_type: str | None = None
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"state": state, "endpoint_type": endpoint_type}.items() if v}
        return self._request("GET", "/endpoints", params=params)

    def get_endpoint(self, endpoint_id: int | str) -> dict[str, Any]:
        return self._request("GET", f"/endpoints/{endpoint_id}")

    def start_endpoint(self, endpoint_id: int | str) -> dict[str, Any]:
        return self._action(endpoint_id, "start")

    def stop_endpoint(self, endpoint_id: int | str) -> dict[str, Any]:
        return self._action(endpoint_id, "stop")

    def restart_endpoint(self, endpoint_id: int | str) -> dict[str, Any]:
        return self._action(endpoint_id, "restart")

    def create_endpoint(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/endpoints", json=spec, timeout=ACTION_TIMEOUT)

    def update_endpoint(self, endpoint_id: int | str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._request(
            "PATCH", f"/endpoints/{endpoint_id}", json=patch, timeout=ACTION_TIMEOUT
        )

    def delete_endpoint(self, endpoint_id: int | str) -> None:
        self._request("DELETE", f"/endpoints/{endpoint_id}", timeout=ACTION_TIMEOUT)

    def endpoint_events(self, endpoint_id: int | str, *, limit: int = 100) -> list[dict]:
        return self._request("GET", f"/endpoints/{endpoint_id}/events", params={"limit": limit})

    def chat(self, endpoint_id: int | str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request(
            "POST", f"/endpoints/{endpoint_id}/chat", json={**body, "stream": False},
            timeout=ACTION_TIMEOUT,
        )

    def chat_stream(self, endpoint_id: int | str, body: dict[str, Any]) -> ChatStream:
        """A streamed answer: iterate for the text as it arrives, then read ``result``."""
        return ChatStream(self, f"/endpoints/{endpoint_id}/chat", {**body, "stream": True})

    # -- providers, sessions, reports ------------------------------------------------------
    def providers(self) -> list[dict[str, Any]]:
        return self._request("GET", "/providers")

    def endpoint_create_schema(self) -> dict[str, Any]:
        """JSON schema of the endpoint fields every type shares, from the API's OpenAPI."""
        spec = self._request("GET", "/openapi.json")
        schemas = (spec or {}).get("components", {}).get("schemas", {})
        if "EndpointCreate" not in schemas:
            raise ApiError("The management API does not describe EndpointCreate.")
        return {"$defs": schemas, **schemas["EndpointCreate"]}

    def list_sessions(
        self, *, endpoint_id: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if endpoint_id:
            params["endpoint_id"] = endpoint_id
        return self._request("GET", "/sessions", params=params)

    def get_session(self, session_id: str) -> dict[str, Any]:
        return self._request("GET", f"/sessions/{session_id}")

    def delete_session(self, session_id: str) -> None:
        self._request("DELETE", f"/sessions/{session_id}")

    def series(self, **params: Any) -> dict[str, Any]:
        """GET /metrics/series; ``start``/``end`` go out as ``from``/``to``."""
        query = {k: v for k, v in params.items() if v not in (None, "", [])}
        for ours, theirs in (("start", "from"), ("end", "to")):
            if ours in query:
                query[theirs] = query.pop(ours)
        return self._request("GET", "/metrics/series", params=query, timeout=ACTION_TIMEOUT)

    # -- system ----------------------------------------------------------------------------
    def system_metrics(self) -> dict[str, Any]:
        return self._request("GET", "/system/metrics")

    def system_config(self) -> dict[str, Any]:
        return self._request("GET", "/system/config")

    # -- plumbing --------------------------------------------------------------------------
    def _action(self, endpoint_id: int | str, verb: str) -> dict[str, Any]:
        return self._request("POST", f"/endpoints/{endpoint_id}/{verb}", timeout=ACTION_TIMEOUT)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        if response.is_error:
            raise _api_error(response)
        return _json_body(response)

    def _transport_error(self, exc: httpx.HTTPError) -> ApiError:
        if isinstance(exc, httpx.TimeoutException):
            return ApiError(f"The management API at {self.base_url} did not answer in time.")
        return ApiError(
            f"Cannot reach the management API at {self.base_url} ({type(exc).__name__})."
            " Is `aiem up` running, and is AIEM_API_URL right?"
        )


class ChatStream:
    """Server-sent events of one streamed chat: text deltas, then a ``done`` or error event.

    Iterating yields the answer's text as it arrives (what ``st.write_stream`` wants); afterwards
    ``result`` holds the final event (latency, time to first token, usage, cost). An error
    event or a failed request raises ``ApiError``.
    """

    def __init__(self, client: ApiClient, path: str, body: dict[str, Any]) -> None:
        self._client, self._path, self._body = client, path, body
        self.result: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[str]:
        client = self._client
        try:
            with client._http.stream(
                "POST", self._path, json=self._body, timeout=ACTION_TIMEOUT
            ) as response:
                if response.is_error:
                    response.read()
                    raise _api_error(response)
                yield from self._events(response.iter_lines())
        except httpx.HTTPError as exc:
            raise client._transport_error(exc) from exc

    def _events(self, lines: Iterator[str]) -> Iterator[str]:
        event = ""
        for line in lines:
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = _loads(line[5:].strip())
                if event == "error":
                    raise ApiError(f"The answer failed: {data.get('detail', data)}")
                if data.get("done"):
                    self.result = data
                elif data.get("delta"):
                    yield str(data["delta"])
                event = ""


def _loads(text: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ApiError("The management API sent a stream event that is not JSON.") from exc
    return value if isinstance(value, dict) else {"value": value}


def _api_error(response: httpx.Response) -> ApiError:
    return ApiError(
        _error_message(response),
        status_code=response.status_code,
        field_errors=_field_errors(response),
    )


def _field_errors(response: httpx.Response) -> dict[str, str]:
    """Validation errors by dotted field path, from either error shape the API sends."""
    try:
        body = response.json()
    except ValueError:
        return {}
    if not isinstance(body, dict):
        return {}
    items = body.get("errors") or body.get("detail")
    if not isinstance(items, list):
        return {}
    found: dict[str, str] = {}
    for item in items:
        if isinstance(item, dict):
            path = ".".join(str(p) for p in item.get("loc", []) if p not in ("body", "query"))
            found.setdefault(path, str(item.get("msg", "")))
    return found


def _json_body(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as exc:
        raise ApiError(
            f"The management API sent a body that is not JSON (HTTP {response.status_code}).",
            status_code=response.status_code,
        ) from exc


def _error_message(response: httpx.Response) -> str:
    """The API's own message (``{"detail": ...}``), prefixed with the status code."""
    prefix = f"HTTP {response.status_code}"
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if not detail and isinstance(body := _safe_json(response), dict):
        detail = body.get("message")
    if isinstance(detail, list):  # FastAPI validation errors: [{"loc": [...], "msg": ...}]
        detail = "; ".join(_validation_item(item) for item in detail)
    if not detail:
        detail = response.reason_phrase or "request failed"
    return f"{prefix}: {detail}"


def _safe_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _validation_item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    location = ".".join(str(part) for part in item.get("loc", []) if part != "body")
    return f"{location}: {item.get('msg', '')}" if location else str(item.get("msg", ""))


def api_settings_from_env() -> tuple[str, str | None]:
    """(base URL, admin token) from AIEM_API_URL and AIEM_ADMIN_TOKEN."""
    base_url = os.environ.get("AIEM_API_URL", "").strip() or DEFAULT_API_URL
    token = os.environ.get("AIEM_ADMIN_TOKEN", "").strip() or None
    return base_url, token


@st.cache_resource(show_spinner=False)
def _shared_client(base_url: str, token: str | None) -> ApiClient:
    # Cached per (url, token) so every session and rerun reuses one connection pool.
    return ApiClient(base_url, token=token)


def get_client() -> ApiClient:
    """The process-wide client for the API named by the environment."""
    base_url, token = api_settings_from_env()
    return _shared_client(base_url, token)
