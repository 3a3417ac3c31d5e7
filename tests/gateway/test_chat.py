"""Chat through the real gateway process to a real (fixture) OpenAI-compatible upstream."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from openai import OpenAI

CANARY = "sk-canary-9e8d7c6b5a"


@pytest.fixture
def gateway(clean_gateway):
    """This module's one gateway process, emptied before each test (a start takes seconds)."""
    return clean_gateway


@pytest.fixture
def fresh_gateway(gateway_factory):
    """A process of the test's own: its counters, its kill, its logs and files."""
    return gateway_factory()


def add_endpoint(client: httpx.Client, upstream, name: str = "gpt", **extra) -> dict:
    upstream.api_key = CANARY
    body = {
        "name": name,
        "display_name": name.upper(),
        "endpoint_type": "openai_api",
        "url": upstream.url,
        "model_name": "fixture-model",
        "credentials": {"api_key": CANARY},
        "input_cost_per_1k": 1.0,
        "output_cost_per_1k": 2.0,
        **extra,
    }
    created = client.post("/endpoints", json=body)
    assert created.status_code == 201, created.text
    started = client.post(f"/endpoints/{created.json()['id']}/start")
    assert started.json()["state"] == "healthy", started.text
    return started.json()


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
            name = "message"
    return events


def test_chat_returns_the_standard_response(gateway, openai_upstream):
    with gateway.client() as api:
        ep = add_endpoint(api, openai_upstream)
        response = api.post(
            f"/endpoints/{ep['id']}/chat", json={"prompt": "hello", "temperature": 0.2}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["content"] == "turn 1: hello"
    assert body["endpoint"] == "gpt" and body["model"] == "fixture-model"
    assert body["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 3,
        "total_tokens": 4,
        "estimated": False,
    }
    assert body["cost"] == pytest.approx((1 * 1.0 + 3 * 2.0) / 1000)
    assert body["latency_ms"] > 0 and body["time_to_first_token_ms"] is not None
    sent = openai_upstream.last_request
    assert sent.json["temperature"] == 0.2 and sent.json["model"] == "fixture-model"


def test_sessions_continue_and_history_is_sent(gateway, openai_upstream):
    with gateway.client() as api:
        ep = add_endpoint(api, openai_upstream)
        url = f"/endpoints/{ep['id']}/chat"
        first = api.post(url, json={"prompt": "one", "session_id": "conv-1"}).json()
        second = api.post(url, json={"prompt": "two", "session_id": "conv-1"}).json()
        assert (first["content"], second["content"]) == ("turn 1: one", "turn 2: two")
        assert second["session_id"] == "conv-1"
        sent = [m["content"] for m in openai_upstream.last_request.json["messages"]]
        assert sent == ["one", "turn 1: one", "two"]
        session = api.get("/sessions/conv-1").json()
        assert [m["role"] for m in session["messages"]] == ["user", "assistant"] * 2
        assert api.get("/sessions").json()[0]["id"] == "conv-1"
        assert api.delete("/sessions/conv-1").status_code == 204
        assert api.get("/sessions/conv-1").status_code == 404


def test_streaming_chat_over_sse(gateway, openai_upstream):
    openai_upstream.chunk_delay = 0.05
    with gateway.client() as api:
        ep = add_endpoint(api, openai_upstream)
        with api.stream(
            "POST",
            f"/endpoints/{ep['id']}/chat",
            json={"prompt": "stream these words", "stream": True},
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
    deltas = [data["delta"] for name, data in events if "delta" in data]
    assert len(deltas) >= 3 and "".join(deltas) == "turn 1: stream these words"
    done = events[-1][1]
    assert done["done"] is True and done["content"] == "turn 1: stream these words"
    assert done["time_to_first_token_ms"] < done["latency_ms"]


def settled(api, endpoint_id: str, state: str, timeout: float = 5.0) -> dict:
    """The endpoint once its stored state is ``state`` (health changes are written just
    after the answer that caused them), or as it is when the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        endpoint = api.get(f"/endpoints/{endpoint_id}").json()
        if endpoint["state"] == state or time.monotonic() > deadline:
            return endpoint
        time.sleep(0.05)


@pytest.mark.parametrize(
    "fault,status,kind,state",
    [
        ({"status": 401}, 401, "auth_error", "failed"),
        ({"status": 429, "headers": {"Retry-After": "7"}}, 429, "rate_limited", "degraded"),
        ({"status": 500}, 502, "unavailable", "healthy"),
        ("garbage", 502, "protocol_error", "healthy"),
        ("timeout", 504, "timeout", "healthy"),
    ],
)
def test_upstream_failures_map_to_clear_errors(
    gateway, openai_upstream, fault, status, kind, state
):
    with gateway.client() as api:
        ep = add_endpoint(api, openai_upstream, request_timeout=1.0)
        if fault == "garbage":
            openai_upstream.garbage_next()
        elif fault == "timeout":
            openai_upstream.delay_next(3.0)
        else:
            openai_upstream.fail_next(**fault)
        response = api.post(f"/endpoints/{ep['id']}/chat", json={"prompt": "hi"})
        assert response.status_code == status, response.text
        assert response.json()["kind"] == kind and response.json()["detail"]
        assert CANARY not in response.text
        if status == 429:
            assert response.headers["retry-after"] == "7"
        # The endpoint and its data are intact and it keeps serving; rejected credentials
        # fail it until an operator acts, and a rate limit marks it degraded for a while.
        again = settled(api, ep["id"], state)
        assert again["state"] == state and again["credential_keys"] == ["api_key"]
        if state == "failed":
            assert again["state_reason"].startswith("credentials rejected")
            assert api.post(f"/endpoints/{ep['id']}/start").json()["state"] == "healthy"
        assert api.post(f"/endpoints/{ep['id']}/chat", json={"prompt": "ok"}).status_code == 200
        assert api.get(f"/endpoints/{ep['id']}/metrics").json()["live"]["errors"] == 1


def test_gateway_rate_limit_is_a_clear_429(gateway, openai_upstream):
    with gateway.client() as api:
        ep = add_endpoint(api, openai_upstream, rate_limit_per_minute=1)
        assert api.post(f"/endpoints/{ep['id']}/chat", json={"prompt": "a"}).status_code == 200
        refused = api.post(f"/endpoints/{ep['id']}/chat", json={"prompt": "b"})
    assert refused.status_code == 429 and "1 requests per minute" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) >= 1


def test_openai_client_chat_stream_and_sessions(gateway, openai_upstream):
    with gateway.client() as api:
        add_endpoint(api, openai_upstream, name="fixture-gpt")
    client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    models = [m.id for m in client.models.list()]
    assert models == ["fixture-gpt"]
    completion = client.chat.completions.create(
        model="fixture-gpt", messages=[{"role": "user", "content": "hi there"}]
    )
    assert completion.choices[0].message.content == "turn 1: hi there"
    assert completion.usage.total_tokens == 2 + 4
    chunks = list(
        client.chat.completions.create(
            model="fixture-gpt",
            messages=[{"role": "user", "content": "count words"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "turn 1: count words" and chunks[-1].usage.completion_tokens == 4
    headers = {"X-Session-Id": "oa-session"}
    for word in ("alpha", "beta"):
        reply = client.chat.completions.create(
            model="fixture-gpt", messages=[{"role": "user", "content": word}], extra_headers=headers
        )
    assert reply.choices[0].message.content == "turn 2: beta"


def test_openai_client_sees_openai_shaped_errors(gateway, openai_upstream):
    import openai

    with gateway.client() as api:
        add_endpoint(api, openai_upstream, name="err-gpt")
    client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    # A wait longer than the runtime's retry cap reaches the client instead of being waited out.
    openai_upstream.fail_next(status=429, headers={"Retry-After": "30"})
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="err-gpt", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_mid_stream_failure_ends_with_an_error_event(gateway, openai_upstream):
    with gateway.client() as api:
        add_endpoint(api, openai_upstream, name="breaks")
        openai_upstream.stream_break_next(after_chunks=2)
        body = {
            "model": "breaks",
            "messages": [{"role": "user", "content": "a b c d e f"}],
            "stream": True,
        }
        with api.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] != "data: [DONE]"
    error = json.loads(lines[-1][6:])["error"]
    assert error["code"] in ("unavailable", "protocol_error") and error["message"]


def test_system_metrics_count_traffic(fresh_gateway, openai_upstream):
    with fresh_gateway.client() as api:
        ep = add_endpoint(api, openai_upstream)
        for _ in range(4):
            api.post(f"/endpoints/{ep['id']}/chat", json={"prompt": "x"})
        openai_upstream.fail_next(status=500)
        api.post(f"/endpoints/{ep['id']}/chat", json={"prompt": "x"})
        metrics = api.get("/system/metrics").json()
        listed = api.get("/endpoints", params={"state": "healthy"}).json()
    assert metrics["running_endpoints"] == 1 and metrics["total_requests"] == 5
    assert metrics["success_rate"] == 80.0 and metrics["requests_per_second"] > 0
    assert metrics["p95_latency_ms"] > 0
    # Four answers of 1 prompt word and 3 answer words at 1.0 / 2.0 per 1k tokens.
    assert (metrics["tokens_in"], metrics["tokens_out"]) == (4, 12)
    assert metrics["cost"] == pytest.approx(4 * (1 * 1.0 + 3 * 2.0) / 1000)
    stats = listed[0]["stats"]
    assert (stats["requests"], stats["errors"], stats["tokens_out"]) == (5, 1, 12)


def test_stored_minute_buckets_hold_the_traffic(gateway, openai_upstream):
    with gateway.client() as api:
        ep = add_endpoint(api, openai_upstream)
        for _ in range(3):
            api.post(f"/endpoints/{ep['id']}/chat", json={"prompt": "two words"})
        openai_upstream.fail_next(status=500)
        api.post(f"/endpoints/{ep['id']}/chat", json={"prompt": "x"})
        deadline = time.monotonic() + 10
        while True:  # the writer flushes about once a second
            buckets = api.get(f"/endpoints/{ep['id']}/metrics").json()["buckets"]
            if sum(b["requests"] for b in buckets) == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert sum(b["requests"] for b in buckets) == 4
    assert sum(b["errors"] for b in buckets) == 1
    assert sum(b["tokens_in"] for b in buckets) == 3 * 2
    assert sum(b["tokens_out"] for b in buckets) == 3 * 4  # "turn 1: two words"
    assert sum(b["cost"] for b in buckets) == pytest.approx(3 * (2 * 1.0 + 4 * 2.0) / 1000)
    assert sum(sum(b["latency_hist"]) for b in buckets) == 4


def test_sigkill_during_traffic_loses_nothing_acknowledged(
    fresh_gateway, openai_upstream, tmp_path
):
    with fresh_gateway.client() as api:
        ep = add_endpoint(api, openai_upstream)
        acknowledged: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(base_url=fresh_gateway.url, timeout=10) as c:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    try:
                        r = c.post(
                            f"/endpoints/{ep['id']}/chat",
                            json={"prompt": f"m{i}", "session_id": "durable"},
                        )
                    except httpx.HTTPError:
                        return
                    if r.status_code == 200:
                        acknowledged.append(f"m{i}")

        worker = threading.Thread(target=traffic)
        worker.start()
        time.sleep(1.5)
        fresh_gateway.kill()
        stop.set()
        worker.join(15)
    assert len(acknowledged) >= 3
    fresh_gateway.start()
    with fresh_gateway.client() as api:
        endpoint = api.get(f"/endpoints/{ep['id']}").json()
        assert endpoint["state"] == "healthy" and endpoint["desired_state"] == "running"
        stored = api.get("/sessions/durable").json()["messages"]
        prompts = [m["content"] for m in stored if m["role"] == "user"]
        assert prompts[: len(acknowledged)] == acknowledged
        # The conversation goes on from where it was.
        more = api.post(
            f"/endpoints/{ep['id']}/chat", json={"prompt": "next", "session_id": "durable"}
        ).json()
        assert more["content"] == f"turn {len(prompts) + 1}: next"


def test_credentials_never_leak(fresh_gateway, openai_upstream):
    with fresh_gateway.client() as api:
        ep = add_endpoint(api, openai_upstream)
        openai_upstream.fail_next(status=401)
        texts = [
            api.post(f"/endpoints/{ep['id']}/chat", json={"prompt": "x"}).text,
            api.get("/endpoints").text,
            api.get(f"/endpoints/{ep['id']}/events").text,
            api.get("/system/metrics").text,
        ]
    assert all(CANARY not in t for t in texts)
    assert openai_upstream.last_request.headers["Authorization"] == f"Bearer {CANARY}"
    fresh_gateway.stop()
    assert CANARY not in fresh_gateway.logs()
    for path in fresh_gateway.data_dir.iterdir():
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path


def test_v1_passes_request_settings_upstream(gateway, openai_upstream):
    with gateway.client() as api:
        add_endpoint(api, openai_upstream, name="settings-gpt")
        body = {
            "model": "settings-gpt",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "q"},
            ],
            "temperature": 0.35,
            "max_tokens": 17,
        }
        assert api.post("/v1/chat/completions", json=body).status_code == 200
        sent = openai_upstream.last_request.json
        assert sent["temperature"] == 0.35 and sent["max_tokens"] == 17
        assert sent["messages"] == [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "q"},
        ]
        newer = {**body, "max_tokens": None, "max_completion_tokens": 23, "temperature": 0}
        assert api.post("/v1/chat/completions", json=newer).status_code == 200
        assert openai_upstream.last_request.json["max_tokens"] == 23
        assert openai_upstream.last_request.json["temperature"] == 0


def test_v1_errors_keep_retry_after(gateway, openai_upstream):
    with gateway.client() as api:
        add_endpoint(api, openai_upstream, name="retry-gpt")
        openai_upstream.fail_next(status=429, headers={"Retry-After": "7"})
        body = {"model": "retry-gpt", "messages": [{"role": "user", "content": "x"}]}
        response = api.post("/v1/chat/completions", json=body)
        assert response.status_code == 429 and response.headers["retry-after"] == "7"
        assert response.json()["error"]["type"] == "rate_limit_error"
        openai_upstream.fail_next(status=429, headers={"Retry-After": "9"})
        streamed = api.post("/v1/chat/completions", json={**body, "stream": True})
        # A stream that fails before its first chunk is answered as a plain error.
        assert streamed.status_code == 429 and streamed.headers["retry-after"] == "9"
        assert streamed.json()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("finish", ["length", "content_filter"])
def test_v1_reports_the_upstream_finish_reason(gateway, openai_upstream, finish):
    openai_upstream.finish_reason = finish
    with gateway.client() as api:
        add_endpoint(api, openai_upstream, name="finish-gpt")
        body = {"model": "finish-gpt", "messages": [{"role": "user", "content": "a b c"}]}
        whole = api.post("/v1/chat/completions", json=body).json()
        assert whole["choices"][0]["finish_reason"] == finish
        with api.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == finish and set(finishes[:-1]) == {None}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "turn 1: a b c"


@pytest.mark.parametrize("log_format", ["text", "json"])  # json wraps the server's send
def test_a_client_that_goes_away_stops_the_upstream_stream(
    clean_gateway, gateway_factory, openai_upstream, log_format
):
    # The module's gateway logs as text (the default); json needs a process of its own.
    gateway = (
        clean_gateway if log_format == "text" else gateway_factory(env={"AIEM_LOG_FORMAT": "json"})
    )
    openai_upstream.chunk_delay = 0.1
    words = " ".join(f"w{i}" for i in range(40))  # 40+ events, about 4 s in all
    body = {"model": "long", "messages": [{"role": "user", "content": words}], "stream": True}
    with gateway.client() as api:
        add_endpoint(api, openai_upstream, name="long")
        with api.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.headers["X-Aiem-Endpoint"] == "long"
            for line in response.iter_lines():
                if '"content":"turn' in line:
                    break  # the first text arrived: hang up
    time.sleep(1.0)
    sent = len(openai_upstream.stream_sent_at)
    time.sleep(0.5)
    assert len(openai_upstream.stream_sent_at) == sent  # the upstream stream was closed
    assert sent < 20
