"""/discovery through the real gateway process: bad input, a whole discovery, approve, chat."""

from __future__ import annotations

import socket
import uuid

import pytest

from tests.discovery.conftest import wait_done

pytestmark = pytest.mark.browser


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"url": "ftp://example.com/chat"}, "only http and https"),
        ({"url": "javascript:alert(1)"}, "only http and https"),
        ({}, "url"),
        ({"url": "https://x.example/", "extra": 1}, "extra"),
        ({"url": "https://x.example/", "llm": {"base_url": "file:///x", "model": "m"}}, "http"),
    ],
)
def test_bad_requests_are_422_with_a_message(api, body, fragment):
    response = api.post("/discovery", json=body)
    assert response.status_code == 422
    assert fragment in response.json()["detail"]


def test_use_llm_without_an_llm_is_422(api):
    response = api.post("/discovery", json={"url": "https://x.example/", "use_llm": True})
    assert response.status_code == 422 and "use_llm needs" in response.json()["detail"]


def test_llm_endpoint_must_exist(api):
    body = {"url": "https://x.example/", "llm": {"endpoint": "no-such-endpoint"}}
    response = api.post("/discovery", json=body)
    assert response.status_code == 404 and "no-such-endpoint" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/discovery/nope"),
        ("GET", "/discovery/nope/screenshot"),
        ("POST", "/discovery/nope/probe"),
        ("DELETE", "/discovery/nope"),
    ],
)
def test_unknown_drafts_are_404(api, method, path):
    response = api.request(method, path)
    assert response.status_code == 404 and "not found" in response.json()["detail"]


def test_unreachable_host_fails_quickly(api):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = api.post("/discovery", json={"url": f"http://127.0.0.1:{port}/"}).json()
    doc = wait_done(api, started["id"], timeout=30)
    assert (doc["status"], doc["reason"]) == ("failed", "unreachable")
    assert doc["timings"]["total"] < 15


def test_discover_approve_and_chat(api, discovery_sites):
    url = discovery_sites.url("/convurl/")
    started = api.post("/discovery", json={"url": url})
    assert started.status_code == 202
    assert started.json()["status"] == "queued"
    doc = wait_done(api, started.json()["id"])

    assert doc["status"] == "ready" and doc["probe_passed"], doc["message"]
    assert doc["config"]["input"][0] == "textarea#prompt-textarea"
    assert doc["evidence"]["probe"]["engine"]["turns"][1]["answer_read"].startswith("Reply ")
    assert doc["evidence"]["candidates"] and doc["timings"]["total"] > 0
    shot = api.get(doc["screenshot_url"])
    assert shot.headers["content-type"] == "image/png" and shot.content[:4] == b"\x89PNG"
    listed = api.get("/discovery").json()
    assert any(d["id"] == doc["id"] and d["status"] == "ready" for d in listed)

    assert api.post(f"/discovery/{doc['id']}/approve", json={}).status_code == 422
    name = f"found-{uuid.uuid4().hex[:6]}"
    approved = api.post(f"/discovery/{doc['id']}/approve", json={"name": name, "start": True})
    assert approved.status_code == 201, approved.text
    endpoint = approved.json()
    assert endpoint["discovered_by_ai"] is True and endpoint["state"] == "healthy"
    assert endpoint["discovery_confidence"] == doc["confidence"]
    assert endpoint["discovery_analysis"]["draft_id"] == doc["id"]
    assert endpoint["endpoint_type"] == "web_chat" and endpoint["url"] == url
    again = api.post(f"/discovery/{doc['id']}/approve", json={"name": name + "x"})
    assert again.status_code == 409

    answer = api.post(f"/endpoints/{endpoint['id']}/chat", json={"prompt": "hi there"})
    assert answer.status_code == 200 and answer.json()["content"].startswith("Reply 1:")
    assert api.get(f"/discovery/{doc['id']}").json()["status"] == "approved"
    api.post(f"/endpoints/{endpoint['id']}/stop")


def test_a_draft_that_failed_its_probe_needs_force(api, discovery_sites):
    doc = wait_done(
        api, api.post("/discovery", json={"url": discovery_sites.url("/hashed/")}).json()["id"]
    )
    assert doc["status"] == "ready"
    broken = {**doc["config"], "input": ["textarea.gone"], "page_timeout_s": 2}
    bad = api.post(f"/discovery/{doc['id']}/probe", json={"config": {"input": 5}})
    assert bad.status_code == 422 and "config.input" in bad.json()["detail"]

    assert api.post(f"/discovery/{doc['id']}/probe", json={"config": broken}).status_code == 202
    reprobed = wait_done(api, doc["id"])
    assert (reprobed["status"], reprobed["probe_passed"]) == ("failed", False)
    assert reprobed["reason"] == "probe_failed" and "input" in reprobed["message"]
    assert reprobed["config"]["input"] == ["textarea.gone"]

    name = f"forced-{uuid.uuid4().hex[:6]}"
    refused = api.post(f"/discovery/{doc['id']}/approve", json={"name": name})
    assert refused.status_code == 409 and "never passed" in refused.json()["detail"]
    forced = api.post(f"/discovery/{doc['id']}/approve", json={"name": name, "force": True})
    assert forced.status_code == 201 and forced.json()["config"]["input"] == ["textarea.gone"]

    assert api.delete(f"/discovery/{doc['id']}").status_code == 204
    assert api.get(f"/discovery/{doc['id']}").status_code == 404


def test_page_without_chat_fails_and_cannot_be_approved(api, discovery_sites):
    doc = wait_done(
        api, api.post("/discovery", json={"url": discovery_sites.url("/nochat/")}).json()["id"]
    )
    assert (doc["status"], doc["reason"]) == ("failed", "no_chat")
    assert doc["message"] == "no chat input found on the page"
    refused = api.post(f"/discovery/{doc['id']}/approve", json={"name": "x", "force": True})
    assert refused.status_code == 409
