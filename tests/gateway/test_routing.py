"""Groups on /v1: routing by priority and load, fallback along the members with the session's
history, errors that never fall back, streams that fall back only before their first chunk,
and the names endpoints and groups share."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import Iterator

import pytest

from tests.fixtures.upstreams import OpenAIUpstream

GROUP = "team"


@pytest.fixture
def trio() -> Iterator[list[OpenAIUpstream]]:
    servers = [OpenAIUpstream().start() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()


def member(name: str, upstream: OpenAIUpstream, priority: int, **extra) -> dict:
    return {
        "name": name,
        "endpoint_type": "openai_api",
        "url": upstream.url,
        "model_name": "fixture-model",
        "group_name": GROUP,
        "priority": priority,
        "start": True,
        **extra,
    }


async def make_group(api, trio, **extra) -> None:
    for index, (name, upstream) in enumerate(zip("abc", trio, strict=True)):
        created = await api.post("/endpoints", json=member(name, upstream, index + 1, **extra))
        assert created.status_code == 201, created.text


def ask(text: str, *, stream: bool = False, model: str = GROUP) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


def chat_requests(upstream: OpenAIUpstream) -> int:
    return sum(1 for r in upstream.requests if r.path.endswith("/chat/completions"))


def data_lines(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


async def test_hang_then_500_answers_from_the_third_with_the_history(api, trio):
    a, b, c = trio
    await make_group(api, trio, request_timeout=1.0)
    session = {"X-Session-Id": "conv-1"}
    first = await api.post("/v1/chat/completions", json=ask("hello"), headers=session)
    assert first.status_code == 200, first.text
    assert first.headers["X-Aiem-Endpoint"] == "a" and first.json()["endpoint"] == "a"
    a.delay_next(5.0, path="chat")
    b.fail_next(500, path="chat")
    second = await api.post("/v1/chat/completions", json=ask("again"), headers=session)
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["choices"][0]["message"]["content"] == "turn 2: again"
    assert body["endpoint"] == "c" and second.headers["X-Aiem-Endpoint"] == "c"
    assert body["model"] == GROUP
    sent = [m["content"] for m in c.last_request.json["messages"]]
    assert sent == ["hello", "turn 1: hello", "again"]
    assert (chat_requests(a), chat_requests(b), chat_requests(c)) == (2, 1, 1)
    stored = (await api.get("/sessions/conv-1")).json()["messages"]
    assert [m["content"] for m in stored][-2:] == ["again", "turn 2: again"]


async def test_fallbacks_stop_at_the_setting(make_api, trio):
    api, _ = await make_api(AIEM_MAX_FALLBACKS="1")
    a, b, c = trio
    await make_group(api, trio)
    a.fail_next(502, path="chat")
    b.fail_next(503, path="chat")
    answer = await api.post("/v1/chat/completions", json=ask("x"))
    assert answer.status_code == 502
    assert "HTTP 503" in answer.json()["error"]["message"]
    assert chat_requests(c) == 0


@pytest.mark.parametrize("status", [400, 401])
async def test_caller_and_credential_errors_never_fall_back(api, trio, status):
    a, b, c = trio
    await make_group(api, trio)
    a.fail_next(status, path="chat")
    answer = await api.post("/v1/chat/completions", json=ask("x"))
    assert answer.status_code == status
    assert answer.json()["error"]["type"] in ("invalid_request_error", "authentication_error")
    assert (chat_requests(a), chat_requests(b), chat_requests(c)) == (1, 0, 0)


async def test_stream_falls_back_before_its_first_chunk(api, trio):
    a, b, _ = trio
    await make_group(api, trio)
    a.stream_break_next(after_chunks=1)  # the role event only, then the connection drops
    answer = await api.post("/v1/chat/completions", json=ask("one two", stream=True))
    assert answer.status_code == 200 and answer.headers["X-Aiem-Endpoint"] == "b"
    events = data_lines(answer.text)
    assert events[-1] == "[DONE]"
    text = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or ""
        for e in events[:-1]
        if json.loads(e)["choices"]
    )
    assert text == "turn 1: one two"
    assert chat_requests(a) == 1 and chat_requests(b) == 1


async def test_mid_stream_failure_ends_with_an_error_event(api, trio):
    a, b, _ = trio
    await make_group(api, trio)
    a.stream_break_next(after_chunks=2)  # one piece of text reaches the client first
    answer = await api.post("/v1/chat/completions", json=ask("one two three", stream=True))
    assert answer.status_code == 200 and answer.headers["X-Aiem-Endpoint"] == "a"
    events = data_lines(answer.text)
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == "turn "
    error = json.loads(events[-1])["error"]
    assert error["code"] == "unavailable" and error["status"] == 502
    assert chat_requests(b) == 0


async def test_stream_whose_candidates_all_fail_is_a_plain_error(api, trio):
    await make_group(api, trio)
    for upstream in trio:
        upstream.fail_next(500, path="chat")
    answer = await api.post("/v1/chat/completions", json=ask("x", stream=True))
    assert answer.status_code == 502
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["error"]["code"] == "unavailable"


async def test_priority_then_least_busy(make_api, trio):
    api, rt = await make_api()
    await make_group(api, trio)
    await api.patch("/endpoints/c", json={"priority": 1})
    order = [e.name for e in await rt.route(GROUP)]
    assert order == ["a", "c", "b"]
    rt.manager.by_name["a"].gate.in_flight = 3
    assert [e.name for e in await rt.route(GROUP)] == ["c", "a", "b"]
    rt.manager.by_name["a"].gate.in_flight = 0


def open_breaker(live) -> None:
    for _ in range(live.breaker.threshold):
        live.breaker.record_failure()
    assert not live.routable()


async def test_members_with_an_open_breaker_are_skipped(make_api, trio):
    api, rt = await make_api()
    a, b, _ = trio
    await make_group(api, trio)
    open_breaker(rt.manager.by_name["a"])
    answer = await api.post("/v1/chat/completions", json=ask("x"))
    assert answer.json()["endpoint"] == "b" and chat_requests(a) == 0
    for name in "bc":
        open_breaker(rt.manager.by_name[name])
    refused = await api.post("/v1/chat/completions", json=ask("x"))
    assert refused.status_code == 503 and 25 <= int(refused.headers["Retry-After"]) <= 30
    assert refused.json()["error"]["code"] == "endpoint_cooling"


async def test_a_short_retry_after_is_waited_out_on_the_same_endpoint(api, trio):
    a, b, _ = trio
    await make_group(api, trio)
    a.fail_next(429, headers={"Retry-After": "0"}, path="chat")
    answer = await api.post("/v1/chat/completions", json=ask("x"))
    assert answer.json()["endpoint"] == "a"
    assert chat_requests(a) == 2 and chat_requests(b) == 0
    a.fail_next(
        429, headers={"Retry-After": "60"}, path="chat"
    )  # too long to wait: the next member
    answer = await api.post("/v1/chat/completions", json=ask("y"))
    assert answer.json()["endpoint"] == "b"


async def test_models_lists_endpoints_and_groups(api, trio):
    await make_group(api, trio)
    await api.post("/endpoints/b/stop")
    models = {m["id"]: m for m in (await api.get("/v1/models")).json()["data"]}
    assert set(models) == {"a", "c", GROUP}
    assert models[GROUP]["group"] is True and models[GROUP]["members"] == ["a", "c"]
    assert models["a"]["owned_by"] == "openai_api"


async def test_endpoint_and_group_names_collide_with_409(api, trio):
    await make_group(api, trio)
    same_as_group = await api.post("/endpoints", json={**member(GROUP, trio[0], 1), "start": False})
    assert same_as_group.status_code == 409 and "group" in same_as_group.json()["detail"]
    body = {**member("d", trio[0], 1), "group_name": "a", "start": False}
    group_as_endpoint = await api.post("/endpoints", json=body)
    assert group_as_endpoint.status_code == 409
    assert "endpoint" in group_as_endpoint.json()["detail"]
    patched = await api.patch("/endpoints/c", json={"group_name": "b"})
    assert patched.status_code == 409
    assert (await api.get("/endpoints/c")).json()["group_name"] == GROUP
    bad = await api.patch("/endpoints/c", json={"group_name": "has space"})
    assert bad.status_code == 422


async def test_unknown_model_is_404_in_the_openai_shape(api, trio):
    await make_group(api, trio)
    missing = await api.post("/v1/chat/completions", json=ask("x", model="no-such-group"))
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert error["type"] == "not_found_error" and "no-such-group" in error["message"]
    for name in "abc":
        await api.post(f"/endpoints/{name}/stop")
    idle = await api.post("/v1/chat/completions", json=ask("x"))
    assert idle.status_code == 409 and "no member" in idle.json()["error"]["message"]


# ---- admission ------------------------------------------------------------------------------


def single(upstream: OpenAIUpstream, **extra) -> dict:
    return {
        "name": "solo",
        "endpoint_type": "openai_api",
        "url": upstream.url,
        "model_name": "fixture-model",
        "start": True,
        **extra,
    }


async def test_a_burst_over_the_cap_queues_in_order(api, openai_upstream):
    created = await api.post("/endpoints", json=single(openai_upstream, max_concurrent_requests=1))
    assert created.json()["max_concurrent_requests"] == 1
    for _ in range(3):
        openai_upstream.delay_next(0.3, path="chat")
    tasks = []
    for n in range(3):
        tasks.append(
            asyncio.create_task(api.post("/v1/chat/completions", json=ask(f"q{n}", model="solo")))
        )
        await asyncio.sleep(0.05)
    answers = await asyncio.gather(*tasks)
    assert [a.status_code for a in answers] == [200, 200, 200]
    chats = [r for r in openai_upstream.requests if r.path.endswith("/chat/completions")]
    assert [r.json["messages"][-1]["content"] for r in chats] == ["q0", "q1", "q2"]
    gaps = [b.at - a.at for a, b in itertools.pairwise(chats)]
    assert all(gap >= 0.25 for gap in gaps)  # one at a time: each waited for the one before


async def test_a_request_that_queues_too_long_gets_429_with_retry_after(make_api, openai_upstream):
    api, _ = await make_api(AIEM_QUEUE_TIMEOUT="0.2")
    await api.post("/endpoints", json=single(openai_upstream, max_concurrent_requests=1))
    openai_upstream.delay_next(1.0, path="chat")
    slow = asyncio.create_task(api.post("/v1/chat/completions", json=ask("slow", model="solo")))
    await asyncio.sleep(0.1)
    refused = await api.post("/v1/chat/completions", json=ask("late", model="solo"))
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "capacity_exceeded" and "0.2 s" in error["message"]
    assert (await slow).status_code == 200
    chats = [r for r in openai_upstream.requests if r.path.endswith("/chat/completions")]
    assert [r.json["messages"][-1]["content"] for r in chats] == ["slow"]


async def test_rest_endpoints_default_to_a_high_cap(api, openai_upstream):
    created = await api.post("/endpoints", json=single(openai_upstream))
    assert created.json()["max_concurrent_requests"] == 128
    answers = await asyncio.gather(
        *(api.post("/v1/chat/completions", json=ask(f"q{n}", model="solo")) for n in range(64))
    )
    assert {a.status_code for a in answers} == {200}


async def test_an_unreachable_member_is_retried_once_then_passed_over(make_api, trio):
    api, rt = await make_api()
    failures: list[str] = []
    rt.chat_service.outcome_listeners.append(
        lambda live, error, _ms: failures.append(live.name) if error else None
    )
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    await make_group(api, trio)
    await api.patch("/endpoints/a", json={"url": closed})
    answer = await api.post("/v1/chat/completions", json=ask("x"))
    assert answer.status_code == 200 and answer.json()["endpoint"] == "b"
    assert failures == ["a", "a"]  # refused twice (nothing was sent), then the next member
