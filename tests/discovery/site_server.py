"""Discovery's own fixture chat sites, served by aiohttp on 127.0.0.1 in a thread.

Each site is built differently (see sites/*.html); they share a deterministic in-page bot
(sites/bot.js) whose n-th answer starts with ``Reply n:``. The login site keeps a session
cookie on the server, like a real members area.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from pathlib import Path

from aiohttp import web

SITES_DIR = Path(__file__).parent / "sites"
EMAIL, PASSWORD = "ada@example.com", "correct horse battery staple"
COOKIE = "members"

PAGES = {
    "/hashed/": "hashed.html",
    "/decoys/": "decoys.html",
    "/divbutton/": "divbutton.html",
    "/streaming/": "streaming.html",
    "/shadow/": "shadow.html",
    "/iframe/": "iframe_host.html",
    "/iframe/widget": "iframe_widget.html",
    "/convurl/": "convurl.html",
    "/convurl/c/{conv}": "convurl.html",
    "/nochat/": "nochat.html",
    "/injection/": "injection.html",
}


class DiscoverySites:
    def __init__(self) -> None:
        self.port = 0
        self.sessions: set[str] = set()
        self.logins = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> DiscoverySites:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fixture sites did not start")
        return self

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())
        ready.set()
        self._loop.run_forever()

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def app(self) -> web.Application:
        app = web.Application()
        for path, name in PAGES.items():
            app.router.add_get(path, self._file(name))
        app.router.add_get("/static/bot.js", self._file("bot.js", "application/javascript"))
        app.router.add_get("/login/", self._members)
        app.router.add_get("/login/signin", self._file("signin.html"))
        app.router.add_post("/login/signin", self._signin)
        return app

    @staticmethod
    def _file(name: str, content_type: str = "text/html"):
        async def handler(_request: web.Request) -> web.Response:
            return web.Response(text=(SITES_DIR / name).read_text(), content_type=content_type)

        return handler

    async def _members(self, request: web.Request) -> web.Response:
        if request.cookies.get(COOKIE) not in self.sessions:
            raise web.HTTPFound("/login/signin")
        return web.Response(text=(SITES_DIR / "members.html").read_text(), content_type="text/html")

    async def _signin(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("email") != EMAIL or form.get("pass") != PASSWORD:
            return web.Response(
                text=(SITES_DIR / "signin.html").read_text(), content_type="text/html", status=401
            )
        self.logins += 1
        token = secrets.token_hex(8)
        self.sessions.add(token)
        response = web.HTTPFound("/login/")
        response.set_cookie(COOKIE, token, httponly=True)
        raise response
