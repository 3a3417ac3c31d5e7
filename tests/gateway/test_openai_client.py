"""The official ``openai`` client's typed helpers end to end against the in-process API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError
from pydantic import BaseModel

from tests.gateway.openai_helpers import (
    FUNCTION_TOOL,
    PNG_URL,
    WEATHER_TOOL,
    add_anthropic,
    add_openai,
    add_rest,
)


@pytest.fixture
def database_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'aiem.db'}"


@pytest.fixture
async def client(api) -> AsyncOpenAI:
    return AsyncOpenAI(base_url="http://127.0.0.1/v1", api_key="unused", http_client=api)


class Place(BaseModel):
    city: str
    population: int
    capital: bool


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_parse_with_a_pydantic_model(api, client, rich_openai, rich_anthropic, kind):
    if kind == "openai":
        await add_openai(api, rich_openai, "m")
    else:
        await add_anthropic(api, rich_anthropic, "m")
    completion = await client.chat.completions.parse(
        model="m", messages=[{"role": "user", "content": "Lima"}], response_format=Place
    )
    assert completion.choices[0].message.parsed == Place(city="Lima", population=7, capital=True)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_two_step_tool_loop(api, client, rich_openai, rich_anthropic, kind):
    if kind == "openai":
        await add_openai(api, rich_openai, "m")
    else:
        await add_anthropic(api, rich_anthropic, "m")
    messages: list = [{"role": "user", "content": "Quito"}]
    first = await client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Quito"}
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "cloudy"})
    second = await client.chat.completions.create(
        model="m", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].message.content == "tool said: cloudy"
    assert second.choices[0].finish_reason == "stop"


async def test_streamed_tool_calls_through_the_client(api, client, rich_openai):
    await add_openai(api, rich_openai)
    stream = await client.chat.completions.create(
        model="gpt",
        messages=[{"role": "user", "content": "Bern"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    arguments, names, finish = "", [], None
    async for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or ():
            arguments += call.function.arguments or ""
            if call.function.name:
                names.append(call.function.name)
        finish = chunk.choices[0].finish_reason or finish
    assert (names, json.loads(arguments), finish) == (
        ["get_weather"],
        {"city": "Bern"},
        "tool_calls",
    )


async def test_an_image_message(api, client, rich_openai):
    await add_openai(api, rich_openai)
    completion = await client.chat.completions.create(
        model="gpt",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is it?"},
                    {"type": "image_url", "image_url": {"url": PNG_URL}},
                ],
            }
        ],
    )
    assert (
        completion.choices[0].message.content == "turn 1: what is it? [image: image/png 70 bytes]"
    )


async def test_models_retrieve_and_list(api, client, rich_openai):
    await add_openai(api, rich_openai)
    model = await client.models.retrieve("gpt")
    assert model.id == "gpt" and model.owned_by == "openai_api"
    assert model.model_extra["display_name"] == "gpt display"
    assert model.model_extra["capabilities"]["tools"] is True
    assert [m.id async for m in client.models.list()] == ["gpt"]
    with pytest.raises(NotFoundError):
        await client.models.retrieve("nope")


async def test_embeddings_pass_through(api, client, rich_openai, rest_upstream):
    await add_openai(api, rich_openai)
    result = await client.embeddings.create(model="gpt", input=["abc", "hello"], dimensions=4)
    assert [d.embedding for d in result.data] == [[3.0, 0.5, 0.5, 0.5], [5.0, 0.5, 0.5, 0.5]]
    assert result.model == "gpt" and result.usage.prompt_tokens == 2
    sent = rich_openai.last_request
    assert sent.path == "/v1/embeddings"
    assert sent.json == {
        "model": "gpt-upstream-model",
        "input": ["abc", "hello"],
        "dimensions": 4,
        "encoding_format": "base64",  # the client's default; it decodes the answer itself
    }
    await add_rest(api, rest_upstream)
    with pytest.raises(BadRequestError) as refused:
        await client.embeddings.create(model="plain", input="x")
    message = refused.value.body["message"]
    assert message == "embeddings (/v1/embeddings) are not supported by endpoint type rest_api"


async def test_legacy_completions_pass_through(api, client, rich_openai, rest_upstream):
    await add_openai(api, rich_openai)
    result = await client.completions.create(model="gpt", prompt="once upon", max_tokens=5)
    assert result.choices[0].text == "completed: once upon"
    assert rich_openai.last_request.json == {
        "model": "gpt-upstream-model",
        "prompt": "once upon",
        "max_tokens": 5,
    }
    stream = await client.completions.create(model="gpt", prompt="a b", stream=True)
    texts = [c.choices[0].text async for c in stream if c.choices]
    assert "".join(texts) == "completed: a b"
    await add_rest(api, rest_upstream)
    with pytest.raises(BadRequestError) as refused:
        await client.completions.create(model="plain", prompt="x")
    assert refused.value.body["param"] == "model"


# --- /v1/responses without stored state (the stored kind: test_openai_responses.py) --------


async def test_stateless_input_items_with_images_and_calls(api, client, rich_anthropic):
    await add_anthropic(api, rich_anthropic)
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                     {"type": "input_image", "image_url": PNG_URL}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "hot"},
    ]  # fmt: skip
    result = await client.responses.create(model="claude", input=items, store=False)
    assert result.output_text == "tool said: hot"
    messages = rich_anthropic.last_request.json["messages"]
    assert messages[0]["content"][1]["source"]["media_type"] == "image/png"
    assert messages[1]["content"] == [
        {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {}}
    ]
    assert messages[2]["content"][0]["type"] == "tool_result"


async def test_parse_with_a_text_format(api, client, rich_anthropic):
    await add_anthropic(api, rich_anthropic)
    parsed = await client.responses.parse(model="claude", input="Quito", text_format=Place)
    assert parsed.output_parsed == Place(city="Quito", population=7, capital=True)
    assert rich_anthropic.last_request.json["tool_choice"] == {
        "type": "tool",
        "name": "json_answer",
    }


@pytest.mark.parametrize(
    "extra,param,message",
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0]", "tool type 'web_search'"),
        ({"background": True}, "background", "`background` is not supported"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type", "item_reference"),
    ],
)
async def test_unsupported_responses_fields_are_named(api, rich_openai, extra, param, message):
    await add_openai(api, rich_openai)
    response = await api.post("/v1/responses", json={"model": "gpt", "input": "x", **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert message in response.json()["error"]["message"]


async def test_tools_on_a_text_only_endpoint_are_refused(api, client, rest_upstream):
    await add_rest(api, rest_upstream)
    with pytest.raises(BadRequestError) as refused:
        await client.responses.create(model="plain", input="x", tools=[FUNCTION_TOOL])
    assert refused.value.body["message"] == "`tools` is not supported by endpoint type rest_api"
    plain = await client.responses.create(model="plain", input="just text")
    assert plain.output_text == "turn 1: just text"


async def test_a_broken_upstream_stream_ends_in_response_failed(api, client, rich_openai):
    await add_openai(api, rich_openai)
    rich_openai.stream_break_next(after_chunks=2)
    events = await client.responses.create(model="gpt", input="one two three", stream=True)
    seen = [event async for event in events]
    assert [e.type for e in seen][:3] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ]
    assert seen[-1].type == "response.failed"
    assert seen[-1].response.status == "failed"
    assert seen[-1].response.error.code == "unavailable"
    assert "response.completed" not in [e.type for e in seen]
