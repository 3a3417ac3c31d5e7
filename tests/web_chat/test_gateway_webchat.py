"""Web chat endpoints through the real gateway process: restarts, streaming, the seed example."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.web_chat.test_zai_web import SEED_EXAMPLE
from tests.web_chat.webchat_sites import PASSWORD, SiteServer, bot_reply
from tests.web_chat.webchat_support import SITE_CONFIGS, SITE_PATHS, good_credentials

pytestmark = [pytest.mark.browser]


@pytest.fixture
def gateway(clean_gateway):
    """This module's one gateway process, emptied before each test (a start takes seconds)."""
    return clean_gateway


def web_endpoint(sites: SiteServer, site: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "display_name": f"{site} fixture site",
        "endpoint_type": "web_chat",
        "url": sites.url(SITE_PATHS[site]),
        "model_name": f"{site}-bot",
        "config": SITE_CONFIGS[site],
        "browser_config": {"headless": True, "anti_detection": True},
        "persistent_session": True,
        "request_timeout": 30,
        **extra,
    }


def lab_endpoint(
    sites: SiteServer, name: str, query: str, config: dict[str, Any]
) -> dict[str, Any]:
    """The lab site (tests/web_chat/sites/lab.html) with the quirks ``query`` switches on."""
    return {
        "name": name,
        "endpoint_type": "web_chat",
        "url": sites.url(f"/lab/?{query}"),
        "model_name": "lab-bot",
        "config": config,
        "browser_config": {"headless": True},
        "request_timeout": 30,
    }


def sse_payloads(response: httpx.Response) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:])
        for line in response.iter_lines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def create_and_start(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    created = api.post("/endpoints", json=body)
    assert created.status_code == 201, created.text
    started = api.post(f"/endpoints/{created.json()['id']}/start")
    assert started.status_code == 200 and started.json()["state"] == "healthy", started.text
    return started.json()


def wait_healthy(api: httpx.Client, endpoint_id: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = api.get(f"/endpoints/{endpoint_id}").json()["state"]
        if state == "healthy":
            return
        time.sleep(0.2)
    raise AssertionError(f"endpoint not healthy after restart (state {state})")


def test_turn_three_after_a_gateway_restart_continues_without_login(
    gateway, sites: SiteServer
) -> None:
    body = web_endpoint(sites, "login", "members", credentials=good_credentials())
    logins_before = sites.state.logins
    with gateway.client() as api:
        endpoint = create_and_start(api, body)
        url = f"/endpoints/{endpoint['id']}/chat"
        for turn, prompt in enumerate(["one", "two"], 1):
            answer = api.post(url, json={"prompt": prompt, "session_id": "gw-session"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["content"] == bot_reply("login", turn, prompt)
        listed = api.get(f"/endpoints/{endpoint['id']}").text
    assert PASSWORD not in listed
    assert sites.state.logins == logins_before + 1

    gateway.restart()
    with gateway.client() as api:
        wait_healthy(api, endpoint["id"])
        third = api.post(url, json={"prompt": "three", "session_id": "gw-session"})
    assert third.status_code == 200, third.text
    assert third.json()["content"] == bot_reply("login", 3, "three")
    assert sites.state.logins == logins_before + 1, "the restart restored the login"
    assert PASSWORD not in gateway.logs()


def test_streaming_through_v1_chat_completions(gateway, sites: SiteServer) -> None:
    prompt = "stream through the gateway"
    with gateway.client() as api:
        create_and_start(api, web_endpoint(sites, "sse", "streamer"))
        arrivals: list[tuple[float, str]] = []
        with api.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "streamer",
                "stream": True,
                "messages": [{"role": "user", "content": prompt}],
            },
            headers={"X-Session-Id": "gw-stream"},
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                delta = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                if delta:
                    arrivals.append((time.monotonic(), delta))
    assert "".join(d for _, d in arrivals).strip() == bot_reply("sse", 1, prompt)
    assert len(arrivals) >= 3
    assert arrivals[0][0] < sites.state.stream_timing[prompt].last_token_at


def test_streaming_through_the_endpoint_chat_route(gateway, sites: SiteServer) -> None:
    with gateway.client() as api:
        endpoint = create_and_start(api, web_endpoint(sites, "editable", "typist"))
        with api.stream(
            "POST",
            f"/endpoints/{endpoint['id']}/chat",
            json={"prompt": "hello there", "session_id": "typing", "stream": True},
        ) as response:
            events = sse_payloads(response)
    deltas = [e["delta"] for e in events if e.get("delta")]
    assert len(deltas) >= 2
    assert events[-1]["done"] is True
    assert events[-1]["content"] == bot_reply("editable", 1, "hello there")


def test_the_seed_zai_example_is_accepted(gateway) -> None:
    body = {**SEED_EXAMPLE, "credentials": dict(SEED_EXAMPLE["credentials"])}
    with gateway.client() as api:
        created = api.post("/endpoints", json=body)
        assert created.status_code == 201, created.text
        shown = api.get(f"/endpoints/{created.json()['id']}").json()
        types = {p["endpoint_type"]: p for p in api.get("/providers").json()}
    assert shown["endpoint_type"] == "zai_web" and shown["persistent_session"] is True
    assert SEED_EXAMPLE["credentials"]["password"] not in json.dumps(shown)
    assert {"web_chat", "custom_web", "zai_web"} <= set(types)
    assert "assistant_message" in json.dumps(types["web_chat"]["config_schema"])


def wait_for_event(api: httpx.Client, endpoint_id: str, detail: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in api.get(f"/endpoints/{endpoint_id}/events").json():
            if event["to_state"] == "failed" and detail in event["detail"]:
                return event
        time.sleep(0.2)
    raise AssertionError(f"no failed event with {detail!r}")


def test_a_killed_browser_fails_the_endpoint_which_is_restarted(gateway, sites: SiteServer):
    from tests.web_chat.test_webchat_trouble import browser_process

    with gateway.client() as api:
        endpoint = create_and_start(api, web_endpoint(sites, "textarea", "crashy"))
        url = f"/endpoints/{endpoint['id']}/chat"
        assert api.post(url, json={"prompt": "before"}).status_code == 200
        browser_process("crashy").kill()
        wait_for_event(api, endpoint["id"], "browser crashed")
        wait_healthy(api, endpoint["id"])
        kinds = [e["kind"] for e in api.get(f"/endpoints/{endpoint['id']}/events").json()]
        assert "auto_restart" in kinds
        after = api.post(url, json={"prompt": "after"})
    assert after.status_code == 200, after.text
    assert after.json()["content"] == bot_reply("textarea", 1, "after")


def test_a_logged_out_page_logs_in_again_or_says_session_expired(gateway, sites: SiteServer):
    body = web_endpoint(sites, "login", "relogin", credentials=good_credentials())
    with gateway.client() as api:
        endpoint = create_and_start(api, body)
        url = f"/endpoints/{endpoint['id']}/chat"
        logins = sites.state.logins
        sites.state.expire_sessions()
        again = api.post(url, json={"prompt": "still here"})
        assert again.status_code == 200, again.text
        assert sites.state.logins == logins + 1  # one automatic re-login, then the answer
        # Without credentials a logged-out page is an error and the endpoint's state says so.
        patched = api.patch(f"/endpoints/{endpoint['id']}", json={"credentials": {}})
        assert patched.json()["state"] == "healthy", patched.text  # restored cookies still work
        sites.state.expire_sessions()
        expired = api.post(url, json={"prompt": "now out"})
        assert expired.status_code == 401 and expired.json()["kind"] == "session_expired", (
            expired.text
        )
        event = wait_for_event(api, endpoint["id"], "session expired")
        assert event["to_state"] == "failed"
    assert PASSWORD not in gateway.logs()


def test_a_rewritten_stream_is_stored_and_returned_as_the_page_s_final_text(
    gateway, sites: SiteServer
) -> None:
    """The page rewrites text it already showed (a late "["): the done event and the stored
    session message carry the page's final text, not the joined pieces."""
    from tests.web_chat.test_webchat_quirks import LAB

    prompt = "ECHO[twenty one two] end"
    with gateway.client() as api:
        endpoint = create_and_start(api, lab_endpoint(sites, "rewriter", "bracket=1", LAB))
        with api.stream(
            "POST",
            f"/endpoints/{endpoint['id']}/chat",
            json={"prompt": prompt, "session_id": "rewritten", "stream": True},
        ) as response:
            events = sse_payloads(response)
        stored = api.get("/sessions/rewritten").json()
    expected = bot_reply("lab", 1, prompt)
    done = events[-1]
    assert done["done"] is True and done["content"] == expected
    assert done["transcript_replayed"] is False
    assert "".join(e["delta"] for e in events if e.get("delta")) != expected
    assert [m["content"] for m in stored["messages"]] == [prompt, expected]
    assert stored["transcript_replayed"] is False


def test_v1_streams_end_with_the_page_s_final_text_and_say_when_a_transcript_was_replayed(
    gateway, sites: SiteServer
) -> None:
    """/v1 carries what the management chat does: a stream whose page rewrote its answer
    ends with the final text, and a session whose conversation was lost (typed again into a
    new one) says so, in JSON and at the end of a stream."""
    from tests.web_chat.test_webchat_quirks import LAB, merged

    rewrite_prompt = "ECHO[twenty one two] end"
    # The page shows its conversation id but no URL reopens the conversation.
    config = merged(
        LAB, {"conversation": {"url_pattern": None, "id_from": {"selector": "#conv-id"}}}
    )
    body = lab_endpoint(sites, "rewriter-v1", "bracket=1&convattr=1", config)
    with gateway.client() as api:
        endpoint = create_and_start(api, body)
        v1 = {"model": "rewriter-v1", "stream": True}
        with api.stream(
            "POST",
            "/v1/chat/completions",
            json={**v1, "messages": [{"role": "user", "content": rewrite_prompt}]},
        ) as response:
            assert response.status_code == 200
            chunks = sse_payloads(response)
        expected = bot_reply("lab", 1, rewrite_prompt)
        joined = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        finish = chunks[-1]
        assert finish["choices"][0]["finish_reason"] == "stop"
        # Either the deltas were corrected by one more, or the finish chunk holds the whole
        # final text; a client reading either has the page's final text.
        assert (finish.get("content") or joined) == expected
        if "content" in finish:
            assert joined != expected
        assert "transcript_replayed" not in finish

        # Two sessions on the page; a restart loses both conversations (no URL reopens them).
        for session in ("lost-json", "lost-stream"):
            first = api.post(
                "/v1/chat/completions",
                headers={"X-Session-Id": session},
                json={"model": "rewriter-v1", "messages": [{"role": "user", "content": "one"}]},
            )
            assert first.status_code == 200, first.text
            assert "transcript_replayed" not in first.json()
        restarted = api.post(f"/endpoints/{endpoint['id']}/restart")
        assert restarted.status_code == 200, restarted.text
        wait_healthy(api, endpoint["id"])
        second = api.post(
            "/v1/chat/completions",
            headers={"X-Session-Id": "lost-json"},
            json={"model": "rewriter-v1", "messages": [{"role": "user", "content": "two"}]},
        )
        assert second.status_code == 200, second.text
        assert second.json()["transcript_replayed"] is True
        assert second.json()["choices"][0]["message"]["content"].startswith(
            "[lab] turn 1: you said 'User: one"
        )
        with api.stream(
            "POST",
            "/v1/chat/completions",
            headers={"X-Session-Id": "lost-stream"},
            json={**v1, "messages": [{"role": "user", "content": "two"}]},
        ) as response:
            assert response.status_code == 200
            replayed = sse_payloads(response)
        assert replayed[-1]["transcript_replayed"] is True
        assert replayed[-1]["choices"][0]["finish_reason"] == "stop"
