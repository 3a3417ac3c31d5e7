"""A local server speaking Z.ai's chat web protocol, for the ``zai_web`` tests.

Replies are deterministic: the thinking phase says ``Counting the turns.`` and the answer is
``[zai] turn <n>: you said '<prompt>'`` where n counts the user messages sent. A prompt of
``FAIL:error`` gets an error event, ``FAIL:busy`` an HTTP 429, ``FAIL:cut`` a stream that
stops before ``done``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fixtures.threaded_app import ThreadedApp

ZAI_EMAIL, ZAI_PASSWORD = "ada@example.org", "zai-secret-password"


@dataclass
class ZaiState:
    tokens: set[str] = field(default_factory=set)
    guest_tokens: int = 0
    signins: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps({'type': 'chat:completion', 'data': data})}\n\n".encode()


class ZaiServer(ThreadedApp):
    label = "Z.ai fixture server"

    def __init__(self) -> None:
        super().__init__()
        self.state = ZaiState()

    @property
    def base(self) -> str:
        return self.base_url

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/auths/", self._auths)
        app.router.add_post("/api/v1/auths/signin", self._signin)
        app.router.add_post("/api/chat/completions", self._completions)
        return app

    def _new_token(self) -> str:
        token = "tok-" + secrets.token_hex(12)
        self.state.tokens.add(token)
        return token

    def _token_of(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip()
        return token if token in self.state.tokens else None

    async def _auths(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization"):
            if self._token_of(request) is None:
                return web.json_response({"detail": "invalid token"}, status=401)
            return web.json_response({"id": "u1", "role": "user"})
        self.state.guest_tokens += 1
        return web.json_response({"id": "guest", "role": "guest", "token": self._new_token()})

    async def _signin(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("email") != ZAI_EMAIL or body.get("password") != ZAI_PASSWORD:
            return web.json_response({"detail": "The email or password is incorrect"}, status=400)
        self.state.signins += 1
        return web.json_response({"id": "u1", "role": "user", "token": self._new_token()})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if self._token_of(request) is None:
            return web.json_response({"detail": "Not authenticated"}, status=401)
        body = await request.json()
        self.state.bodies.append(body)
        self.state.headers.append(dict(request.headers))
        user_messages = [m for m in body["messages"] if m["role"] == "user"]
        prompt = user_messages[-1]["content"]
        if prompt == "FAIL:busy":
            return web.json_response({"detail": "too many requests"}, status=429)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if prompt == "FAIL:error":
            await response.write(event({"error": {"detail": "model overloaded"}}))
            return response
        await self._answer(response, len(user_messages), prompt, body)
        return response

    async def _answer(
        self, response: web.StreamResponse, turn: int, prompt: str, body: dict[str, Any]
    ) -> None:
        thinking_on = body.get("features", {}).get("enable_thinking", False)
        opening = '<details type="reasoning" done="false">\n<summary>Thinking…</summary>\n'
        if thinking_on:
            for piece in (opening + "> Counting", " the", " turns."):
                await response.write(event({"delta_content": piece, "phase": "thinking"}))
                await asyncio.sleep(0.01)
        reply = f"[zai] turn {turn}: you said '{prompt}'"
        head, _, rest = reply.partition(":")
        closing = '<details type="reasoning" done="true">...</details>\n'
        await response.write(event({"edit_content": closing + head + ":", "phase": "answer"}))
        for word in rest.split(" ")[1:]:
            await asyncio.sleep(0.01)
            await response.write(event({"delta_content": " " + word, "phase": "answer"}))
        if prompt == "FAIL:cut":
            return
        usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        await response.write(event({"phase": "other", "usage": usage}))
        await response.write(event({"phase": "done", "done": True}))
