"""Bad input against the real gateway process: clear 4xx, nothing stored is harmed."""

from __future__ import annotations

import pytest

OPENAI = {
    "name": "gpt",
    "display_name": "GPT",
    "endpoint_type": "openai_api",
    "url": "http://127.0.0.1:9/v1",
    "model_name": "gpt-test",
    "credentials": {"api_key": "sk-canary-0a1b2c3d"},
}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from cryptography.fernet import Fernet

    from tests.gateway_proc import GatewayProcess

    proc = GatewayProcess(tmp_path_factory.mktemp("gw"), secret_key=Fernet.generate_key().decode())
    proc.start()
    with proc.client() as client:
        yield client
    proc.stop()


def test_create_returns_id_and_never_the_secret(api):
    response = api.post("/endpoints", json={**OPENAI, "name": "created-1"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert len(body["id"]) == 32 and body["credential_keys"] == ["api_key"]
    assert "sk-canary" not in response.text
    assert "sk-canary" not in api.get(f"/endpoints/{body['id']}").text
    assert "sk-canary" not in api.get("/endpoints").text


def test_duplicate_name_is_409(api):
    assert api.post("/endpoints", json={**OPENAI, "name": "dup"}).status_code == 201
    response = api.post("/endpoints", json={**OPENAI, "name": "dup"})
    assert response.status_code == 409 and "already exists" in response.json()["detail"]


def test_unknown_type_is_422_listing_known_types(api):
    response = api.post("/endpoints", json={**OPENAI, "name": "t", "endpoint_type": "fax"})
    assert response.status_code == 422
    assert "openai_api" in response.json()["detail"] and "fax" in response.json()["detail"]


def test_invalid_provider_config_names_the_field(api):
    response = api.post(
        "/endpoints", json={**OPENAI, "name": "bad-config", "config": {"no_such_field": 1}}
    )
    assert response.status_code == 422
    assert "config.no_such_field" in response.json()["detail"]


@pytest.mark.parametrize(
    "patch",
    [{"name": "has space"}, {"priority": -1}, {"max_concurrent_requests": 0}, {"name": ""}],
)
def test_invalid_fields_are_422(api, patch):
    response = api.post("/endpoints", json={**OPENAI, **patch})
    assert response.status_code == 422
    body = response.json()
    assert body["kind"] == "validation" and body["detail"] and body["errors"][0]["loc"]


def test_unknown_ids_are_404(api):
    for method, path in [
        ("GET", "/endpoints/nope"),
        ("PATCH", "/endpoints/nope"),
        ("DELETE", "/endpoints/nope"),
        ("POST", "/endpoints/nope/start"),
        ("POST", "/endpoints/nope/stop"),
        ("GET", "/endpoints/nope/events"),
        ("GET", "/sessions/nope"),
    ]:
        response = api.request(method, path, json={} if method == "PATCH" else None)
        assert response.status_code == 404, (method, path, response.text)
        assert "not found" in response.json()["detail"]


def test_chat_on_a_stopped_endpoint_is_409(api):
    created = api.post("/endpoints", json={**OPENAI, "name": "idle"}).json()
    response = api.post(f"/endpoints/{created['id']}/chat", json={"prompt": "hi"})
    assert response.status_code == 409 and "not running" in response.json()["detail"]


def test_malformed_and_oversized_bodies(api):
    response = api.post(
        "/endpoints", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    big = b'{"name": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    response = api.post("/endpoints", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["detail"]
    response = api.post("/v1/chat/completions", content=b"[1,2", headers={})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_v1_validation_is_openai_shaped(api):
    cases = [
        ({}, "model"),
        ({"model": "x"}, "messages"),
        ({"model": "x", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        (
            {"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": 9},
            "temperature",
        ),
    ]
    for body, param in cases:
        response = api.post("/v1/chat/completions", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"]["param"] == param
    response = api.post(
        "/v1/chat/completions",
        json={"model": "ghost", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 404 and "ghost" in response.json()["error"]["message"]


def test_patch_validates_and_keeps_data(api):
    created = api.post("/endpoints", json={**OPENAI, "name": "patchme"}).json()
    bad = api.patch(f"/endpoints/{created['id']}", json={"config": {"bogus": True}})
    assert bad.status_code == 422
    good = api.patch(f"/endpoints/{created['id']}", json={"display_name": "Renamed"})
    assert good.status_code == 200 and good.json()["display_name"] == "Renamed"
    again = api.get(f"/endpoints/{created['id']}").json()
    assert again["config"] == created["config"] and again["credential_keys"] == ["api_key"]


def test_providers_lists_types_with_schemas(api):
    providers = {p["endpoint_type"]: p for p in api.get("/providers").json()}
    assert {"openai_api", "rest_api", "anthropic_api", "codegen_api"} <= set(providers)
    assert providers["openai_api"]["config_schema"]["type"] == "object"
    assert "can_stream" in providers["openai_api"]["capabilities"]


def test_openapi_docs_are_served(api):
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert "/endpoints" in paths and "/system/metrics" in paths


def test_system_metrics_shape(api):
    body = api.get("/system/metrics").json()
    for key in (
        "running_endpoints",
        "total_endpoints",
        "success_rate",
        "requests_per_second",
        "avg_latency_ms",
        "p95_latency_ms",
        "tokens_in",
        "tokens_out",
        "cost",
        "uptime_seconds",
        "memory_mb",
    ):
        assert key in body, key
    assert body["memory_mb"] > 10 and body["total_endpoints"] >= 0


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"credentials": {"api_key": "sk-line\r\nInjected: 1"}}, "credentials.api_key"),
        ({"credentials": {"api_key": "sk-tab\tkey"}}, "credentials.api_key"),
        ({"credentials": {"api_key": "sk-nul\x00key"}}, "credentials.api_key"),
        ({"display_name": "bad\x00name"}, "display_name"),
        ({"config": {"headers": {"X-Key": "a\x00b"}}}, "config.headers.X-Key"),
        ({"input_cost_per_1k": 1e308}, "input_cost_per_1k"),
        ({"output_cost_per_1k": 1001}, "output_cost_per_1k"),
        ({"output_cost_per_1k": -0.5}, "output_cost_per_1k"),
    ],
)
def test_bad_values_are_422_naming_the_field_and_nothing_is_stored(api, patch, field):
    name = "refused-" + field.replace(".", "-").replace("_", "-").lower()
    response = api.post("/endpoints", json={**OPENAI, "name": name, **patch})
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert "sk-line" not in response.text and "sk-tab" not in response.text
    assert all(e["name"] != name for e in api.get("/endpoints").json())


def test_updates_are_checked_the_same_way(api):
    created = api.post("/endpoints", json={**OPENAI, "name": "update-checks"}).json()
    url = f"/endpoints/{created['id']}"
    for patch in (
        {"credentials": {"api_key": "two\nlines"}},
        {"display_name": "n\x00l"},
        {"input_cost_per_1k": 1e300},
    ):
        assert api.patch(url, json=patch).status_code == 422, patch
    stored = api.get(url).json()
    assert stored["display_name"] == "GPT" and stored["input_cost_per_1k"] == 0.0
    assert api.patch(url, json={"input_cost_per_1k": 2.5}).json()["input_cost_per_1k"] == 2.5


def test_infinite_prices_in_json_are_refused(api):
    # Python's json (which FastAPI uses) reads Infinity and NaN; they must not reach the store.
    for literal in (b"Infinity", b"NaN", b"1e999"):
        body = b'{"name": "inf-price", "endpoint_type": "openai_api", "input_cost_per_1k": '
        response = api.post(
            "/endpoints",
            content=body + literal + b"}",
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 422, (literal, response.text)


def test_nul_in_chat_text_is_refused_before_the_upstream(api):
    created = api.post("/endpoints", json={**OPENAI, "name": "nul-chat"}).json()
    chat = api.post(f"/endpoints/{created['id']}/chat", json={"prompt": "a\x00b"})
    assert chat.status_code == 422 and "prompt" in chat.json()["detail"]
    v1 = api.post(
        "/v1/chat/completions",
        json={"model": "nul-chat", "messages": [{"role": "user", "content": "a\x00b"}]},
    )
    assert v1.status_code == 400 and v1.json()["error"]["param"] == "messages[0].content"
