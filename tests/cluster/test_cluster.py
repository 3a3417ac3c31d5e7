"""Several real instances on one store: one desired state applied everywhere, one leader,
SQLite refusing a second instance."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

CONVERGE_S = 2.0


def within(seconds: float, check: Callable[[], bool]) -> float:
    """Poll ``check`` until it holds; return how long it took (fail after ``seconds``)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not true within {seconds} s")


def models(gw) -> list[str]:
    return [m["id"] for m in httpx.get(gw.url + "/v1/models", timeout=5).json()["data"]]


def chat_status(gw, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10).status_code


def test_a_change_through_either_instance_is_applied_by_both(pair, openai_upstream):
    a, b = pair
    body = {
        "name": "shared",
        "endpoint_type": "openai_api",
        "url": openai_upstream.url,
        "model_name": "first",
        "start": True,
    }
    assert httpx.post(a.url + "/endpoints", json=body, timeout=30).status_code == 201
    within(CONVERGE_S, lambda: "shared" in models(b))
    assert chat_status(b, "shared") == 200
    # B's view of the endpoint says where it runs (heartbeats every few seconds).
    ids = {i["id"] for i in httpx.get(b.url + "/cluster").json()["instances"] if i["alive"]}
    assert len(ids) == 2
    within(8, lambda: set(httpx.get(b.url + "/endpoints/shared").json()["instances"]) == ids)

    patched = httpx.patch(b.url + "/endpoints/shared", json={"model_name": "second"}, timeout=30)
    assert patched.status_code == 200

    def a_uses_the_edit() -> bool:
        assert chat_status(a, "shared") == 200
        return openai_upstream.last_request.json["model"] == "second"

    within(CONVERGE_S, a_uses_the_edit)

    stopped = httpx.post(b.url + "/endpoints/shared/stop", timeout=30).json()
    assert stopped["state"] == "stopped"
    within(CONVERGE_S, lambda: "shared" not in models(a) and chat_status(a, "shared") == 409)
    assert httpx.get(a.url + "/endpoints/shared").json()["state"] == "stopped"

    assert httpx.post(b.url + "/endpoints/shared/start", timeout=30).status_code == 200
    within(CONVERGE_S, lambda: chat_status(a, "shared") == 200)
    assert httpx.delete(a.url + "/endpoints/shared", timeout=30).status_code == 204
    within(CONVERGE_S, lambda: chat_status(b, "shared") == 404)


def test_one_leader_and_another_takes_over_when_it_dies(pair):
    a, b = pair

    def leader() -> str | None:
        return httpx.get(b.url + "/cluster", timeout=5).json()["leader"]

    within(10, lambda: leader() is not None)
    view = httpx.get(a.url + "/cluster").json()
    by_id = {i["id"]: i for i in view["instances"]}
    assert view["store"] == "postgresql" and view["leader"] in by_id
    first = view["leader"]
    dead, survivor = (a, b) if by_id[first]["url"] == a.url else (b, a)
    dead.kill()
    took = within(
        20, lambda: httpx.get(survivor.url + "/cluster").json()["leader"] not in (None, first)
    )
    assert took < 15 + 3  # the dead instance's lock is released at once; a heartbeat takes it


def test_sqlite_refuses_a_second_instance_until_the_first_is_gone(gateway_factory, tmp_path):
    data = tmp_path / "one"
    first = gateway_factory(data_dir=data)
    second = gateway_factory(
        data_dir=tmp_path / "two",
        start=False,
        env={"DATABASE_URL": f"sqlite:///{data / 'aiem.db'}"},
    )
    with pytest.raises(RuntimeError) as refused:
        second.start(timeout=120)  # start-up alone can take half a minute on a busy machine
    assert "gateway exited with 2" in str(refused.value)
    assert "SQLite is single-instance" in second.logs()
    first.kill()  # SIGKILL: no clean-up ran, the kernel released the lock
    second.start(timeout=120)
    assert httpx.get(second.url + "/cluster").json()["store"] == "sqlite"
