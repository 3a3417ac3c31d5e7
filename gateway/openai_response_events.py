"""Response objects and the Responses API event stream, built from the chat path's answers.

The stream follows the documented event order: ``response.created``, ``response.in_progress``,
then per output item ``response.output_item.added``, its content events
(``response.content_part.added`` / ``response.output_text.delta`` / ``.done`` /
``response.content_part.done`` for a message; ``response.function_call_arguments.delta`` /
``.done`` for a function call) and ``response.output_item.done``; last ``response.completed``
(or ``response.failed`` with the error after a mid-stream failure). Every event carries its
``sequence_number``. Deltas are forwarded as they arrive: nothing is buffered.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson

from gateway.errors import KNOWN, sse_error_payload
from providers.base import ToolCallDelta
from runtime.chat import ChatResult, ChatStream


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def message_item(text: str, status: str = "completed", item_id: str | None = None) -> dict:
    return {
        "type": "message",
        "id": item_id or _item_id("msg"),
        "status": status,
        "role": "assistant",
        "content": [output_text(text)] if status == "completed" else [],
    }


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_item(call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {
        "type": "function_call",
        "id": _item_id("fc"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def output_items(result: ChatResult) -> list[dict[str, Any]]:
    items = []
    if result.content or not result.tool_calls:
        items.append(message_item(result.content))
    for call in result.tool_calls or ():
        items.append(function_item(call.id, call.name, call.arguments))
    return items


def response_object(
    response_id: str,
    body: dict[str, Any],
    created: float,
    result: ChatResult | None,
    output: list[dict[str, Any]] | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """A Response; ``result`` None while it is still in progress."""
    incomplete = result is not None and result.finish_reason == "length"
    text = body.get("text") if isinstance(body.get("text"), dict) else None
    response: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": int(created),
        "status": status or ("incomplete" if incomplete else "completed"),
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"],
        "output": output if output is not None else (output_items(result) if result else []),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning"),
        "store": body.get("store", True),
        "temperature": body.get("temperature"),
        "text": text or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation", "disabled"),
        "usage": _usage(result) if result is not None else None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }
    return response


def _usage(result: ChatResult) -> dict[str, Any]:
    usage = result.usage
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


class ResponseEvents:
    """Turns one chat stream into the Responses API's events."""

    def __init__(self, body: dict[str, Any], created: float, response_id: str) -> None:
        self.body = body
        self.created = created
        self.response_id = response_id
        self.sequence = 0
        self.items: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.text: list[str] = []
        self.arguments: list[str] = []

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _snapshot(self, result: ChatResult | None, status: str | None) -> dict[str, Any]:
        return response_object(
            self.response_id, self.body, self.created, result, self.items, status=status
        )

    async def stream(self, chat: ChatStream) -> AsyncIterator[bytes]:
        yield self.event("response.created", response=self._snapshot(None, "in_progress"))
        yield self.event("response.in_progress", response=self._snapshot(None, "in_progress"))
        try:
            async for chunk in chat.chunks():
                if chunk.delta:
                    for event in self._text_delta(chunk.delta):
                        yield event
                for delta in chunk.tool_calls or ():
                    for event in self._tool_delta(delta):
                        yield event
        except KNOWN as exc:
            error = sse_error_payload(exc)["error"]
            failed = self._snapshot(None, "failed")
            failed["error"] = {"code": error["code"], "message": error["message"]}
            yield self.event("response.failed", response=failed)
            return
        finally:
            chat.release()
        for event in self._close():
            yield event
        result = chat.result
        assert result is not None
        if not self.items:  # an empty answer is still one (empty) message
            self.items.append(message_item(""))
        yield self.event("response.completed", response=self._snapshot(result, None))

    def _text_delta(self, delta: str) -> Iterator[bytes]:
        if self.open is None or self.open["type"] != "message":
            yield from self._close()
            item = message_item("", status="in_progress")
            yield from self._open(item)
            yield self.event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=len(self.items),
                content_index=0,
                part=output_text(""),
            )
        self.text.append(delta)
        yield self.event(
            "response.output_text.delta",
            item_id=self.open_id,
            output_index=len(self.items),
            content_index=0,
            delta=delta,
            logprobs=[],
        )

    def _tool_delta(self, delta: ToolCallDelta) -> Iterator[bytes]:
        if delta.id is not None or self.open is None or self.open["type"] != "function_call":
            yield from self._close()
            item = function_item(delta.id or "", delta.name or "", "", status="in_progress")
            yield from self._open(item)
        if delta.arguments:
            self.arguments.append(delta.arguments)
            yield self.event(
                "response.function_call_arguments.delta",
                item_id=self.open_id,
                output_index=len(self.items),
                delta=delta.arguments,
            )

    @property
    def open_id(self) -> str:
        assert self.open is not None
        return str(self.open["id"])

    def _open(self, item: dict[str, Any]) -> Iterator[bytes]:
        self.open = item
        yield self.event("response.output_item.added", output_index=len(self.items), item=item)

    def _close(self) -> Iterator[bytes]:
        item, self.open = self.open, None
        if item is None:
            return
        index = len(self.items)
        if item["type"] == "message":
            text = "".join(self.text)
            self.text = []
            yield self.event("response.output_text.done", item_id=item["id"], output_index=index,
                             content_index=0, text=text, logprobs=[])  # fmt: skip
            yield self.event("response.content_part.done", item_id=item["id"], output_index=index,
                             content_index=0, part=output_text(text))  # fmt: skip
            done = {**item, "status": "completed", "content": [output_text(text)]}
        else:
            arguments = "".join(self.arguments)
            self.arguments = []
            yield self.event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=arguments,
            )
            done = {**item, "status": "completed", "arguments": arguments}
        self.items.append(done)
        yield self.event("response.output_item.done", output_index=index, item=done)
