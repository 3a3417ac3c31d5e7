"""/v1/responses through the official client: text, instructions, previous_response_id on
stored sessions (continued and forked), function tools, JSON formats and the event stream.
On SQLite and PostgreSQL: the conversation state lives in the store."""

from __future__ import annotations

import json

import pytest
from openai import AsyncOpenAI, BadRequestError

from tests.gateway.openai_helpers import FUNCTION_TOOL, add_openai


@pytest.fixture
async def client(api) -> AsyncOpenAI:
    return AsyncOpenAI(base_url="http://127.0.0.1/v1", api_key="unused", http_client=api)


def sent_messages(upstream) -> list:
    return upstream.last_request.json["messages"]


async def test_previous_response_id_continues_and_forks_a_stored_conversation(
    api, client, rich_openai
):
    await add_openai(api, rich_openai)
    first = await client.responses.create(model="gpt", input="hello", instructions="Be brief.")
    assert first.output_text == "turn 1: hello" and first.status == "completed"
    assert first.usage.input_tokens == 3 and first.usage.output_tokens == 3
    assert sent_messages(rich_openai) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    second = await client.responses.create(
        model="gpt", input="again", previous_response_id=first.id
    )
    assert second.output_text == "turn 2: again"
    assert second.previous_response_id == first.id
    history = [{"role": "user", "content": "hello"},
               {"role": "assistant", "content": "turn 1: hello"}]  # fmt: skip
    assert sent_messages(rich_openai) == [*history, {"role": "user", "content": "again"}]

    # From the first answer again: a fork that does not see "again".
    forked = await client.responses.create(
        model="gpt", input="other", previous_response_id=first.id
    )
    assert sent_messages(rich_openai) == [*history, {"role": "user", "content": "other"}]
    later = await client.responses.create(model="gpt", input="more", previous_response_id=second.id)
    assert later.output_text == "turn 3: more"
    assert forked.id != second.id

    unstored = await client.responses.create(model="gpt", input="x", store=False)
    with pytest.raises(BadRequestError) as refused:
        await client.responses.create(model="gpt", input="y", previous_response_id=unstored.id)
    assert refused.value.body["param"] == "previous_response_id"


async def test_a_function_tool_loop_over_responses(api, client, rich_openai):
    await add_openai(api, rich_openai)
    first = await client.responses.create(model="gpt", input="Lisbon", tools=[FUNCTION_TOOL])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Lisbon"}
    assert rich_openai.last_request.json["tools"] == [
        {
            "type": "function",
            "function": {k: FUNCTION_TOOL[k] for k in ("name", "description", "parameters")},
        }
    ]
    second = await client.responses.create(
        model="gpt",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "windy"}],
        tools=[FUNCTION_TOOL],
    )
    assert second.output_text == "tool said: windy"
    assert sent_messages(rich_openai)[1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call.call_id, "type": "function",
                 "function": {"name": "get_weather", "arguments": call.arguments}},
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "windy"},
    ]  # fmt: skip


async def test_the_event_stream_of_text_and_of_function_calls(api, client, rich_openai):
    await add_openai(api, rich_openai)
    async with client.responses.stream(model="gpt", input="stream me") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert final.output_text == "turn 1: stream me"
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    continued = await client.responses.create(
        model="gpt", input="next", previous_response_id=final.id
    )
    assert continued.output_text == "turn 2: next"

    events = await client.responses.create(
        model="gpt", input="Oslo", tools=[FUNCTION_TOOL], stream=True
    )
    seen = [event async for event in events]
    kinds = [e.type for e in seen]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = "".join(e.delta for e in seen if e.type == "response.function_call_arguments.delta")
    assert json.loads(deltas) == {"city": "Oslo"}
    assert seen[-1].response.output[0].arguments == deltas
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
