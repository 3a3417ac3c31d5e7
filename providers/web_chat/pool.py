"""Pages of one endpoint: one per live chat session, a cap on busy pages, a FIFO queue.

A chat session keeps its page between turns, so a conversation stays open on the site.
At most ``cap`` pages work at once; further requests wait in arrival order until a page
frees up or their time runs out. Idle pages beyond ``idle_cap`` are closed, least recently
used first; their sessions reopen from the stored conversation URL when they come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from playwright.async_api import Page

from providers.errors import ProviderTimeout


class FifoLimiter:
    """A counting limit whose waiters are served strictly in arrival order."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def acquire(self, timeout: float) -> None:
        if self.in_use < self.cap and not self.waiting:
            self.in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we gave up: pass the slot on
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter; in_use is unchanged
                return
        self.in_use -= 1


@dataclass(eq=False, slots=True)
class ChatPage:
    """A page and what it shows: the session it serves and that session's conversation."""

    page: Page
    session_id: str | None = None
    # The id of the conversation (ours, kept in the session's conversation dict) on screen.
    conversation_id: str | None = None
    busy: bool = False
    # True while the page shows an untouched new conversation.
    fresh: bool = False
    # True until the config's setup steps ran on the new conversation on screen.
    setup_pending: bool = False
    last_used: float = field(default_factory=time.monotonic)
    # Per-page facts the engine remembers (for example which selector matched).
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return not self.page.is_closed()


class PagePool:
    def __init__(
        self, cap: int, idle_cap: int, new_page: Callable[[], Awaitable[ChatPage]]
    ) -> None:
        self.limiter = FifoLimiter(cap)
        self.idle_cap = idle_cap
        self._new_page = new_page
        self._pages: list[ChatPage] = []
        self._session_locks: dict[str, asyncio.Lock] = {}

    @property
    def pages(self) -> list[ChatPage]:
        return list(self._pages)

    @contextlib.asynccontextmanager
    async def lease(self, session_id: str | None, timeout: float) -> AsyncIterator[ChatPage]:
        """The session's page, held exclusively; waits in the FIFO queue for a free slot."""
        deadline = time.monotonic() + timeout
        async with self._session_turn(session_id, timeout):
            await self._acquire_slot(max(deadline - time.monotonic(), 0.001), timeout)
            try:
                chat_page = await self._page_for(session_id)
                chat_page.busy = True
                try:
                    yield chat_page
                finally:
                    chat_page.busy = False
                    chat_page.last_used = time.monotonic()
            finally:
                self.limiter.release()
        await self._close_surplus()

    @contextlib.asynccontextmanager
    async def _session_turn(self, session_id: str | None, timeout: float) -> AsyncIterator[None]:
        """Turns of one chat session run one after another on its page."""
        if session_id is None:
            yield
            return
        lock = self._session_locks.setdefault(session_id, asyncio.Lock())
        try:
            async with asyncio.timeout(timeout):
                await lock.acquire()
        except TimeoutError:
            raise ProviderTimeout(
                f"waited {timeout:.0f}s for the previous turn of this chat session"
            ) from None
        try:
            yield
        finally:
            lock.release()
            if not lock.locked() and session_id in self._session_locks:
                del self._session_locks[session_id]

    async def _acquire_slot(self, remaining: float, timeout: float) -> None:
        try:
            await self.limiter.acquire(remaining)
        except TimeoutError:
            raise ProviderTimeout(
                f"all {self.limiter.cap} pages stayed busy for {timeout:.0f}s"
            ) from None

    async def _page_for(self, session_id: str | None) -> ChatPage:
        self._pages = [p for p in self._pages if p.usable]
        if session_id is not None:
            for chat_page in self._pages:
                if chat_page.session_id == session_id:
                    return chat_page
        spare = self._spare_page()
        if spare is not None:
            spare.session_id = session_id
            spare.conversation_id = None
            return spare
        chat_page = await self._new_page()
        chat_page.session_id = session_id
        self._pages.append(chat_page)
        return chat_page

    def _spare_page(self) -> ChatPage | None:
        """An idle page free to serve another session: an anonymous one first."""
        idle = [p for p in self._pages if not p.busy]
        anonymous = [p for p in idle if p.session_id is None]
        if anonymous:
            return anonymous[0]
        total_cap = self.limiter.cap + self.idle_cap
        if len(self._pages) >= total_cap and idle:
            return min(idle, key=lambda p: p.last_used)
        return None

    async def _close_surplus(self) -> None:
        idle = sorted((p for p in self._pages if not p.busy), key=lambda p: p.last_used)
        surplus = len(idle) - self.idle_cap
        for chat_page in idle[: max(surplus, 0)]:
            self._pages.remove(chat_page)
            with contextlib.suppress(Exception):
                await chat_page.page.close()

    async def close(self) -> None:
        pages, self._pages = self._pages, []
        for chat_page in pages:
            with contextlib.suppress(Exception):
                await chat_page.page.close()
