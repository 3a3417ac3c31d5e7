"""The guard against a real gateway process: Host, Origin, content type, body limits, NUL."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.gateway_proc import GatewayProcess

ENDPOINT = {
    "name": "guarded",
    "endpoint_type": "openai_api",
    "url": "http://127.0.0.1:9/v1",
    "credentials": {"api_key": "sk-guard-0123456789"},
}
CHAT = {"model": "ghost", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def proc(tmp_path_factory) -> Iterator[GatewayProcess]:
    from cryptography.fernet import Fernet

    gateway = GatewayProcess(
        tmp_path_factory.mktemp("guard"),
        secret_key=Fernet.generate_key().decode(),
        env={"AIEM_MAX_BODY_BYTES": "2048"},
    )
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def api(proc) -> Iterator[httpx.Client]:
    with proc.client() as client:
        yield client


@pytest.fixture(scope="module")
def endpoint_id(api) -> str:
    created = api.post("/endpoints", json=ENDPOINT)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def test_a_foreign_origin_cannot_change_state(api, proc, endpoint_id):
    evil = {"Origin": "http://evil.example"}
    refused = api.post(f"/endpoints/{endpoint_id}/start", headers=evil)
    assert refused.status_code == 403 and "evil.example" in refused.json()["detail"]
    patched = api.patch(f"/endpoints/{endpoint_id}", json={"priority": 1}, headers=evil)
    assert patched.status_code == 403
    assert api.delete(f"/endpoints/{endpoint_id}", headers={"Origin": "null"}).status_code == 403
    stored = api.get(f"/endpoints/{endpoint_id}").json()
    assert stored["desired_state"] == "stopped" and stored["priority"] == 100
    v1 = api.post("/v1/chat/completions", json=CHAT, headers=evil)
    assert v1.status_code == 403 and v1.json()["error"]["code"] == "cross_origin"
    # The console's own origin (and a client sending none) are fine.
    own = api.patch(f"/endpoints/{endpoint_id}", json={"priority": 7}, headers={"Origin": proc.url})
    assert own.status_code == 200 and own.json()["priority"] == 7
    # Reading is not state-changing: a foreign Origin on GET is still answered.
    assert api.get(f"/endpoints/{endpoint_id}", headers=evil).status_code == 200


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_simple_cross_site_bodies_are_refused(api, content_type):
    headers = {"Content-Type": content_type}
    v1 = api.post("/v1/chat/completions", content=b'{"model": "x"}', headers=headers)
    assert v1.status_code == 415 and content_type in v1.json()["error"]["message"]
    created = api.post("/endpoints", content=b'{"name": "x"}', headers=headers)
    assert created.status_code == 415 and created.json()["kind"] == "unsupported_media_type"
    assert all(e["name"] != "x" for e in api.get("/endpoints").json())
    vendor_json = {"Content-Type": "application/vnd.api+json"}
    assert api.post("/v1/chat/completions", json=CHAT, headers=vendor_json).status_code == 404


def test_only_allowed_host_names_are_served(proc):
    port = proc.port
    rebinding = httpx.get(proc.url + "/endpoints", headers={"Host": f"attacker.example:{port}"})
    assert rebinding.status_code == 400
    assert "AIEM_ALLOWED_HOSTS" in rebinding.json()["detail"]
    assert httpx.get(proc.url + "/v1/models", headers={"Host": "attacker.example"}).status_code == (
        400
    )
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert httpx.get(proc.url + "/endpoints", headers={"Host": host}).status_code == 200, host
    # Load balancers probe health by address: those stay open.
    assert httpx.get(proc.url + "/healthz", headers={"Host": "10.1.2.3"}).status_code == 200


def test_allowed_hosts_setting_adds_names(gateway_factory):
    gateway = gateway_factory(env={"AIEM_ALLOWED_HOSTS": "aiem.internal, localhost"})
    named = httpx.get(gateway.url + "/endpoints", headers={"Host": "aiem.internal:8080"})
    assert named.status_code == 200
    # 127.0.0.1 is not in the list any more: only the names given (and the bind address,
    # which is 127.0.0.1 here) are served.
    assert httpx.get(
        gateway.url + "/endpoints", headers={"Host": "other.internal"}
    ).status_code == (400)


def _chunked(data: bytes, piece: int = 512) -> Iterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


def test_chunked_bodies_over_the_limit_are_413(api):
    big = b'{"model": "' + b"x" * 4096 + b'"}'
    v1 = api.post(
        "/v1/chat/completions", content=_chunked(big), headers={"Content-Type": "application/json"}
    )
    assert v1.status_code == 413, v1.text
    assert v1.json()["error"]["code"] == "body_too_large"
    managed = api.post(
        "/endpoints", content=_chunked(big), headers={"Content-Type": "application/json"}
    )
    assert managed.status_code == 413 and "larger than 2048" in managed.json()["detail"]


def test_chunked_bodies_under_the_limit_are_read_whole(api):
    import orjson

    body = orjson.dumps({**ENDPOINT, "name": "chunked", "display_name": "d" * 150})
    created = api.post(
        "/endpoints", content=_chunked(body, 64), headers={"Content-Type": "application/json"}
    )
    assert created.status_code == 201 and created.json()["display_name"] == "d" * 150
    v1 = api.post("/v1/chat/completions", content=_chunked(orjson.dumps(CHAT), 8))
    assert v1.status_code == 404 and "ghost" in v1.json()["error"]["message"]


def test_the_v1_fast_path_enforces_content_length_too(api):
    big = b'{"model": "' + b"x" * 4096 + b'"}'
    response = api.post("/v1/chat/completions", content=big)
    assert response.status_code == 413 and "2048" in response.json()["error"]["message"]


def test_nul_in_the_url_is_refused_before_any_work(api, endpoint_id):
    for path in ("/endpoints/ab%00cd", "/endpoints?state=he%00althy", "/sessions/s%001"):
        response = api.get(path)
        assert response.status_code == 422, path
        assert "NUL" in response.json()["detail"]
    assert api.post(f"/endpoints/{endpoint_id}%00/stop").status_code == 422
