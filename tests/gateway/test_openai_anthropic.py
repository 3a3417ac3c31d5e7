"""/v1/chat/completions on anthropic_api: tools, tool results, images, stop sequences and JSON
output translated both ways, in JSON answers and in streams. SQLite only (no store part)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gateway.openai_helpers import (
    PNG,
    PNG_URL,
    TIME_TOOL,
    WEATHER_TOOL,
    add_anthropic,
    chat,
    sse_data,
)
from tests.gateway.test_openai_tools import HISTORY


@pytest.fixture
def database_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'aiem.db'}"


async def test_history_tools_and_fields_are_translated_by_value(api, rich_anthropic):
    await add_anthropic(api, rich_anthropic)
    body = {
        "model": "claude",
        "messages": HISTORY,
        "tools": [WEATHER_TOOL, TIME_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stop": "END",
        "top_p": 0.4,
        "user": "u-1",
        "max_tokens": 77,
    }
    response = await api.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    sent = rich_anthropic.last_request.json
    assert sent["system"] == "Be brief."
    assert sent["max_tokens"] == 77
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_a", "name": "get_weather",
                 "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "sunny, 21 C"}
            ],
        },
    ]  # fmt: skip
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        },
        {"name": "get_time", "input_schema": TIME_TOOL["function"]["parameters"]},
    ]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert sent["stop_sequences"] == ["END"]
    assert sent["top_p"] == 0.4 and sent["metadata"] == {"user_id": "u-1"}
    assert response.json()["choices"][0]["message"]["content"] == "tool said: sunny, 21 C"


async def test_a_named_tool_choice_and_tool_use_come_back_as_tool_calls(api, rich_anthropic):
    await add_anthropic(api, rich_anthropic)
    forced = {"type": "function", "function": {"name": "get_time"}}
    body = chat("claude", "Oslo", tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=forced)
    response = await api.post("/v1/chat/completions", json=body)
    assert rich_anthropic.last_request.json["tool_choice"] == {"type": "tool", "name": "get_time"}
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_0",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"zone":"Oslo"}'},
        }
    ]


async def test_input_json_deltas_stream_as_openai_tool_call_chunks(api, rich_anthropic):
    await add_anthropic(api, rich_anthropic)
    body = chat("claude", "Rome", tools=[WEATHER_TOOL, TIME_TOOL], stream=True)
    chunks = sse_data((await api.post("/v1/chat/completions", json=body)).text)
    assert chunks[-1] == "[DONE]"
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks[:-1]]

    def call(index: int, name: str, arguments: str) -> list:
        opener = {"index": index, "id": f"toolu_{index}", "type": "function",
                  "function": {"name": name, "arguments": ""}}  # fmt: skip
        return [({"tool_calls": [opener]}, None)] + [
            ({"tool_calls": [{"index": index, "function": {"arguments": arguments[i : i + 6]}}]},
             None)
            for i in range(0, len(arguments), 6)
        ]  # fmt: skip

    assert deltas == [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "Let "}, None),
        ({"content": "me "}, None),
        ({"content": "check."}, None),
        *call(0, "get_weather", '{"city": "Rome"}'),
        *call(1, "get_time", '{"zone": "Rome"}'),
        ({}, "tool_calls"),
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_json_output_is_a_forced_tool_whose_input_is_the_answer(api, rich_anthropic, stream):
    await add_anthropic(api, rich_anthropic)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    body = chat("claude", "Lima", response_format=response_format, stream=stream)
    response = await api.post("/v1/chat/completions", json=body)
    sent = rich_anthropic.last_request.json
    assert sent["tools"] == [
        {"name": "json_answer", "description": "Answer with place JSON.", "input_schema": schema}
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "json_answer"}
    if stream:
        chunks = [c for c in sse_data(response.text) if c != "[DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        finish = chunks[-1]["choices"][0]["finish_reason"]
        assert not any("tool_calls" in c["choices"][0]["delta"] for c in chunks)
    else:
        choice = response.json()["choices"][0]
        text, finish = choice["message"]["content"], choice["finish_reason"]
        assert "tool_calls" not in choice["message"]
    # Streaming forwards the upstream's JSON text as is; a JSON answer is re-serialised.
    assert json.loads(text) == {"city": "Lima"} and finish == "stop"

    json_object = await api.post(
        "/v1/chat/completions", json=chat("claude", "x", response_format={"type": "json_object"})
    )
    assert rich_anthropic.last_request.json["tools"][0]["input_schema"] == {"type": "object"}
    assert json.loads(json_object.json()["choices"][0]["message"]["content"]) == {}


async def test_images_become_image_blocks(api, rich_anthropic):
    await add_anthropic(api, rich_anthropic)
    parts = [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": PNG_URL}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    response = await api.post("/v1/chat/completions", json=chat("claude", parts))
    assert rich_anthropic.last_request.json["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
    ]
    assert response.json()["choices"][0]["message"]["content"] == (
        "turn 1: compare [image: image/png 70 bytes] [image: https://example.com/a.png]"
    )


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"logprobs": True}, "logprobs"),
        ({"n": 3}, "n"),
        ({"seed": 3}, "seed"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"functions": [{"name": "f"}]}, "functions"),
        (
            {"messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
            "messages[0].content[0]",
        ),
    ],
)  # fmt: skip
async def test_fields_anthropic_cannot_honour_are_refused_by_name(
    api, rich_anthropic, extra, param
):
    await add_anthropic(api, rich_anthropic)
    before = len(rich_anthropic.requests)
    response = await api.post("/v1/chat/completions", json={**chat("claude"), **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"].endswith("is not supported by endpoint type anthropic_api")
    assert len(rich_anthropic.requests) == before


async def test_json_output_together_with_tools_is_refused(api, rich_anthropic):
    await add_anthropic(api, rich_anthropic)
    body = chat("claude", tools=[WEATHER_TOOL], response_format={"type": "json_object"})
    response = await api.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format"
    assert error["message"] == (
        "`response_format` together with `tools` is not supported by endpoint type anthropic_api"
    )
    assert not [r for r in rich_anthropic.requests if r.path == "/v1/messages"]
