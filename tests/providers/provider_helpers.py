"""Small helpers shared by the provider tests."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from providers.base import ChatChunk, ChatRequest, Message

# Must never appear in any error a provider raises.
CANARY = "sk-canary-7f3a9c1e5b2d4680"


def conversation(*texts: str, system: str | None = None, **kwargs: Any) -> ChatRequest:
    """Alternating user/assistant messages, the first (and last, for odd counts) a user's."""
    messages = [Message("system", system)] if system else []
    roles = ("user", "assistant")
    messages += [Message(roles[i % 2], text) for i, text in enumerate(texts)]  # type: ignore[arg-type]
    return ChatRequest(messages=messages, **kwargs)


async def collect(stream: AsyncIterator[ChatChunk]) -> tuple[list[ChatChunk], float | None]:
    """All chunks, and when (time.monotonic) the first non-empty delta arrived."""
    chunks: list[ChatChunk] = []
    first_at: float | None = None
    async for chunk in stream:
        if chunk.delta and first_at is None:
            first_at = time.monotonic()
        chunks.append(chunk)
    return chunks, first_at


def text(chunks: list[ChatChunk]) -> str:
    return "".join(c.delta for c in chunks)


def closed_port_url() -> str:
    """A loopback URL nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def assert_no_secret(exc: BaseException, secret: str = CANARY) -> None:
    """The secret is in no message of the exception or of anything it chains to."""
    seen: BaseException | None = exc
    while seen is not None:
        for rendered in (str(seen), repr(seen), *map(str, seen.args)):
            assert secret not in rendered, f"secret leaked in {type(seen).__name__}: {rendered}"
        seen = seen.__cause__ or seen.__context__
