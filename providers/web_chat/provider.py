"""The ``web_chat`` and ``custom_web`` providers: a chat web page as an endpoint.

One Chromium and one browser context per endpoint; its storage state is restored on start
and saved after a login, after turns that changed it and periodically. Each chat session
gets its own page and conversation; the conversation's URL goes back to the runtime in
``conversation`` so the same session continues there after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, NoReturn
from urllib.parse import quote, urljoin

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page
from playwright.async_api import TimeoutError as PlaywrightTimeout
from pydantic import BaseModel, ValidationError

from providers.base import (
    ChatChunk,
    ChatRequest,
    EndpointSpec,
    HealthResult,
    Provider,
    ProviderContext,
    StandardResponse,
    Usage,
    estimate_tokens,
)
from providers.errors import (
    InvalidRequest,
    PageTrouble,
    ProviderError,
    ProviderTimeout,
    SessionExpired,
    Unavailable,
    nothing_sent,
)
from providers.hookspecs import hookimpl
from providers.web_chat import actions, engine
from providers.web_chat.answer import StreamTracker, formatter
from providers.web_chat.browser import BrowserSession, SavedState, first_line
from providers.web_chat.config import BrowserConfig, Step, WebChatConfig, url_matches
from providers.web_chat.login import log_in, wait_for_login_state
from providers.web_chat.pool import ChatPage, PagePool

log = logging.getLogger(__name__)

SETTLE_POLL_S = 0.1
SETTLE_QUIET_S = 0.3
SETTLE_MAX_S = 3.0
# How long a new chat may take to clear the old conversation from the screen.
NEW_CHAT_CLEAR_S = 3.0
SAVE_DELAY_S = 1.0


def validation_message(exc: ValidationError) -> str:
    """Field paths and complaints only: input values may hold secrets (a proxy password)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
    )


class WebChatProvider(Provider):
    endpoint_type = "web_chat"
    title = "Web chat (browser)"
    description = "A chat web page driven by Chromium, described by a declarative config."
    can_stream = True
    needs_browser = True
    needs_credentials = False
    # The login steps may name any credential key; these are the usual ones.
    credential_fields = ("username", "email", "password", "otp_secret")
    # The page pool's size: each concurrent conversation is a browser page (~17 MB).
    default_max_concurrent = 4
    Config = WebChatConfig

    def __init__(self, spec: EndpointSpec, context: ProviderContext | None = None) -> None:
        super().__init__(spec, context)
        self.config = self._site_config(spec.config)
        try:
            self.browser_settings = BrowserConfig.model_validate(spec.browser_config or {})
        except ValidationError as exc:
            raise InvalidRequest(f"invalid browser_config: {validation_message(exc)}") from None
        self._session: BrowserSession | None = None
        self._pool: PagePool | None = None
        self._watches: dict[int, engine.AnswerWatch] = {}
        self._format = formatter(self.config.answer_format)
        self._tokens = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state_lock = asyncio.Lock()
        self._login_lock = asyncio.Lock()
        self._login_generation = 0
        self._last_saved: bytes | None = None
        self._save_pending = False
        # While starting, trouble is raised from start(); reporting it as well would make
        # the runtime handle the same failure twice.
        self._starting = False
        self._crashed = False
        # Set once a new chat left the old messages on screen: this site keeps them (in
        # another panel, say), and later new chats do not wait for them to go.
        self._new_chat_keeps_old = False

    @classmethod
    def _site_config(cls, config: BaseModel | dict[str, Any]) -> WebChatConfig:
        if isinstance(config, WebChatConfig):
            return config
        raw = config.model_dump() if isinstance(config, BaseModel) else config
        try:
            return WebChatConfig.model_validate(raw)
        except ValidationError as exc:
            raise InvalidRequest(f"invalid web chat config: {validation_message(exc)}") from None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        saved = SavedState()
        if self.spec.persistent_session:
            saved = SavedState.from_bytes(await self.context.state_store.load())
            self._last_saved = saved.to_bytes() if saved.storage_state else None
        self._crashed = False
        self._session = BrowserSession(self.browser_settings, marker=self.spec.name)
        await self._session.open(saved, on_disconnect=self._on_browser_gone)
        assert self._session.context is not None
        await self._session.context.expose_binding(engine.BINDING_NAME, self._on_page_text)
        self._pool = PagePool(
            cap=self.spec.max_concurrent_requests,
            idle_cap=self.config.idle_pages,
            new_page=self._new_chat_page,
        )
        try:
            self._starting = True
            await self._open_first_page()
        except BaseException:
            await self.stop()
            raise
        finally:
            self._starting = False
        if self.spec.persistent_session:
            self._spawn(self._save_periodically())

    async def _open_first_page(self) -> None:
        """Load the site once: proves it is reachable and, with a login, that we are in."""
        assert self._pool is not None
        async with self._pool.lease(None, self.config.page_timeout_s) as chat_page:
            await self._open_new_conversation_page(chat_page)
            if self.config.login is None:
                return
            if not await wait_for_login_state(
                chat_page.page, self.config, self.config.page_timeout_s
            ):
                await self._log_in(chat_page.page)
                # The site's login lands on its own default page, which may not be the
                # endpoint's page (a project, a model, an option in the URL).
                await self._open_new_conversation_page(chat_page)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        session = self._session
        if session is not None and session.connected and self.spec.persistent_session:
            with contextlib.suppress(Exception):
                await self._save_state()
        if self._pool is not None:
            await self._pool.close()
        if session is not None:
            await session.close()
        self._session, self._pool = None, None

    async def health(self) -> HealthResult:
        if self._crashed:
            return HealthResult(ok=False, detail="browser crashed")
        if self._session is None or not self._session.connected or self._pool is None:
            return HealthResult(ok=False, detail="browser not running")
        idle = [p for p in self._pool.pages if not p.busy and p.usable]
        if idle and await self._shows_logged_out(idle[0].page):
            return HealthResult(ok=False, detail="session expired: logged out")
        busy = sum(p.busy for p in self._pool.pages)
        return HealthResult(ok=True, detail=f"{len(self._pool.pages)} pages open, {busy} busy")

    async def _shows_logged_out(self, page: Page) -> bool:
        try:
            return await engine.logged_out(page, self.config.trouble)
        except PlaywrightError:
            return False

    # -- chat --------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> StandardResponse:
        return await self._serve(request, on_delta=None)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        deltas: asyncio.Queue[str | None] = asyncio.Queue()
        turn = asyncio.create_task(self._serve(request, on_delta=deltas.put_nowait))
        turn.add_done_callback(lambda _task: deltas.put_nowait(None))
        try:
            while (delta := await deltas.get()) is not None:
                yield ChatChunk(delta=delta)
            response = turn.result()
            yield ChatChunk(
                finish_reason=response.finish_reason,
                usage=response.usage,
                conversation=response.conversation,
                content=response.content,
                transcript_replayed=response.transcript_replayed,
            )
        finally:
            if not turn.done():
                turn.cancel()
                with contextlib.suppress(BaseException):
                    await turn

    async def _serve(
        self, request: ChatRequest, on_delta: Callable[[str], None] | None
    ) -> StandardResponse:
        pool = self._running_pool()
        queue_timeout = self.config.queue_timeout_s or self.spec.request_timeout
        async with pool.lease(request.session_id, queue_timeout) as chat_page:
            try:
                return await self._turn(chat_page, request, on_delta)
            except PlaywrightError as exc:
                raise self._mapped(exc, chat_page) from None

    def _running_pool(self) -> PagePool:
        # Nothing was typed yet: these errors are marked so the runtime may retry elsewhere
        # or later without risking a second answer.
        if self._crashed:
            raise nothing_sent(Unavailable("the browser crashed; the endpoint needs a restart"))
        if self._pool is None or self._session is None or not self._session.connected:
            raise nothing_sent(Unavailable("the endpoint's browser is not running"))
        return self._pool

    async def _turn(
        self,
        chat_page: ChatPage,
        request: ChatRequest,
        on_delta: Callable[[str], None] | None,
    ) -> StandardResponse:
        conversation = dict(request.conversation or {})
        tracker = StreamTracker(on_delta) if on_delta else None
        for attempt in range(2):
            generation = self._login_generation
            continued, scope = await self._ready_page(chat_page, conversation)
            text = self._text_to_type(request, continued)
            try:
                answer = await self._exchange(chat_page, scope, text, tracker)
                break
            except SessionExpired:
                # Many sites notice a dead session only when a message is sent. Nothing
                # was answered, so after one login the turn is sent again.
                answered = tracker is not None and tracker.emitted
                if attempt or answered or self.config.login is None:
                    await self._session_expired("the session was logged out during an answer")
                await self._log_in_again(chat_page, generation)
        if tracker is not None:
            tracker.feed(answer, final=True)
        replayed = text != request.prompt
        conversation = await self._conversation_after(chat_page, scope, conversation, replayed)
        self._save_soon()
        return StandardResponse(
            content=answer,
            model=self.spec.model_name,
            usage=Usage(estimate_tokens(text), estimate_tokens(answer), estimated=True),
            conversation=conversation,
            transcript_replayed=replayed,
        )

    async def _ready_page(
        self, chat_page: ChatPage, conversation: dict[str, Any]
    ) -> tuple[bool, engine.Scope]:
        """Open the session's conversation and check the page can take a prompt."""
        for attempt in range(2):
            generation = self._login_generation
            continued = await self._open_conversation(chat_page, conversation)
            scope = await engine.chat_scope(chat_page.page, self.config, chat_page.notes)
            trouble = await engine.find_trouble(chat_page.page, scope, self.config.trouble)
            if trouble is None:
                return continued, scope
            if trouble != engine.Trouble.LOGGED_OUT:
                await engine.raise_on_trouble(chat_page.page, scope, self.config.trouble, None)
            if attempt == 0 and self.config.login is not None:
                await self._log_in_again(chat_page, generation)
                continue
            break
        await self._session_expired("the chat page shows a logged-out page")

    async def _open_conversation(self, chat_page: ChatPage, conversation: dict[str, Any]) -> bool:
        """True when the session's existing conversation is open, False for a new one."""
        page = chat_page.page
        conversation_id, url = conversation.get("id"), conversation.get("url")
        on_screen = conversation_id is not None and chat_page.conversation_id == conversation_id
        # A URL built from the site's id (url_template) is not the one the page shows.
        if on_screen and (not url or page.url == url or conversation.get("site_id")):
            return True
        if url:
            await self._goto(page, url)
            chat_page.conversation_id = conversation_id
            await self._settle(page, chat_page)
            return True
        if not chat_page.fresh:
            await self._start_new_conversation(chat_page)
        chat_page.conversation_id = None
        if chat_page.setup_pending:
            await self._set_up_conversation(chat_page)
        return False

    async def _open_new_conversation_page(self, chat_page: ChatPage) -> None:
        await self._goto(chat_page.page, self._new_conversation_url())
        chat_page.fresh = chat_page.setup_pending = True

    async def _start_new_conversation(self, chat_page: ChatPage) -> None:
        conversation = self.config.conversation
        steps = conversation.new_steps or (
            [Step(click=conversation.new_button)] if conversation.new_button else []
        )
        if not steps or chat_page.page.url == "about:blank":
            await self._open_new_conversation_page(chat_page)
            return
        scope = await engine.chat_scope(chat_page.page, self.config, chat_page.notes)
        await actions.dismiss_overlays(scope, self.config.overlays)
        old_messages = 0
        if not self._new_chat_keeps_old:
            old_messages = await engine.mark_old_conversation(scope, self.config)
        await actions.run_steps(
            chat_page.page, scope, steps, timeout_s=self.config.page_timeout_s, role="new chat"
        )
        # A prompt sent before the site has cleared the old chat would be cleared with it.
        if old_messages and not await engine.wait_old_conversation_gone(scope, NEW_CHAT_CLEAR_S):
            self._new_chat_keeps_old = True
            log.info("%s: the old conversation stays on screen after a new chat; new chats "
                     "no longer wait for it to go", self.spec.name)  # fmt: skip
        chat_page.fresh = chat_page.setup_pending = True

    async def _set_up_conversation(self, chat_page: ChatPage) -> None:
        """The config's steps for a new conversation (choose a model, a mode), run once."""
        steps = self.config.conversation.setup_steps
        if steps:
            scope = await engine.chat_scope(chat_page.page, self.config, chat_page.notes)
            await actions.dismiss_overlays(scope, self.config.overlays)
            await actions.run_steps(
                chat_page.page,
                scope,
                steps,
                timeout_s=self.config.page_timeout_s,
                credentials=self.spec.credentials,
                role="conversation setup step",
            )
        chat_page.setup_pending = False

    async def _settle(self, page: Page, chat_page: ChatPage) -> None:
        """Wait for a reopened conversation's history to render, so it is not read as new."""
        scope = await engine.chat_scope(page, self.config, chat_page.notes)
        messages = scope.locator(", ".join(self.config.assistant_message))
        loop = asyncio.get_running_loop()
        started = last_change = loop.time()
        last = await messages.count()
        while loop.time() - started < SETTLE_MAX_S:
            await asyncio.sleep(SETTLE_POLL_S)
            count = await messages.count()
            if count != last:
                last, last_change = count, loop.time()
            elif last and loop.time() - last_change >= SETTLE_QUIET_S:
                return
            elif not last and loop.time() - started >= SETTLE_QUIET_S * 2:
                return

    def _text_to_type(self, request: ChatRequest, continued: bool) -> str:
        prompt = request.prompt
        if not prompt:
            raise InvalidRequest("the request has no user message to send")
        earlier = [m for m in request.messages if m.content != prompt or m.role != "user"]
        if continued or not self.config.conversation.replay_history or not earlier:
            return prompt
        return engine.transcript(request.messages, prompt)

    async def _exchange(
        self,
        chat_page: ChatPage,
        scope: engine.Scope,
        text: str,
        tracker: StreamTracker | None,
    ) -> str:
        page = chat_page.page
        timeout = self.config.answer_timeout(text, self.spec.request_timeout)
        baseline = await engine.turn_baseline(page, scope, self.config, text)
        watch = engine.AnswerWatch(
            next(self._tokens), self._format, on_text=tracker.feed if tracker else None
        )
        self._watches[watch.token] = watch
        try:
            chat_page.fresh = False
            await engine.watch_document(scope, self.config, baseline.probe, watch.token)
            await actions.send_prompt(
                page,
                scope,
                self.config,
                text,
                chat_page.notes,
                before_send=lambda: engine.note_attributes(scope, self.config.completion, baseline),
            )
            return await engine.read_answer(page, scope, self.config, baseline, watch, timeout)
        finally:
            del self._watches[watch.token]
            await engine.stop_watching(scope)

    async def _conversation_after(
        self, chat_page: ChatPage, scope: engine.Scope, conversation: dict[str, Any], replayed: bool
    ) -> dict[str, Any]:
        """The session's conversation dict after a turn: our id, the site's id and URL, turns.

        ``transcript_replayed`` stays set once earlier turns had to be typed into a new
        conversation as a transcript, so the stored session says so.
        """
        conversation.setdefault("id", uuid.uuid4().hex)
        chat_page.conversation_id = conversation["id"]
        url = chat_page.page.url
        if self._is_conversation_url(url):
            conversation["url"] = url
        site_id = await self._site_conversation_id(scope)
        if site_id:
            conversation["site_id"] = site_id
            template = self.config.conversation.url_template
            if template:
                built = template.replace("{id}", quote(site_id, safe=""))
                conversation["url"] = urljoin(self.spec.url, built)
        conversation["turns"] = int(conversation.get("turns", 0)) + 1
        if replayed:
            conversation["transcript_replayed"] = True
        return conversation

    async def _site_conversation_id(self, scope: engine.Scope) -> str | None:
        """The conversation id the site shows in an attribute or an input's value."""
        source = self.config.conversation.id_from
        if source is None:
            return None
        locator = scope.locator(", ".join(source.selector)).first
        try:
            if not await locator.count():
                return None
            if source.attribute is None:
                value: str | None = await locator.input_value(timeout=1000)
            else:
                value = await locator.get_attribute(source.attribute, timeout=1000)
        except PlaywrightError:
            return None
        return (value or "").strip() or None

    def _is_conversation_url(self, url: str) -> bool:
        pattern = self.config.conversation.url_pattern
        if pattern is not None:
            return url_matches(pattern, url)
        # Without a pattern, a URL other than the new-chat page names the conversation.
        return url.split("#")[0] != self._new_conversation_url().split("#")[0]

    # -- login and trouble -------------------------------------------------------------------

    async def _log_in(self, page: Page) -> None:
        try:
            await log_in(page, self.config, self.spec.credentials, self.spec.url)
        except SessionExpired as exc:
            await self._report("failed", f"session expired: {exc.message}")
            raise
        self._login_generation += 1
        if self.spec.persistent_session:
            await self._save_state()

    async def _log_in_again(self, chat_page: ChatPage, seen_generation: int) -> None:
        """One re-login per logout, however many pages noticed it; the page is left on a
        new conversation at the endpoint's URL, not where the site's login landed."""
        async with self._login_lock:
            if self._login_generation == seen_generation:
                log.info("endpoint %s: logged out, logging in again", self.spec.name)
                await self._log_in(chat_page.page)
        chat_page.conversation_id = None
        await self._open_new_conversation_page(chat_page)

    async def _session_expired(self, detail: str) -> NoReturn:
        await self._report("failed", f"session expired: {detail}")
        raise SessionExpired(f"session expired: {detail}")

    def _mapped(self, exc: PlaywrightError, chat_page: ChatPage) -> ProviderError:
        if self._crashed or self._session is None or not self._session.connected:
            return Unavailable("the browser crashed during the request")
        if chat_page.page.is_closed() or chat_page.notes.get("crashed"):
            return Unavailable("the chat page crashed or was closed during the request")
        if isinstance(exc, PlaywrightTimeout):
            return ProviderTimeout(f"the chat page did not respond: {first_line(exc)}")
        message = first_line(exc)
        if "net::" in message:
            return Unavailable(f"cannot load the chat page: {message}")
        return PageTrouble(f"the chat page misbehaved: {message}", reason="page_error")

    # -- pages, browser events and state -----------------------------------------------------

    async def _new_chat_page(self) -> ChatPage:
        assert self._session is not None and self._session.context is not None
        page = await self._session.context.new_page()
        page.set_default_timeout(self.config.page_timeout_s * 1000)
        chat_page = ChatPage(page)
        page.on("crash", lambda _page: chat_page.notes.__setitem__("crashed", "yes"))
        return chat_page

    def _on_page_text(self, _source: Any, token: int, text: str) -> None:
        watch = self._watches.get(token)
        if watch is not None:
            watch.update(text if isinstance(text, str) else None)

    def _on_browser_gone(self) -> None:
        if self._session is None or self._session.closing:
            return
        self._crashed = True
        log.warning("endpoint %s: browser disconnected", self.spec.name)
        self._spawn(self._report("failed", "browser crashed"))

    async def _goto(self, page: Page, url: str) -> None:
        try:
            await page.goto(url, wait_until="domcontentloaded")
        except PlaywrightTimeout:
            raise ProviderTimeout(
                f"the chat page did not load within {self.config.page_timeout_s:.0f}s"
            ) from None
        except PlaywrightError as exc:
            if self._crashed:
                raise Unavailable("the browser crashed") from None
            raise Unavailable(f"cannot load the chat page: {first_line(exc)}") from None

    def _new_conversation_url(self) -> str:
        new_url = self.config.conversation.new_url
        return urljoin(self.spec.url, new_url) if new_url else self.spec.url

    async def _report(self, state: str, reason: str) -> None:
        if self.context.report_state is None or self._starting:
            return
        try:
            await self.context.report_state(state, reason)
        except Exception:  # noqa: BLE001 - a broken reporter must not break a request
            log.exception("endpoint %s: report_state failed", self.spec.name)

    async def _save_state(self) -> None:
        """Save the context's storage state when it differs from what was saved last."""
        if self._session is None or not self.spec.persistent_session:
            return
        async with self._state_lock:
            data = (await self._session.snapshot()).to_bytes()
            if data != self._last_saved:
                await self.context.state_store.save(data)
                self._last_saved = data

    async def _save_state_quietly(self) -> None:
        try:
            await self._save_state()
        except Exception:  # noqa: BLE001 - the next save tries again
            log.warning("endpoint %s: could not save browser state", self.spec.name)

    def _save_soon(self) -> None:
        """Save after the turn, off the response path; turns in a burst share one save."""
        if self.spec.persistent_session and not self._save_pending:
            self._save_pending = True
            self._spawn(self._save_after(SAVE_DELAY_S))

    async def _save_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._save_pending = False
        await self._save_state_quietly()

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.state_save_interval_s)
            await self._save_state_quietly()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class CustomWebProvider(WebChatProvider):
    endpoint_type = "custom_web"
    title = "Custom web chat"
    description = (
        "A web chat whose config was written by a person or drafted by discovery; "
        "the same engine as web_chat."
    )


@hookimpl
def register_providers(register: Callable[[type], None]) -> None:
    register(WebChatProvider)
    register(CustomWebProvider)
