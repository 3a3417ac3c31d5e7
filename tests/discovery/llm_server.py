"""A scripted LLM speaking the OpenAI chat API on 127.0.0.1, for the discovery tests.

Each request takes the next answer from the script (the last one repeats). An answer is a
function of the page data the drafter sent (the candidates it listed), so a test can say
"answer with the index of the textarea whose placeholder is X" without knowing indices.
Every request is kept for the tests to inspect (what the model was shown).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.fixtures.threaded_app import ThreadedApp

Answer = Callable[[list[dict[str, Any]]], str]


def page_candidates(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    text = messages[-1]["content"]
    match = re.search(r"<UNTRUSTED-PAGE-DATA>\n(.*)\n</UNTRUSTED-PAGE-DATA>", text, re.S)
    return json.loads(match.group(1))["candidates"] if match else []


def index_where(candidates: list[dict[str, Any]], **attrs: str) -> int | None:
    for candidate in candidates:
        found = candidate["attributes"]
        text = candidate.get("text", "")
        if all(found.get(k) == v or (k == "text" and text == v) for k, v in attrs.items()):
            return int(candidate["index"])
    return None


def choose(input_: dict[str, str], send: dict[str, str] | None, **extra: Any) -> Answer:
    """An answer naming the elements that carry the given attributes."""

    def answer(candidates: list[dict[str, Any]]) -> str:
        body = {
            "input": index_where(candidates, **input_),
            "send": index_where(candidates, **send) if send else None,
            "new_chat": None,
            "confidence": 0.9,
            "notes": "chosen by script",
        }
        body.update(extra)
        return json.dumps(body)

    return answer


def fixed(text: str) -> Answer:
    return lambda _candidates: text


class ScriptedLLM(ThreadedApp):
    label = "scripted LLM"

    def __init__(self) -> None:
        super().__init__()
        self.script: list[Answer] = []
        self.requests: list[dict[str, Any]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def enqueue(self, *answers: Answer) -> ScriptedLLM:
        self.script.extend(answers)
        return self

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        return app

    async def _complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        step = min(len(self.requests), len(self.script)) - 1
        content = self.script[step](page_candidates(body["messages"])) if self.script else ""
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "scripted"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )
