"""A deliberately cheap OpenAI-compatible upstream for the gateway benchmark.

It is a raw asyncio ``Protocol`` on uvloop with httptools doing the HTTP/1.1 parsing, so the
upstream costs as little as possible and the figures measure what sits in front of it.

- ``POST .../chat/completions`` answers a fixed JSON completion with usage, or, when the body
  asks for ``"stream": true``, an SSE stream: five content chunks, a finish chunk, a usage
  chunk and ``[DONE]``. The first chunk leaves with the headers; the rest follow
  ``--stream-gap-ms`` apart, so time to first chunk is distinct from time to the last one.
- ``GET .../models`` answers a one-model list (health probes use it).
- Anything else is a 404. The request body is never parsed as JSON: a byte search decides
  between the JSON and the SSE answer.

Run: ``python bench/gateway/mock_upstream.py --port 9100 [--stream-gap-ms 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections import deque

import httptools
import uvloop

MODEL = "mock-model"
STREAM_WORDS = ("Hello", " from", " the", " mock", " upstream")
STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')


def _http_response(status: str, content_type: bytes, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: ".encode()
        + content_type
        + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    return head + body


def _completion_body() -> bytes:
    completion = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the mock upstream"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
    }
    return json.dumps(completion, separators=(",", ":")).encode()


def _sse_event(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    event = f"data: {data}\n\n".encode()
    # One HTTP chunk per SSE event, so each event can leave on its own.
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


def _stream_events() -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000}
    base["model"] = MODEL
    events = []
    for index, word in enumerate(STREAM_WORDS):
        delta = {"role": "assistant", "content": word} if index == 0 else {"content": word}
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        events.append(_sse_event({**base, "choices": [choice]}))
    finish = {"index": 0, "delta": {}, "finish_reason": "stop"}
    events.append(_sse_event({**base, "choices": [finish]}))
    usage = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
    events.append(_sse_event({**base, "choices": [], "usage": usage}))
    events.append(_sse_event("[DONE]"))
    events[-1] += b"0\r\n\r\n"  # the terminating zero-length chunk
    return events


COMPLETION = _http_response("200 OK", b"application/json", _completion_body())
MODELS = _http_response(
    "200 OK",
    b"application/json",
    json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode(),
)
NOT_FOUND = _http_response("404 Not Found", b"application/json", b'{"error":"not found"}')
BAD_REQUEST = _http_response("400 Bad Request", b"text/plain", b"bad request")
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)
STREAM_EVENTS = _stream_events()


class UpstreamProtocol(asyncio.Protocol):
    """One connection. httptools calls the ``on_*`` methods while ``data_received`` feeds it."""

    def __init__(self, stream_gap: float) -> None:
        self.stream_gap = stream_gap
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = bytearray()
        # Requests pipelined behind an open stream wait here, so answers never interleave.
        # (Pausing the transport instead costs uvloop about a millisecond on resume.)
        self.streaming = False
        self.waiting: deque[tuple[bytes, bytes, bytes, bool]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method, url, body = self.parser.get_method(), self.url, bytes(self.body)
        self.url, self.body = b"", bytearray()
        request = (method, url, body, self.parser.should_keep_alive())
        if self.streaming:
            self.waiting.append(request)
        else:
            self._dispatch(*request)

    def _dispatch(self, method: bytes, url: bytes, body: bytes, keep_alive: bool) -> None:
        if method == b"POST" and url.endswith(b"/chat/completions"):
            if STREAM_FLAG.search(body):
                self._start_stream(keep_alive)
                return
            self._answer(COMPLETION, keep_alive)
        elif method == b"GET" and url.endswith(b"/models"):
            self._answer(MODELS, keep_alive)
        else:
            self._answer(NOT_FOUND, keep_alive)

    def _answer(self, response: bytes, keep_alive: bool) -> None:
        self.transport.write(response)
        if not keep_alive:
            self.transport.close()

    def _start_stream(self, keep_alive: bool) -> None:
        self.streaming = True
        self.transport.write(STREAM_HEAD + STREAM_EVENTS[0])
        self._schedule_event(1, keep_alive)

    def _schedule_event(self, index: int, keep_alive: bool) -> None:
        if self.stream_gap <= 0:
            self.transport.write(b"".join(STREAM_EVENTS[index:]))
            self._end_stream(keep_alive)
            return
        loop = asyncio.get_running_loop()
        loop.call_later(self.stream_gap, self._send_event, index, keep_alive)

    def _send_event(self, index: int, keep_alive: bool) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(STREAM_EVENTS[index])
        if index + 1 == len(STREAM_EVENTS):
            self._end_stream(keep_alive)
        else:
            self._schedule_event(index + 1, keep_alive)

    def _end_stream(self, keep_alive: bool) -> None:
        self.streaming = False
        if not keep_alive:
            self.transport.close()
            return
        while self.waiting and not self.streaming:
            self._dispatch(*self.waiting.popleft())


async def serve(host: str, port: int, stream_gap_ms: float) -> None:
    loop = asyncio.get_running_loop()
    gap = stream_gap_ms / 1000.0
    server = await loop.create_server(lambda: UpstreamProtocol(gap), host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stream-gap-ms", type=float, default=1.0)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.stream_gap_ms))


if __name__ == "__main__":
    main()
