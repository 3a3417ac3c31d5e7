"""/v1/chat/completions beyond plain text on openai_api (passed as is) and the named 400s of
endpoint types that cannot honour a field. The store plays no part here: SQLite only."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.gateway.openai_helpers import (
    PNG_URL,
    TIME_TOOL,
    WEATHER_TOOL,
    add,
    add_openai,
    add_rest,
    chat,
    sse_data,
)


@pytest.fixture
def database_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'aiem.db'}"


HISTORY = [
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": "weather in Paris?", "name": "ann"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_a", "content": "sunny, 21 C"},
]


async def test_tools_history_and_every_parameter_reach_the_upstream_by_value(api, rich_openai):
    await add_openai(api, rich_openai)
    sent = {
        "tools": [WEATHER_TOOL, TIME_TOOL],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "stop": ["END"],
        "top_p": 0.5,
        "seed": 9,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "logit_bias": {"42": 3},
        "user": "u-1",
        "reasoning_effort": "high",
        "metadata": {"team": "a"},
        "store": True,
        "service_tier": "default",
        "prediction": {"type": "content", "content": "sunny"},
        "modalities": ["text"],
    }
    body = {"model": "gpt", "messages": HISTORY, "max_completion_tokens": 50, **sent}
    response = await api.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "tool said: sunny, 21 C"
    received = rich_openai.last_request.json
    for key, value in sent.items():
        assert received[key] == value, key
    assert received["max_tokens"] == 50 and received["model"] == "gpt-upstream-model"
    assert received["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather in Paris?", "name": "ann"},
        HISTORY[2],
        HISTORY[3],
    ]


async def test_image_and_audio_parts_pass_as_sent(api, rich_openai):
    await add_openai(api, rich_openai)
    audio = base64.b64encode(b"RIFF").decode()
    parts = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
    ]
    response = await api.post("/v1/chat/completions", json=chat("gpt", parts))
    assert response.status_code == 200, response.text
    assert rich_openai.last_request.json["messages"] == [{"role": "user", "content": parts}]
    assert response.json()["choices"][0]["message"]["content"] == (
        "turn 1: what is this? [image: image/png 70 bytes] "
        "[image: https://example.com/cat.jpg] [audio: wav 4 bytes]"
    )


async def test_tool_calls_come_back_in_the_json_answer(api, rich_openai):
    await add_openai(api, rich_openai)
    body = chat("gpt", "Oslo", tools=[WEATHER_TOOL, TIME_TOOL], parallel_tool_calls=False)
    response = await api.post("/v1/chat/completions", json=body)
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    }


async def test_streamed_tool_calls_follow_the_openai_chunk_sequence(api, rich_openai):
    await add_openai(api, rich_openai)
    body = chat("gpt", "Rome", tools=[WEATHER_TOOL, TIME_TOOL], stream=True)
    response = await api.post("/v1/chat/completions", json=body)
    chunks = sse_data(response.text)
    assert chunks[-1] == "[DONE]"
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks[:-1]]
    weather, zone = '{"city": "Rome"}', '{"zone": "Rome"}'

    def fragments(index: int, text: str) -> list:
        return [
            ({"tool_calls": [{"index": index, "function": {"arguments": text[i : i + 8]}}]}, None)
            for i in range(0, len(text), 8)
        ]

    def opener(index: int, name: str) -> tuple:
        call = {"index": index, "id": f"call_{index}", "type": "function",
                "function": {"name": name, "arguments": ""}}  # fmt: skip
        return {"tool_calls": [call]}, None

    assert deltas == [
        ({"role": "assistant", "content": ""}, None),
        opener(0, "get_weather"),
        *fragments(0, weather),
        opener(1, "get_time"),
        *fragments(1, zone),
        ({}, "tool_calls"),
    ]
    assert {c["id"] for c in chunks[:-1]} == {chunks[0]["id"]}


async def test_n_choices_and_logprobs(api, rich_openai):
    await add_openai(api, rich_openai)
    response = await api.post(
        "/v1/chat/completions", json=chat("gpt", "hi", n=2, logprobs=True, top_logprobs=2)
    )
    choices = response.json()["choices"]
    assert [c["message"]["content"] for c in choices] == ["turn 1: hi", "turn 1: hi (choice 1)"]
    assert [c["index"] for c in choices] == [0, 1]
    assert [t["token"] for t in choices[0]["logprobs"]["content"]] == ["turn ", "1: ", "hi"]
    assert choices[1]["logprobs"]["content"][2]["logprob"] == -1.0
    assert rich_openai.last_request.json["top_logprobs"] == 2

    streamed = await api.post(
        "/v1/chat/completions", json=chat("gpt", "yo", n=2, logprobs=True, stream=True)
    )
    chunks = [c for c in sse_data(streamed.text) if c != "[DONE]"]
    by_index: dict[int, str] = {0: "", 1: ""}
    finishes = {}
    for c in chunks:
        for choice in c["choices"]:
            by_index[choice["index"]] += choice["delta"].get("content") or ""
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    assert by_index == {0: "turn 1: yo", 1: "turn 1: yo (choice 1)"}
    assert finishes == {0: "stop", 1: "stop"}
    with_logprobs = [c for c in chunks if c["choices"] and c["choices"][0].get("logprobs")]
    assert with_logprobs[0]["choices"][0]["logprobs"]["content"][0]["token"] == "turn "


async def test_json_response_format_passes_and_the_answer_is_the_json(api, rich_openai):
    await add_openai(api, rich_openai)
    properties = {"city": {"type": "string"}, "n": {"type": "integer"}}
    schema = {"type": "object", "properties": properties}
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": schema, "strict": True},
    }
    response = await api.post(
        "/v1/chat/completions", json=chat("gpt", "Lima", response_format=response_format)
    )
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {
        "city": "Lima",
        "n": 7,
    }
    assert rich_openai.last_request.json["response_format"] == response_format
    plain = await api.post(
        "/v1/chat/completions", json=chat("gpt", "x", response_format={"type": "text"})
    )
    assert plain.status_code == 200 and "response_format" not in rich_openai.last_request.json


UNSUPPORTED_ON_REST = [
    ({"tools": [WEATHER_TOOL]}, "tools", "`tools`"),
    ({"tool_choice": "auto"}, "tool_choice", "`tool_choice`"),
    ({"n": 2}, "n", "`n`"),
    ({"logprobs": True}, "logprobs", "`logprobs`"),
    ({"response_format": {"type": "json_object"}}, "response_format", "`response_format`"),
    ({"stop": "x"}, "stop", "`stop`"),
    ({"seed": 1}, "seed", "`seed`"),
    ({"user": "u"}, "user", "`user`"),
    (
        {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": PNG_URL}}]}]},
        "messages[0].content[0]",
        "`image_url` content",
    ),
    (
        {"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}}]}]},
        "messages[0].content[0]",
        "`input_audio` content",
    ),
    ({"messages": HISTORY}, "messages[2].tool_calls", "a tool-call history"),
]  # fmt: skip


@pytest.mark.parametrize("extra,param,label", UNSUPPORTED_ON_REST)
async def test_text_only_endpoints_refuse_by_name(api, rest_upstream, extra, param, label):
    await add_rest(api, rest_upstream)
    before = len(rest_upstream.requests)
    for stream in (False, True):
        response = await api.post("/v1/chat/completions", json={**chat("plain"), **extra,
                                                                 "stream": stream})  # fmt: skip
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param
        assert error["message"].startswith(label)
        assert error["message"].endswith("is not supported by endpoint type rest_api")
        assert error["type"] == "invalid_request_error"
    assert len(rest_upstream.requests) == before


@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "assistant", "content": None}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
         "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}, "messages[0].content[0]"),
        ({"tools": [{"type": "function"}]}, "tools[0]"),
        ({"n": 0}, "n"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]}]},
         "messages[0].tool_calls[0]"),
    ],
)  # fmt: skip
async def test_malformed_fields_get_a_400_naming_them(api, rich_openai, body, param):
    await add_openai(api, rich_openai)
    before = len(rich_openai.requests)
    response = await api.post("/v1/chat/completions", json={**chat("gpt"), **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert len(rich_openai.requests) == before


async def test_models_carry_display_name_and_capabilities(api, rich_openai, rest_upstream):
    await add_openai(api, rich_openai)
    await add_rest(api, rest_upstream)
    listed = {m["id"]: m for m in (await api.get("/v1/models")).json()["data"]}
    assert listed["gpt"]["display_name"] == "gpt display"
    assert listed["gpt"]["owned_by"] == "openai_api"
    assert listed["gpt"]["capabilities"]["tools"] is True
    assert listed["gpt"]["capabilities"]["embeddings"] is True
    assert listed["plain"]["capabilities"]["tools"] is False
    assert listed["plain"]["capabilities"]["params"] == []
    one = await api.get("/v1/models/gpt")
    assert one.status_code == 200 and one.json() == listed["gpt"]
    missing = await api.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"].startswith("model 'nope' not found")
    providers = {p["endpoint_type"]: p for p in (await api.get("/providers")).json()}
    assert providers["anthropic_api"]["capabilities"]["vision"] is True
    assert providers["anthropic_api"]["capabilities"]["logprobs"] is False
    assert providers["web_chat"]["capabilities"]["tools"] is False


AGENT_CONFIG = {
    "path": "/api/agent",
    "body_template": {"messages": "{{messages}}", "tools": "{{tools}}"},
    "response_path": "answer",
    "tool_calls_path": "calls",
}


@pytest.mark.parametrize("stream", [False, True])
async def test_rest_api_tools_through_placeholders_and_a_calls_path(api, rich_rest, stream):
    await add(api, "agent", "rest_api", rich_rest.url, config=AGENT_CONFIG)
    capabilities = (await api.get("/endpoints/agent")).json()["capabilities"]
    assert capabilities["tools"] is True and capabilities["tool_choice"] is False
    messages: list = [{"role": "user", "content": "Kyiv"}]
    first = await api.post(
        "/v1/chat/completions",
        json={"model": "agent", "messages": messages, "tools": [WEATHER_TOOL], "stream": stream},
    )
    assert rich_rest.last_request.json == {"messages": messages, "tools": [WEATHER_TOOL]}
    if stream:
        chunks = [c for c in sse_data(first.text) if c != "[DONE]"]
        calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
        assert calls == [
            {
                "index": 0,
                "id": "rest_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Kyiv"}'},
            }
        ]
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{k: v for k, v in calls[0].items() if k != "index"}],
        }
    else:
        choice = first.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        message = choice["message"]
        assert message["tool_calls"][0]["function"]["arguments"] == '{"city":"Kyiv"}'
    tool = {"role": "tool", "tool_call_id": "rest_0", "content": "snow"}
    second = await api.post(
        "/v1/chat/completions",
        json={"model": "agent", "messages": [*messages, message, tool], "tools": [WEATHER_TOOL]},
    )
    assert second.json()["choices"][0]["message"]["content"] == "tool said: snow"
    assert rich_rest.last_request.json["messages"] == [*messages, message, tool]
    # The template has no {{tool_choice}}: asking for one is refused, not dropped.
    refused = await api.post(
        "/v1/chat/completions",
        json={**chat("agent"), "tools": [WEATHER_TOOL], "tool_choice": "required"},
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "tool_choice"


async def test_a_group_routes_each_request_to_a_member_that_can_honour_it(
    api, rich_openai, rest_upstream
):
    await add_rest(api, rest_upstream)
    await add_openai(api, rich_openai)
    for name, priority in (("plain", 1), ("gpt", 2)):
        patched = await api.patch(f"/endpoints/{name}",
                                  json={"group_name": "team", "priority": priority})  # fmt: skip
        assert patched.status_code == 200, patched.text
    await api.post("/endpoints/plain/start")
    await api.post("/endpoints/gpt/start")
    image = [{"type": "image_url", "image_url": {"url": PNG_URL}}]
    for body, answered_by in [
        (chat("team", "hi"), "plain"),
        (chat("team", "hi", tools=[WEATHER_TOOL]), "gpt"),
        (chat("team", image), "gpt"),
    ]:
        response = await api.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        assert response.headers["x-aiem-endpoint"] == answered_by
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    await api.post("/endpoints/gpt/stop")
    refused = await api.post("/v1/chat/completions", json=chat("team", [audio]))
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "`input_audio` content is not supported by endpoint type rest_api"
    )
