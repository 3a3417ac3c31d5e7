"""Discovery's own fixture chat sites, served by aiohttp on 127.0.0.1 in a thread.

Each site is built differently (see sites/*.html); they share a deterministic in-page bot
(sites/bot.js) whose n-th answer starts with ``Reply n:``. The login site keeps a session
cookie on the server, like a real members area.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from aiohttp import web

from tests.fixtures.threaded_app import ThreadedApp

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


class DiscoverySites(ThreadedApp):
    label = "fixture sites"

    def __init__(self) -> None:
        super().__init__()
        self.sessions: set[str] = set()
        self.logins = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

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
