"""OpenAI Chat Completions -> Anthropic Messages, for the fields that need translating.

- messages: system ones go top-level; image parts become ``image`` blocks (base64 from a data
  URL, else a URL source); an assistant's ``tool_calls`` become ``tool_use`` blocks; ``tool``
  messages become ``tool_result`` blocks in a user turn. Consecutive turns of one role are
  merged, as the Messages API wants alternating roles.
- tools / tool_choice / parallel_tool_calls -> tools with ``input_schema`` and a tool_choice
  (``required`` is ``any``; no parallel calls is ``disable_parallel_tool_use``).
- stop -> stop_sequences, top_p as is, user -> metadata.user_id.
- response_format json_object / json_schema -> one forced tool whose input schema is the
  wanted schema; its input is the answer's JSON text (``JSON_TOOL``).
"""

from __future__ import annotations

from typing import Any

import orjson

from providers.base import Message
from providers.capabilities import Capabilities
from providers.errors import InvalidRequest

JSON_TOOL = "json_answer"
_ANY_OBJECT: dict[str, Any] = {"type": "object"}

CAPABILITIES = Capabilities(
    tools=True,
    tool_choice=True,
    parallel_tool_calls=True,
    vision=True,
    json_object=True,
    json_schema=True,  # as a forced tool, hence not together with tools
    params=frozenset({"stop", "top_p", "user"}),
)


# --- messages -------------------------------------------------------------------------------


def anthropic_messages(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        content: Any = message.content if message.plain else _blocks(message)
        if out and out[-1]["role"] == role:
            previous = out[-1]
            previous["content"] = _as_blocks(previous["content"]) + _as_blocks(content)
        else:
            out.append({"role": role, "content": content})
    return out


def _as_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return content
    return [{"type": "text", "text": content}] if content else []


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [
            {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content,
            }
        ]
    if message.parts is not None:
        blocks = [_part_block(part) for part in message.parts]
    else:
        blocks = _as_blocks(message.content)
    for call in message.tool_calls or ():
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)}
        )
    return blocks


def _input(arguments: str) -> Any:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        raise InvalidRequest("tool call arguments must be a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidRequest("tool call arguments must be a JSON object")
    return value


def _part_block(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") == "text":
        return {"type": "text", "text": part.get("text", "")}
    url = part["image_url"]["url"]
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type = head[5:].split(";", 1)[0]
        if ";base64" not in head or not media_type.startswith("image/"):
            raise InvalidRequest("an image data URL must be data:image/...;base64,...")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


# --- request fields -------------------------------------------------------------------------


def apply_extra(body: dict[str, Any], extra: dict[str, Any]) -> str | None:
    """Translate ``extra`` into ``body``; returns the forced JSON tool's name, if any."""
    if "stop" in extra:
        stop = extra["stop"]
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if "top_p" in extra:
        body["top_p"] = extra["top_p"]
    if "user" in extra:
        body["metadata"] = {"user_id": extra["user"]}
    tools = extra.get("tools")
    if tools:
        body["tools"] = [_tool(t["function"]) for t in tools]
    choice = _tool_choice(extra.get("tool_choice"), extra.get("parallel_tool_calls"))
    if choice is not None:
        body["tool_choice"] = choice
    response_format = extra.get("response_format")
    if response_format is None:
        return None
    # (Not with ``tools``: JSON output is a forced tool here; the capabilities refuse that.)
    body["tools"] = [_json_tool(response_format)]
    body["tool_choice"] = {"type": "tool", "name": JSON_TOOL}
    return JSON_TOOL


def _tool(function: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        tool["description"] = function["description"]
    return tool


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is None:
        return None
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "none":
        out = {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise InvalidRequest(
            "tool_choice must be 'auto', 'none', 'required' or {type: 'function', function: {name}}"
        )
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _json_tool(response_format: dict[str, Any]) -> dict[str, Any]:
    if response_format.get("type") == "json_schema":
        spec = response_format["json_schema"]
        schema = spec.get("schema") or _ANY_OBJECT
        description = spec.get("description") or f"Answer with {spec.get('name', 'the')} JSON."
    else:
        schema, description = _ANY_OBJECT, "Answer with a JSON object."
    if schema.get("type") != "object":
        raise InvalidRequest(
            "anthropic_api JSON output needs a schema whose root is an object",
        )
    return {"name": JSON_TOOL, "description": description, "input_schema": schema}
