"""A session with tool calls and images replays exactly, on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.gateway.openai_helpers import PNG_URL, WEATHER_TOOL, add_openai


async def test_a_tool_call_conversation_is_stored_and_replayed_exactly(api, rich_openai):
    await add_openai(api, rich_openai)
    headers = {"X-Session-Id": "tools-1"}
    user = {
        "role": "user",
        "content": [
            {"type": "text", "text": "Paris"},
            {"type": "image_url", "image_url": {"url": PNG_URL}},
        ],
    }
    first = await api.post(
        "/v1/chat/completions",
        headers=headers,
        json={"model": "gpt", "messages": [user], "tools": [WEATHER_TOOL]},
    )
    assistant = first.json()["choices"][0]["message"]
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    tool = {"role": "tool", "tool_call_id": "call_0", "content": "rain"}

    # The client resends the whole history: only the tool result is new.
    second = await api.post(
        "/v1/chat/completions",
        headers=headers,
        json={"model": "gpt", "messages": [user, assistant, tool], "tools": [WEATHER_TOOL]},
    )
    assert second.json()["choices"][0]["message"]["content"] == "tool said: rain"
    replayed = [user, assistant, tool]
    assert rich_openai.last_request.json["messages"] == replayed

    # A third turn sends only the new message: the stored history is replayed as it was.
    third = await api.post(
        "/v1/chat/completions",
        headers=headers,
        json={"model": "gpt", "messages": [{"role": "user", "content": "thanks"}]},
    )
    assert third.status_code == 200, third.text
    assert rich_openai.last_request.json["messages"] == [
        *replayed,
        {"role": "assistant", "content": "tool said: rain"},
        {"role": "user", "content": "thanks"},
    ]

    stored = (await api.get("/sessions/tools-1")).json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant", "user",
                                           "assistant"]  # fmt: skip
    assert stored[0]["content"] == "Paris" and stored[0]["structured"] == {"parts": user["content"]}
    assert stored[1]["structured"] == {
        "tool_calls": [{"id": "call_0", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
    }
    assert stored[2]["structured"] == {"tool_call_id": "call_0"}
    assert stored[3]["structured"] is None


async def test_streamed_tool_calls_are_stored_whole(api, rich_openai):
    await add_openai(api, rich_openai)
    body = {
        "model": "gpt",
        "messages": [{"role": "user", "content": "a rather long city name"}],
        "tools": [WEATHER_TOOL],
        "stream": True,
    }
    response = await api.post("/v1/chat/completions", headers={"X-Session-Id": "s2"}, json=body)
    assert response.status_code == 200
    stored = (await api.get("/sessions/s2")).json()["messages"]
    assert stored[1]["role"] == "assistant" and stored[1]["content"] == ""
    assert stored[1]["structured"]["tool_calls"] == [
        {"id": "call_0", "name": "get_weather", "arguments": '{"city": "a rather long city name"}'}
    ]
