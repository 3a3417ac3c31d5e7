"""Web chats are text only: /v1 refuses tools, images, audio, tool histories and n > 1 by name
instead of typing a prompt that silently lost them."""

from __future__ import annotations

import pytest

from tests.web_chat.test_gateway_webchat import create_and_start, web_endpoint
from tests.web_chat.webchat_sites import SiteServer, bot_reply

pytestmark = [pytest.mark.browser]

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
CALL = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
REFUSED = [
    ({"tools": [TOOL]}, "tools", "`tools`"),
    ({"n": 2}, "n", "`n`"),
    ({"response_format": {"type": "json_object"}}, "response_format", "`response_format`"),
    ({"messages": [{"role": "user", "content": [IMAGE]}]}, "messages[0].content[0]",
     "`image_url` content"),
    ({"messages": [{"role": "user", "content": [AUDIO]}]}, "messages[0].content[0]",
     "`input_audio` content"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "assistant", "content": None, "tool_calls": [CALL]},
                   {"role": "tool", "tool_call_id": "c1", "content": "y"}]},
     "messages[1].tool_calls", "a tool-call history (`tool_calls` / role `tool`)"),
]  # fmt: skip


def test_web_chats_refuse_what_a_page_cannot_take(gateway, sites: SiteServer) -> None:
    with gateway.client() as api:
        create_and_start(api, web_endpoint(sites, "sse", "pagebot"))
        base = {"model": "pagebot", "messages": [{"role": "user", "content": "hello"}]}
        for extra, param, label in REFUSED:
            response = api.post("/v1/chat/completions", json={**base, **extra})
            assert response.status_code == 400, (extra, response.text)
            error = response.json()["error"]
            assert error["param"] == param
            assert error["message"] == f"{label} is not supported by endpoint type web_chat"
        models = {m["id"]: m for m in api.get("/v1/models").json()["data"]}
        assert models["pagebot"]["capabilities"]["tools"] is False
        answer = api.post("/v1/chat/completions", json={**base, "n": 1})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == bot_reply("sse", 1, "hello")
