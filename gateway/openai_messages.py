"""The OpenAI message union in and out: request messages, tools, answers and stream deltas.

Parsing is hand-written (no model per request): a plain ``{"role", "content": str}`` message
takes one dict lookup more than before. Each message feature a provider may lack (image or
audio parts, a tool-call history) is noted with the first place it occurs, so a refusal can
name it.
"""

from __future__ import annotations

from typing import Any

import orjson

from providers.base import Message, ToolCall, ToolCallDelta

ROLES = frozenset({"system", "user", "assistant", "developer", "tool"})
_TEXT_ROLES = frozenset({"system", "developer"})
USER_PART_FEATURES = {"image_url": "vision", "input_audio": "audio"}
AUDIO_FORMATS = frozenset({"wav", "mp3"})

Features = dict[str, str]


class BadRequest(Exception):
    """A request the OpenAI API itself would refuse; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def request_object(raw: bytes) -> dict[str, Any]:
    """A /v1 request body: a JSON object naming a ``model``, else the OpenAI-shaped 400."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequest("model is required", "model")
    return body


# --- messages in ----------------------------------------------------------------------------


def parse_messages(raw: Any, features: Features) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty array", "messages")
    messages = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadRequest("each message must be an object", f"messages[{i}]")
        role = item.get("role")
        content = item.get("content")
        if len(item) == 2 and type(content) is str and role in ROLES and role != "tool":
            messages.append(Message("system" if role == "developer" else role, content))
        else:
            messages.append(parse_message(item, f"messages[{i}]", features))
        if "\x00" in messages[-1].content:
            # Refused before the upstream is called: PostgreSQL could not store the turn after.
            raise BadRequest("NUL characters are not allowed", f"messages[{i}].content")
    return messages


def parse_message(item: dict[str, Any], where: str, features: Features) -> Message:
    role = item.get("role")
    if role not in ROLES:
        hint = " (use role 'tool')" if role == "function" else ""
        raise BadRequest(f"unsupported role {role!r}{hint}", f"{where}.role")
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise BadRequest("name must be a string", f"{where}.name")
    if role == "assistant":
        message = _assistant(item, where, features)
    elif role == "tool":
        message = _tool(item, where, features)
    else:
        text, parts = _content(item.get("content"), f"{where}.content", role, features)
        message = Message("system" if role in _TEXT_ROLES else "user", text, parts=parts)
    message.name = name
    return message


def _content(
    content: Any, where: str, role: str, features: Features
) -> tuple[str, list[dict[str, Any]] | None]:
    """(text, parts): ``parts`` only when a part is not text."""
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise BadRequest("content must be a string or an array of content parts", where)
    texts: list[str] = []
    rich = False
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif role == "user" and kind in USER_PART_FEATURES:
            _check_part(part, kind, f"{where}[{j}]")
            features.setdefault(USER_PART_FEATURES[kind], f"{where}[{j}]")
            rich = True
        elif role == "assistant" and kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            allowed = "text, image_url, input_audio" if role == "user" else "text"
            raise BadRequest(
                f"content part type {kind!r} is not supported in a {role} message "
                f"(supported: {allowed})",
                f"{where}[{j}]",
            )
    return "".join(texts), ([dict(p) for p in content] if rich else None)


def _check_part(part: dict[str, Any], kind: str, where: str) -> None:
    body = part.get(kind)
    if kind == "image_url":
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:")):
            raise BadRequest("image_url.url must be an http(s) URL or a data: URL", where)
    elif not (
        isinstance(body, dict)
        and isinstance(body.get("data"), str)
        and body.get("format") in AUDIO_FORMATS
    ):
        raise BadRequest("input_audio needs base64 data and a format of wav or mp3", where)


def _assistant(item: dict[str, Any], where: str, features: Features) -> Message:
    content = item.get("content")
    text = "" if content is None else _content(content, f"{where}.content", "assistant", {})[0]
    calls = item.get("tool_calls")
    if calls is None or calls == []:
        if content is None:
            raise BadRequest("an assistant message needs content or tool_calls", where)
        return Message("assistant", text)
    if not isinstance(calls, list):
        raise BadRequest("tool_calls must be an array", f"{where}.tool_calls")
    features.setdefault("tools", f"{where}.tool_calls")
    return Message(
        "assistant",
        text,
        tool_calls=[_tool_call(c, f"{where}.tool_calls[{k}]") for k, c in enumerate(calls)],
    )


def _tool_call(call: Any, where: str) -> ToolCall:
    function = call.get("function") if isinstance(call, dict) else None
    if not (
        isinstance(function, dict)
        and isinstance(call.get("id"), str)
        and isinstance(function.get("name"), str)
        and isinstance(function.get("arguments"), str)
    ):
        raise BadRequest(
            "a tool call needs an id and a function with a name and arguments (a JSON string)",
            where,
        )
    return ToolCall(call["id"], function["name"], function["arguments"])


def _tool(item: dict[str, Any], where: str, features: Features) -> Message:
    call_id = item.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest("a tool message needs tool_call_id", f"{where}.tool_call_id")
    text, _ = _content(item.get("content"), f"{where}.content", "tool", {})
    features.setdefault("tools", where)
    return Message("tool", text, tool_call_id=call_id)


# --- tools in -------------------------------------------------------------------------------


def check_tools(tools: Any) -> None:
    """``tools`` as the Chat Completions API documents it: function tools with names."""
    if not isinstance(tools, list):
        raise BadRequest("tools must be an array", "tools")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not (
            tool.get("type") == "function"
            and isinstance(function, dict)
            and isinstance(function.get("name"), str)
            and function["name"]
        ):
            raise BadRequest(
                "each tool must be {type: 'function', function: {name, parameters?}}",
                f"tools[{i}]",
            )
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise BadRequest("parameters must be a JSON Schema object", f"tools[{i}]")


# --- answers out ----------------------------------------------------------------------------


def tool_calls_json(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in calls
    ]


def answer_message(
    content: str, tool_calls: list[ToolCall] | None, reasoning: str | None = None
) -> dict[str, Any]:
    """The ``message`` of a chat completion choice; content is null when only tools answer."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls_json(tool_calls)
        if not content:
            message["content"] = None
    if reasoning:
        message["reasoning_content"] = reasoning
    return message


def tool_call_deltas(deltas: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """Stream deltas exactly as OpenAI sends them: the opener of a call carries its id, type
    and name with empty arguments; the rest carry only ``index`` and argument fragments."""
    out = []
    for delta in deltas:
        if delta.id is not None:
            out.append(
                {
                    "index": delta.index,
                    "id": delta.id,
                    "type": "function",
                    "function": {"name": delta.name or "", "arguments": delta.arguments},
                }
            )
        else:
            out.append({"index": delta.index, "function": {"arguments": delta.arguments}})
    return out
