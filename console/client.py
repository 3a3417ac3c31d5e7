"""HTTP client of the management REST API, the console's only way to reach the manager.

Pages call these methods, render what comes back and show ``ApiError.message`` on failure.
Every failure — connection refused, timeout, a 4xx/5xx answer, a body that is not JSON — is
raised as one ``ApiError`` with a message fit to show an operator. The admin token is only ever
sent in the Authorization header; it never appears in a message.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import streamlit as st

DEFAULT_API_URL = "http://127.0.0.1:8001"
# Reads are cheap; actions (start/restart) may wait on a provider starting, so they get longer.
READ_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
ACTION_TIMEOUT = httpx.Timeout(30.0, connect=2.0)


class ApiError(Exception):
    """A failed call to the management API; ``message`` is safe to show to an operator."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code

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

    # -- discovery -------------------------------------------------------------------------
    def start_discovery(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/discovery", json=request, timeout=ACTION_TIMEOUT)

    def list_discoveries(self) -> list[dict[str, Any]]:
        return self._request("GET", "/discovery")

    def get_discovery(self, draft_id: str) -> dict[str, Any]:
        return self._request("GET", f"/discovery/{draft_id}")

    def discovery_screenshot(self, draft_id: str) -> bytes:
        return self._raw("GET", f"/discovery/{draft_id}/screenshot")

    def probe_discovery(self, draft_id: str, config: dict[str, Any] | None) -> dict[str, Any]:
        body = {"config": config} if config is not None else {}
        return self._request(
            "POST", f"/discovery/{draft_id}/probe", json=body, timeout=ACTION_TIMEOUT
        )

    def approve_discovery(self, draft_id: str, approval: dict[str, Any]) -> dict[str, Any]:
        return self._request(
            "POST", f"/discovery/{draft_id}/approve", json=approval, timeout=ACTION_TIMEOUT
        )

    def delete_discovery(self, draft_id: str) -> None:
        self._request("DELETE", f"/discovery/{draft_id}")

    # -- system ----------------------------------------------------------------------------
    def system_metrics(self) -> dict[str, Any]:
        return self._request("GET", "/system/metrics")

    # -- plumbing --------------------------------------------------------------------------
    def _action(self, endpoint_id: int | str, verb: str) -> dict[str, Any]:
        return self._request("POST", f"/endpoints/{endpoint_id}/{verb}", timeout=ACTION_TIMEOUT)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return _json_body(self._send(method, path, **kwargs))

    def _raw(self, method: str, path: str, **kwargs: Any) -> bytes:
        return self._send(method, path, **kwargs).content

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ApiError(
                f"The management API at {self.base_url} did not answer in time."
            ) from exc
        except httpx.TransportError as exc:
            raise ApiError(
                f"Cannot reach the management API at {self.base_url} ({type(exc).__name__})."
                " Is `aiem up` running, and is AIEM_API_URL right?"
            ) from exc
        if response.is_error:
            raise ApiError(_error_message(response), status_code=response.status_code)
        return response


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
    if isinstance(detail, list):  # FastAPI validation errors: [{"loc": [...], "msg": ...}]
        detail = "; ".join(_validation_item(item) for item in detail)
    if not detail:
        detail = response.reason_phrase or "request failed"
    return f"{prefix}: {detail}"


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
