"""Helpers for the /v1 compatibility tests: endpoints over the rich fixture upstreams, SSE."""

from __future__ import annotations

import json
from typing import Any

import httpx

KEY = "sk-rich-fixture-0123456789"
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5"
    "ErkJggg=="
)
PNG_URL = "data:image/png;base64," + PNG
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}
# The Responses API's flat function tool.
FUNCTION_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


async def add(api: httpx.AsyncClient, name: str, endpoint_type: str, url: str, **more: Any) -> None:
    body = {
        "name": name,
        "display_name": f"{name} display",
        "endpoint_type": endpoint_type,
        "url": url,
        "model_name": f"{name}-upstream-model",
        "credentials": {"api_key": KEY},
        "start": True,
        **more,
    }
    response = await api.post("/endpoints", json=body)
    assert response.status_code == 201, response.text
    state = (await api.get(f"/endpoints/{name}")).json()["state"]
    assert state == "healthy", state


async def add_openai(api: httpx.AsyncClient, upstream: Any, name: str = "gpt") -> None:
    await add(api, name, "openai_api", upstream.url)


async def add_anthropic(api: httpx.AsyncClient, upstream: Any, name: str = "claude") -> None:
    await add(api, name, "anthropic_api", upstream.url)


async def add_rest(api: httpx.AsyncClient, upstream: Any, name: str = "plain") -> None:
    await add(
        api,
        name,
        "rest_api",
        upstream.url,
        config={"path": "/api/ask", "body_template": {"prompt": "{{prompt}}"},
                "response_path": "answer"},
    )  # fmt: skip


def sse_data(text: str) -> list[Any]:
    """The JSON payloads of an SSE body ("[DONE]" kept as the string)."""
    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def sse_events(text: str) -> list[tuple[str, Any]]:
    out, name = [], "message"
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[6:])))
            name = "message"
    return out


def chat(model: str, content: Any = "hello", **more: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **more}
