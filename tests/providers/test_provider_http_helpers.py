"""The shared HTTP plumbing: SSE parsing, status mapping, redaction, usage, rate limiting."""

from __future__ import annotations

import asyncio
import time

import pytest

from providers._http import (
    SlidingWindowLimiter,
    error_for_status,
    iter_sse,
    redact,
    upstream_message,
    usage_from,
)
from providers.errors import (
    AuthError,
    InvalidRequest,
    ProtocolError,
    ProviderTimeout,
    RateLimited,
    Unavailable,
)
from tests.providers.provider_helpers import conversation


class FakeContent:
    """Stands in for aiohttp's StreamReader: hands out the given byte pieces."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = pieces

    async def iter_any(self):
        for piece in self.pieces:
            yield piece


async def events(*pieces: bytes) -> list[tuple[str, str]]:
    return [event async for event in iter_sse(FakeContent(*pieces))]


async def test_sse_events_split_across_pieces():
    assert await events(b"da", b'ta: {"a":', b" 1}\n", b"\ndata: [DONE]\n\n") == [
        ("message", '{"a": 1}'),
        ("message", "[DONE]"),
    ]


async def test_sse_named_events_multiline_data_comments_and_crlf():
    stream = b": keep-alive\r\nevent: ping\r\ndata: {}\r\n\r\nevent: x\ndata: a\ndata: b\n\n"
    assert await events(stream) == [("ping", "{}"), ("x", "a\nb")]


async def test_sse_unterminated_last_event_is_delivered():
    assert await events(b"data: tail") == [("message", "tail")]
    assert await events(b"data: one\n\n\n\n") == [("message", "one")]


async def test_sse_multibyte_text_split_mid_character():
    raw = 'data: "héllo ✓"\n\n'.encode()
    cut = raw.index("✓".encode()) + 1
    assert await events(raw[:cut], raw[cut:]) == [("message", '"héllo ✓"')]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthError),
        (403, AuthError),
        (402, RateLimited),
        (429, RateLimited),
        (408, ProviderTimeout),
        (400, InvalidRequest),
        (404, InvalidRequest),
        (422, InvalidRequest),
        (500, Unavailable),
        (502, Unavailable),
        (529, Unavailable),
        (302, ProtocolError),
    ],
)
def test_status_mapping(status, error):
    mapped = error_for_status(status, {}, b"{}", label="x", secrets=())
    assert type(mapped) is error and mapped.upstream_status == status


def test_retry_after_seconds_and_milliseconds():
    assert error_for_status(429, {"Retry-After": "3"}, b"", label="x", secrets=()).retry_after == 3
    ms = error_for_status(429, {"retry-after-ms": "1500"}, b"", label="x", secrets=())
    assert ms.retry_after == 1.5
    dated = {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert error_for_status(429, dated, b"", label="x", secrets=()).retry_after is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "bad model", "type": "invalid_request_error"}}', "bad model"),
        (b'{"type": "error", "error": {"type": "overloaded_error", "message": "Busy"}}', "Busy"),
        (b'{"message": "Agent run not found.", "status_code": 404}', "Agent run not found."),
        (b'{"detail": [{"loc": ["body"], "msg": "Field required"}]}', "Field required"),
        (b'{"error": "plain"}', "plain"),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"", "(empty body)"),
    ],
)
def test_upstream_message_shapes(body, message):
    assert message in upstream_message(body)


def test_upstream_message_is_capped_after_redaction():
    # upstream_message keeps the whole text so secrets are redacted before the cut.
    assert upstream_message(b"x" * 10_000) == "x" * 10_000
    error = error_for_status(500, {}, b"x" * 10_000, label="e", secrets=())
    assert str(error) == "e answered HTTP 500: " + "x" * 300


def test_redact():
    assert redact("key sk-1234 and sk-1234", ("sk-1234",)) == "key *** and ***"
    assert redact("nothing here", ("sk-1234",)) == "nothing here"


def test_usage_real_partial_and_estimated():
    request = conversation("abcdefgh")
    assert usage_from(3, 4, request, "x").estimated is False
    partial = usage_from(3, None, request, "abcd" * 5)
    assert (partial.prompt_tokens, partial.completion_tokens, partial.estimated) == (3, 5, True)
    estimated = usage_from(None, None, request, "")
    assert (estimated.prompt_tokens, estimated.completion_tokens) == (2, 0)
    assert estimated.estimated is True


async def test_limiter_spaces_calls_beyond_the_window():
    limiter = SlidingWindowLimiter(2, 0.3)
    started = time.monotonic()
    stamps = []
    for _ in range(5):
        await limiter.acquire()
        stamps.append(time.monotonic() - started)
    assert stamps[1] < 0.05
    assert stamps[2] >= 0.29 and stamps[4] >= 0.59


async def test_limiter_block_for_holds_everyone_back():
    limiter = SlidingWindowLimiter(100, 1.0)
    limiter.block_for(0.2)
    started = time.monotonic()
    await asyncio.gather(limiter.acquire(), limiter.acquire())
    assert time.monotonic() - started >= 0.19
