"""The API over the runtime facade, in process: names as ids, seed type names, key names
without decryption, OpenAI parameters passed by value or refused by name, start/stop races."""

from __future__ import annotations

import asyncio

import pytest

from store.models import DesiredState

CANARY = "sk-canary-facade-1234567890"


def openai_body(upstream, name: str = "gpt", **extra) -> dict:
    upstream.api_key = CANARY
    return {
        "name": name,
        "endpoint_type": "openai_api",
        "url": upstream.url,
        "model_name": "fixture-model",
        "credentials": {"api_key": CANARY},
        **extra,
    }


async def test_every_per_endpoint_route_takes_the_name(api, openai_upstream):
    created = await api.post("/endpoints", json=openai_body(openai_upstream))
    assert created.status_code == 201, created.text
    ep_id = created.json()["id"]
    assert (await api.get("/endpoints/gpt")).json()["id"] == ep_id
    patched = await api.patch("/endpoints/gpt", json={"display_name": "Named"})
    assert patched.json()["display_name"] == "Named"
    assert (await api.post("/endpoints/gpt/start")).json()["state"] == "healthy"
    chat = await api.post("/endpoints/gpt/chat", json={"prompt": "hi"})
    assert chat.json()["content"] == "turn 1: hi"
    assert (await api.get("/endpoints/gpt/metrics")).json()["endpoint_id"] == ep_id
    kinds = [e["kind"] for e in (await api.get("/endpoints/gpt/events")).json()]
    assert "created" in kinds and "updated" in kinds
    assert (await api.post("/endpoints/gpt/restart")).json()["state"] == "healthy"
    assert (await api.post("/endpoints/gpt/stop")).json()["state"] == "stopped"
    assert (await api.delete("/endpoints/gpt")).status_code == 204
    missing = await api.get("/endpoints/gpt")
    assert missing.status_code == 404 and "'gpt' not found" in missing.json()["detail"]


async def test_seed_type_names_map_to_the_canonical_ones(api, rest_upstream):
    body = {
        "name": "seedish",
        "endpoint_type": "REST_API",
        "url": rest_upstream.url + "/chat",
        "config": {"response_path": "reply"},
    }
    created = await api.post("/endpoints", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["endpoint_type"] == "rest_api"
    listed = await api.get("/endpoints", params={"endpoint_type": "REST_API"})
    assert [e["name"] for e in listed.json()] == ["seedish"]
    unknown = await api.post("/endpoints", json={**body, "name": "x", "endpoint_type": "NOPE"})
    assert unknown.status_code == 422


async def test_listing_never_decrypts_credentials(make_api, openai_upstream, monkeypatch):
    api, rt = await make_api()
    await api.post("/endpoints", json=openai_body(openai_upstream))

    def refuse(*_args, **_kwargs):
        raise AssertionError("listing decrypted a secret")

    monkeypatch.setattr(rt.store.box, "decrypt_bytes", refuse)
    listed = await api.get("/endpoints")
    assert listed.status_code == 200
    assert listed.json()[0]["credential_keys"] == ["api_key"]
    assert CANARY not in listed.text


async def test_v1_passes_openai_parameters_by_value(api, openai_upstream):
    await api.post("/endpoints", json=openai_body(openai_upstream, start=True))
    sent = {
        "top_p": 0.3,
        "stop": ["END", "STOP"],
        "seed": 42,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "user": "user-7",
        "logit_bias": {"50256": -100},
        "response_format": {"type": "json_object"},
        "reasoning_effort": "low",
    }
    body = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
    response = await api.post(
        "/v1/chat/completions", json={**body, **sent, "temperature": 0.7, "max_tokens": 33}
    )
    assert response.status_code == 200, response.text
    received = openai_upstream.last_request.json
    for key, value in sent.items():
        assert received[key] == value, key
    assert received["temperature"] == 0.7 and received["max_tokens"] == 33


async def test_v1_refuses_parameters_the_provider_cannot_honour(api, rest_upstream):
    body = {
        "name": "plain",
        "endpoint_type": "rest_api",
        "url": rest_upstream.url + "/chat",
        "config": {"response_path": "reply"},
        "start": True,
    }
    assert (await api.post("/endpoints", json=body)).status_code == 201
    before = len(rest_upstream.requests)
    response = await api.post(
        "/v1/chat/completions",
        json={"model": "plain", "messages": [{"role": "user", "content": "x"}], "seed": 1},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "seed"
    assert error["message"] == "`seed` is not supported by endpoint type rest_api"
    assert len(rest_upstream.requests) == before  # refused before the upstream was called


async def test_concurrent_start_and_stop_leave_desired_and_actual_in_agreement(
    make_api, openai_upstream
):
    api, rt = await make_api()
    ep = (await api.post("/endpoints", json=openai_body(openai_upstream))).json()
    calls = [api.post(f"/endpoints/{ep['id']}/{'start' if i % 2 else 'stop'}") for i in range(50)]
    for response in await asyncio.gather(*calls):
        assert response.status_code == 200, response.text
    row = rt.repo.get(ep["id"])
    running = ep["id"] in rt.manager.live
    if row.desired_state == DesiredState.running:
        assert running and row.state == "healthy"
    else:
        assert not running and row.state == "stopped"
    models = (await api.get("/v1/models")).json()["data"]
    assert ("gpt" in [m["id"] for m in models]) == running


async def reconciled(rt, live_ok, state: str, endpoint_id: str) -> None:
    for _ in range(50):
        await rt.manager.reconcile()
        if live_ok() and rt.repo.get(endpoint_id).state == state:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reconciled to {state}")


async def test_reconcile_repairs_drift_both_ways(make_api, openai_upstream):
    api, rt = await make_api()
    ep = (await api.post("/endpoints", json=openai_body(openai_upstream))).json()
    # (On PostgreSQL the background reconcile may get there first: count both.)
    rt.repo.set_desired(ep["id"], DesiredState.running)  # as another writer would
    await reconciled(rt, lambda: ep["id"] in rt.manager.live, "healthy", ep["id"])
    rt.repo.set_desired(ep["id"], DesiredState.stopped)
    await reconciled(rt, lambda: ep["id"] not in rt.manager.live, "stopped", ep["id"])
    assert await rt.manager.reconcile() == 0


@pytest.mark.parametrize("ref", ["gpt", "missing"])
async def test_chat_by_name_on_a_stopped_or_missing_endpoint(api, openai_upstream, ref):
    await api.post("/endpoints", json=openai_body(openai_upstream))
    response = await api.post(f"/endpoints/{ref}/chat", json={"prompt": "hi"})
    assert response.status_code == (409 if ref == "gpt" else 404)
