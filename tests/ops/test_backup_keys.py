"""aiem backup / restore of a running instance's store, and key rotation under traffic."""

from __future__ import annotations

import sqlite3
import stat
import threading
from pathlib import Path

import httpx
import pytest

from store.crypto import SecretBox, SecretKeyError, read_key_file
from tests.ops.test_doctor import run_cli

CANARY = "sk-rotate-canary-5f4e3d2c1b"


def add_endpoint(api: httpx.Client, upstream, name: str) -> dict:
    upstream.api_key = CANARY
    body = {
        "name": name,
        "endpoint_type": "openai_api",
        "url": upstream.url,
        "model_name": "m",
        "credentials": {"api_key": CANARY},
        "start": True,
    }
    created = api.post("/endpoints", json=body)
    assert created.status_code == 201, created.text
    return created.json()


@pytest.fixture
def keyfile_gateway(gateway_factory, tmp_path):
    """A gateway whose key lives in the data dir's key file (no AIEM_SECRET_KEY)."""
    data = tmp_path / "data"
    return gateway_factory(data_dir=data, env={"AIEM_SECRET_KEY": ""}), data


def test_backup_of_a_running_instance_restores(keyfile_gateway, openai_upstream):
    gw, data = keyfile_gateway
    backup = data.parent / "backup.db"
    with gw.client() as api:
        add_endpoint(api, openai_upstream, "kept")
        chat = {"prompt": "remember me", "session_id": "s-backup"}
        assert api.post("/endpoints/kept/chat", json=chat).status_code == 200
        done = run_cli(data, "backup", str(backup))
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        assert api.delete("/endpoints/kept").status_code == 204
        refused = run_cli(data, "restore", str(backup), ENDPOINT_MANAGER_PORT=str(gw.port))
        assert refused.returncode == 2 and "stop it before restoring" in refused.stderr
    gw.stop()
    done = run_cli(data, "restore", str(backup))
    assert done.returncode == 0, done.stderr
    gw.start()
    with gw.client() as api:
        assert api.get("/endpoints/kept").json()["state"] == "healthy"
        session = api.get("/sessions/s-backup").json()
        assert [m["content"] for m in session["messages"]][0] == "remember me"
        again = api.post(
            "/endpoints/kept/chat", json={"prompt": "and now", "session_id": "s-backup"}
        )
        assert again.json()["content"] == "turn 2: and now"  # history came back with it


def test_restore_refuses_what_is_not_a_backup_under_this_key(tmp_path, keyfile_gateway):
    gw, data = keyfile_gateway
    gw.stop()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    done = run_cli(data, "restore", str(junk))
    assert done.returncode == 2 and "not a SQLite database" in done.stderr
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    done = run_cli(data, "restore", str(other))
    assert done.returncode == 2 and "not a backup of this product's store" in done.stderr
    ours = tmp_path / "ours.db"
    assert run_cli(data, "backup", str(ours)).returncode == 0
    (data / "secret.key").write_text("")  # lose the key: a new one would be made
    foreign = run_cli(data, "restore", str(ours), AIEM_SECRET_KEY=SecretBox_key())
    assert foreign.returncode == 2 and "another encryption key" in foreign.stderr


def SecretBox_key() -> str:  # noqa: N802 - reads as what it returns
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def test_backup_on_postgresql_points_to_pg_dump(tmp_path):
    url = "postgresql://aiem@127.0.0.1:1/none"
    done = run_cli(tmp_path, "backup", str(tmp_path / "x.db"), DATABASE_URL=url)
    assert done.returncode == 2 and "pg_dump" in done.stderr


def test_key_rotation_under_traffic_needs_no_restart(keyfile_gateway, openai_upstream):
    gw, data = keyfile_gateway
    old_keys = read_key_file(data / "secret.key")
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with gw.client() as api:
            while not stop.is_set():
                r = api.post(
                    "/v1/chat/completions",
                    json={"model": "rot", "messages": [{"role": "user", "content": "hi"}]},
                )
                if r.status_code != 200:
                    failures.append(r.text)

    with gw.client() as api:
        add_endpoint(api, openai_upstream, "rot")
        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            done = run_cli(data, "keys", "rotate")
        finally:
            stop.set()
            worker.join(30)
        assert done.returncode == 0, done.stderr
        assert "re-encrypted" in done.stdout
        # The running instance decrypts the rotated credentials without a restart of itself.
        assert api.post("/endpoints/rot/restart").json()["state"] == "healthy"
        answer = api.post("/endpoints/rot/chat", json={"prompt": "after"})
        assert (
            answer.status_code == 200
            and openai_upstream.last_request.headers["Authorization"] == f"Bearer {CANARY}"
        )
    assert failures == []
    keys = read_key_file(data / "secret.key")
    assert len(keys) == 2 and keys[1:] == old_keys
    conn = sqlite3.connect(data / "aiem.db")
    token = conn.execute("SELECT credentials_encrypted FROM endpoint").fetchone()[0]
    conn.close()
    assert CANARY in SecretBox(keys[:1]).decrypt(token)
    with pytest.raises(SecretKeyError):
        SecretBox(old_keys).decrypt(token)  # nothing is left under the old key


def test_rotation_with_the_key_in_the_environment_explains_the_steps(tmp_path):
    done = run_cli(tmp_path, "keys", "rotate", AIEM_SECRET_KEY=SecretBox_key())
    assert done.returncode == 2 and "--reencrypt" in done.stderr


def test_secret_box_reloads_a_rotated_key_file(tmp_path: Path):
    from store.crypto import open_box, write_key_file

    box = open_box(None, tmp_path)
    newer = SecretBox([SecretBox_key().encode()])
    token = newer.encrypt("fresh")
    write_key_file(tmp_path / "secret.key", [*newer.keys, *box.keys])
    assert box.decrypt(token) == "fresh"
