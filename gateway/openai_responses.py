"""POST /v1/responses: the Responses API served over the chat path, for every endpoint type.

A request is translated into a ``ChatInput`` (``input`` items into messages, ``instructions``
into a system message, function tools into chat tools, ``text.format`` into a response
format), answered by ``rt.chat`` / ``rt.open_stream`` like a chat completion, and the answer
is given back as a Response object or its event stream (gateway/openai_response_events.py).

``previous_response_id`` maps onto stored sessions: a stored response's id names its session
and how many messages the session held after it (``resp_{session}_{length}``). Continuing from
the latest response appends to the session; continuing from an earlier one forks a new session
holding the conversation up to that response. ``store: false`` answers without a session.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from gateway.errors import json_response
from gateway.openai_compat import SSE_HEADERS, bad_request, check_extra
from gateway.openai_messages import BadRequest, parse_message, request_object
from gateway.openai_response_events import ResponseEvents, response_object
from providers.base import Message
from runtime.chat import ChatInput
from runtime.core import Runtime

router = APIRouter(prefix="/v1", tags=["openai"])

RESPONSE_ID = re.compile(r"^resp_([0-9a-f]{24})_(\d+)$")
# Fields accepted beside the ones translated below; anything else is refused by name.
ECHOED = frozenset({"metadata", "store", "stream", "stream_options", "include", "truncation"})
PASSED = {"top_p": "top_p", "user": "user", "service_tier": "service_tier",
          "parallel_tool_calls": "parallel_tool_calls", "safety_identifier": "safety_identifier",
          "prompt_cache_key": "prompt_cache_key"}  # fmt: skip
TRANSLATED = frozenset(
    {"model", "input", "instructions", "previous_response_id", "tools", "tool_choice",
     "max_output_tokens", "temperature", "text", "reasoning"}
)  # fmt: skip


def session_of(conversation: str) -> str:
    return f"resp-{conversation}"


@router.post("/responses")
async def create_response(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    try:
        body = _body(await request.body())
        inp, conversation, base = await _chat_input(rt, body)
    except BadRequest as exc:
        return bad_request(exc)
    candidates = await rt.route(body["model"])
    created = time.time()
    if not body.get("stream"):
        result = await rt.chat(candidates, inp)
        response_id = f"resp_{conversation}_{result.session_length or 0}"
        return json_response(200, response_object(response_id, body, created, result))
    stream = await rt.open_stream(candidates, inp)
    # The id is announced before the turn is stored: its length is the stored one plus this
    # turn's messages and the answer (previous_response_id means the input is all new).
    turn = sum(1 for m in inp.messages if m.role != "system") + 1
    response_id = f"resp_{conversation}_{base + turn if inp.session_id else 0}"
    events = ResponseEvents(body, created, response_id)
    return StreamingResponse(
        events.stream(stream), media_type="text/event-stream", headers=SSE_HEADERS
    )


def _body(raw: bytes) -> dict[str, Any]:
    body = request_object(raw)
    for name, value in body.items():
        if value is not None and name not in TRANSLATED and name not in PASSED:
            if name not in ECHOED:
                raise BadRequest(f"`{name}` is not supported by /v1/responses here", name)
    if body.get("include"):
        raise BadRequest("`include` is not supported by /v1/responses here", "include")
    return body


async def _chat_input(rt: Runtime, body: dict[str, Any]) -> tuple[ChatInput, str, int]:
    features: dict[str, str] = {}
    messages = input_messages(body.get("input"), features)
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise BadRequest("instructions must be a string", "instructions")
        messages.insert(0, Message("system", instructions))
    extra = {PASSED[k]: v for k, v in body.items() if k in PASSED and v is not None}
    _translate_fields(body, extra)
    check_extra(extra)
    session_id, conversation, base = await _session(rt, body)
    inp = ChatInput(
        messages=messages,
        temperature=_float(body, "temperature", 0, 2),
        max_tokens=_int(body, "max_output_tokens"),
        session_id=session_id,
        extra=extra,
        features=features or None,
    )
    return inp, conversation, base


async def _session(rt: Runtime, body: dict[str, Any]) -> tuple[str | None, str, int]:
    """(session id or None, the conversation key the new response id is built on, how many
    messages the session holds before this turn)."""
    previous = body.get("previous_response_id")
    store = body.get("store") is not False
    if previous is None:
        conversation = uuid.uuid4().hex[:24]
        return (session_of(conversation) if store else None), conversation, 0
    match = RESPONSE_ID.match(previous) if isinstance(previous, str) else None
    length = await rt.session_length(session_of(match.group(1))) if match else None
    if match is None or length is None:
        raise BadRequest(
            f"previous response {previous!r} not found (responses made with store: false "
            "cannot be continued)",
            "previous_response_id",
        )
    conversation, upto = match.group(1), int(match.group(2))
    if upto > length:
        raise BadRequest(f"previous response {previous!r} not found", "previous_response_id")
    if upto < length:  # continued from an earlier answer: fork the conversation there
        forked = uuid.uuid4().hex[:24]
        await rt.fork_session(session_of(conversation), upto, session_of(forked))
        conversation = forked
    return session_of(conversation), conversation, upto


# --- input items -> messages ----------------------------------------------------------------


def input_messages(raw: Any, features: dict[str, str]) -> list[Message]:
    if isinstance(raw, str):
        return [Message("user", raw)]
    if not isinstance(raw, list) or not raw:
        raise BadRequest("input must be a string or a non-empty array of items", "input")
    messages: list[Message] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest("each input item must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message_item(item, where, features))
        elif kind == "function_call":
            _function_call(item, where, messages, features)
        elif kind == "function_call_output":
            messages.append(_function_output(item, where, features))
        elif kind != "reasoning":  # our own reasoning items carry nothing to resend
            raise BadRequest(f"input item type {kind!r} is not supported", f"{where}.type")
    return messages


def _message_item(item: dict[str, Any], where: str, features: dict[str, str]) -> Message:
    content = item.get("content")
    if isinstance(content, list):
        content = [_chat_part(part, f"{where}.content[{j}]") for j, part in enumerate(content)]
    chat_item = {"role": item.get("role"), "content": content}
    return parse_message(chat_item, where, features)


def _chat_part(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": part.get("text")}
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal")}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image = {"url": part["image_url"]}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part.get("input_audio")}
    raise BadRequest(f"content part type {kind!r} is not supported here", where)


def _function_call(
    item: dict[str, Any], where: str, messages: list[Message], features: dict[str, str]
) -> None:
    function = {"name": item.get("name"), "arguments": item.get("arguments")}
    call = {"id": item.get("call_id"), "type": "function", "function": function}
    parsed = parse_message(
        {"role": "assistant", "content": None, "tool_calls": [call]}, where, features
    )
    previous = messages[-1] if messages else None
    if previous is not None and previous.role == "assistant":
        # A response's text and its (parallel) calls are one assistant turn.
        previous.tool_calls = [*(previous.tool_calls or []), *(parsed.tool_calls or [])]
    else:
        messages.append(parsed)


def _function_output(item: dict[str, Any], where: str, features: dict[str, str]) -> Message:
    output = item.get("output")
    if isinstance(output, list):
        output = [_chat_part(p, f"{where}.output[{j}]") for j, p in enumerate(output)]
    return parse_message(
        {"role": "tool", "tool_call_id": item.get("call_id"), "content": output}, where, features
    )


# --- fields ---------------------------------------------------------------------------------


def _translate_fields(body: dict[str, Any], extra: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools:
        extra["tools"] = [_chat_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, dict) and choice.get("type") == "function":
            choice = {"type": "function", "function": {"name": choice.get("name")}}
        extra["tool_choice"] = choice
    text = body.get("text")
    text_format = text.get("format") if isinstance(text, dict) else None
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        spec = {k: v for k, v in text_format.items() if k != "type"}
        extra["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif isinstance(text_format, dict):
        extra["response_format"] = {"type": text_format.get("type")}
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    if effort is not None:
        extra["reasoning_effort"] = effort


def _chat_tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise BadRequest(f"tool type {kind!r} is not supported (function tools only)", where)
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if k in tool}
    return {"type": "function", "function": function}


def _float(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(f"{name} must be a number between {low:g} and {high:g}", name)
    return float(value)


def _int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{name} must be a positive integer", name)
    return value
