"""Fixture chat sites for the web chat tests, served by aiohttp on 127.0.0.1 in a thread.

Six sites that differ in structure (see sites/*.html), and a "lab" site whose quirks are
switched on by query parameters (see sites/lab.html), share one deterministic bot: the
reply to the n-th user message of a conversation is ``[<site>] turn <n>: you said '<prompt>'``.
Prompts starting with ``TROUBLE:`` make the bot misbehave on purpose:
``TROUBLE:error`` (error banner), ``TROUBLE:late`` (an answer whose end comes with an error
banner, on the textarea site), ``TROUBLE:captcha``, ``TROUBLE:slow`` (an answer that takes
far longer than tests wait), and on the SSE site ``TROUBLE:drip`` (a slow, long stream).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from aiohttp import web

from providers.web_chat.actions import totp_code
from tests.fixtures.threaded_app import ThreadedApp

SITES_DIR = Path(__file__).parent / "sites"
USERNAME, PASSWORD = "ada", "correct horse battery staple"
SESSION_COOKIE = "members_session"


def bot_reply(site: str, turn: int, prompt: str) -> str:
    return f"[{site}] turn {turn}: you said '{prompt}'"


@dataclass
class StreamTiming:
    first_token_at: float | None = None
    last_token_at: float | None = None


@dataclass
class BotState:
    """What the bot remembers; read by tests from their own thread (simple values only)."""

    conversations: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)
    logins: int = 0
    failed_logins: int = 0
    stream_timing: dict[str, StreamTiming] = field(default_factory=dict)
    # Page-side times (epoch ms) of each answer's first and last word, by prompt.
    marks: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # When set, the login asks for a one-time code from this base32 secret after the password.
    otp_secret: str | None = None
    otp_pending: set[str] = field(default_factory=set)

    def turn(self, conv: str | None, prompt: str, site: str) -> tuple[str, int, str]:
        if not conv or conv not in self.conversations:
            conv = secrets.token_hex(6)
            self.conversations[conv] = []
        messages = self.conversations[conv]
        turn = sum(1 for m in messages if m["role"] == "user") + 1
        reply = bot_reply(site, turn, prompt)
        messages.append({"role": "user", "content": prompt})
        messages.append({"role": "assistant", "content": reply})
        return conv, turn, reply

    def expire_sessions(self) -> None:
        self.sessions.clear()


def page(name: str) -> str:
    html = (SITES_DIR / name).read_text()
    return html.replace("<!--TROUBLE-->", (SITES_DIR / "trouble.html").read_text())


class SiteServer(ThreadedApp):
    label = "fixture site server"

    def __init__(self) -> None:
        super().__init__()
        self.state = BotState()

    @property
    def base(self) -> str:
        return self.base_url

    def url(self, path: str) -> str:
        return self.base_url + path

    # -- routes -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        html = {
            "/textarea/": "textarea.html",
            "/textarea/c/{conv}": "textarea.html",
            "/editable/": "editable.html",
            "/sse/": "sse.html",
            "/sse/c/{conv}": "sse.html",
            "/iframe/": "iframe_host.html",
            "/iframe/widget": "iframe_widget.html",
            "/shadow/": "shadow.html",
            "/lab/": "lab.html",
            "/lab/c/{conv}": "lab.html",
        }
        for path, name in html.items():
            app.router.add_get(path, self._html(name))
        app.router.add_get("/login/", self._members_page)
        app.router.add_get("/login/c/{conv}", self._members_page)
        app.router.add_get("/login/signin", self._signin_form)
        app.router.add_post("/login/signin", self._signin)
        app.router.add_get("/login/signout", self._signout)
        app.router.add_get("/login/otp", self._otp_form)
        app.router.add_post("/login/otp", self._otp)
        app.router.add_get("/static/common.js", self._common_js)
        app.router.add_post("/api/{site}/reply", self._reply)
        app.router.add_get("/api/{site}/history", self._history)
        app.router.add_get("/api/sse/stream", self._stream)
        app.router.add_post("/api/mark", self._mark)
        app.router.add_post("/api/lab/new", self._new_lab_chat)
        return app

    @staticmethod
    def _html(name: str):
        async def handler(_request: web.Request) -> web.Response:
            return web.Response(text=page(name), content_type="text/html")

        return handler

    async def _common_js(self, _request: web.Request) -> web.Response:
        text = (SITES_DIR / "common.js").read_text()
        return web.Response(text=text, content_type="application/javascript")

    def _signed_in(self, request: web.Request) -> bool:
        return request.cookies.get(SESSION_COOKIE) in self.state.sessions

    async def _members_page(self, request: web.Request) -> web.Response:
        if not self._signed_in(request):
            raise web.HTTPFound("/login/signin")
        return web.Response(text=page("login_chat.html"), content_type="text/html")

    async def _signin_form(self, _request: web.Request) -> web.Response:
        text = (SITES_DIR / "signin.html").read_text()
        return web.Response(text=text, content_type="text/html")

    async def _signin(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("username") != USERNAME or form.get("password") != PASSWORD:
            self.state.failed_logins += 1
            text = (
                (SITES_DIR / "signin.html")
                .read_text()
                .replace("<!--ERROR-->", '<p class="login-error">Wrong username or password</p>')
            )
            return web.Response(text=text, content_type="text/html", status=401)
        if self.state.otp_secret:
            pending = secrets.token_hex(8)
            self.state.otp_pending.add(pending)
            response = web.HTTPFound("/login/otp")
            response.set_cookie("otp_pending", pending, httponly=True)
            raise response
        self._signed_in_now()

    def _signed_in_now(self) -> NoReturn:
        self.state.logins += 1
        token = secrets.token_hex(16)
        self.state.sessions.add(token)
        response = web.HTTPFound("/login/")
        response.set_cookie(SESSION_COOKIE, token, max_age=86400, httponly=True)
        raise response

    async def _otp_form(self, _request: web.Request) -> web.Response:
        form = (
            '<form id="otp" method="post" action="/login/otp"><input name="code">'
            '<button type="submit">Verify</button></form>'
        )
        return web.Response(text=f"<!doctype html><body>{form}</body>", content_type="text/html")

    async def _otp(self, request: web.Request) -> web.Response:
        code = (await request.post()).get("code")
        secret = self.state.otp_secret or ""
        now = time.time()
        valid = {totp_code(secret, at) for at in (now, now - 30)}
        if request.cookies.get("otp_pending") not in self.state.otp_pending or code not in valid:
            self.state.failed_logins += 1
            raise web.HTTPFound("/login/signin")
        self._signed_in_now()

    async def _signout(self, request: web.Request) -> web.Response:
        self.state.sessions.discard(request.cookies.get(SESSION_COOKIE, ""))
        raise web.HTTPFound("/login/signin")

    async def _reply(self, request: web.Request) -> web.Response:
        site = request.match_info["site"]
        if site == "login" and not self._signed_in(request):
            return web.json_response({"error": "sign in first"}, status=401)
        body = await request.json()
        prompt = str(body.get("prompt", ""))
        trouble = await self._trouble(prompt)
        if trouble:
            return web.json_response({"trouble": trouble})
        await asyncio.sleep(0.05)  # a backend that thinks a little
        conv, turn, reply = self.state.turn(body.get("conv"), prompt, site)
        # The page's model choice and URL variant show in the reply, so tests can see them.
        for tag in (body.get("variant"), body.get("model")):
            if tag:
                reply = f"({tag}) {reply}"
        answer = {"conv": conv, "turn": turn, "reply": reply}
        if prompt.startswith("TROUBLE:late"):
            answer["late_trouble"] = "error"  # the banner comes with the answer's last word
        return web.json_response(answer)

    @staticmethod
    async def _new_lab_chat(request: web.Request) -> web.Response:
        # The round trip before the page clears the old chat.
        await asyncio.sleep(float(request.query.get("delay") or 0.08))
        return web.json_response({"ok": True})

    @staticmethod
    async def _trouble(prompt: str) -> str | None:
        if prompt.startswith("TROUBLE:slow"):
            await asyncio.sleep(60)
        if prompt.startswith("TROUBLE:error"):
            return "error"
        if prompt.startswith("TROUBLE:captcha"):
            return "captcha"
        return None

    async def _mark(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.state.marks[str(body.get("prompt"))] = {
            "first_at": body.get("first_at"),
            "done_at": body.get("done_at"),
        }
        return web.json_response({"ok": True})

    async def _history(self, request: web.Request) -> web.Response:
        site = request.match_info["site"]
        if site == "login" and not self._signed_in(request):
            return web.json_response({"error": "sign in first"}, status=401)
        messages = self.state.conversations.get(request.query.get("conv", ""), [])
        return web.json_response({"messages": messages})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        prompt = request.query.get("prompt", "")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        trouble = await self._trouble(prompt)
        if trouble:
            await response.write(f"event: trouble\ndata: {json.dumps(trouble)}\n\n".encode())
            return response
        conv, turn, reply = self.state.turn(request.query.get("conv"), prompt, "sse")
        await response.write(f"event: meta\ndata: {json.dumps({'conv': conv})}\n\n".encode())
        drip = prompt.startswith("TROUBLE:drip")
        timing = self.state.stream_timing.setdefault(prompt, StreamTiming())
        for token in reply.split(" ") if not drip else [f"{reply} "] + ["tick "] * 200:
            await asyncio.sleep(0.5 if drip else 0.04)
            await response.write(f"data: {json.dumps(token + ' ')}\n\n".encode())
            now = time.monotonic()
            timing.first_token_at = timing.first_token_at or now
            timing.last_token_at = now
        await response.write(b"event: done\ndata: {}\n\n")
        return response
