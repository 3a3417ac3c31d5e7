"""The `aiem` command line against a real gateway and a real store."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from tests.cli_run import aiem

CANARY = "sk-canary-cli-4d5e6f"
TOKEN_A = "admin-token-a-0123456789"
TOKEN_B = "admin-token-b-9876543210"


@pytest.fixture
def gateway(clean_gateway):
    """This module's one gateway process, emptied before each test (a start takes seconds)."""
    return clean_gateway


def test_endpoints_commands_against_a_running_instance(gateway, openai_upstream):
    env = {"AIEM_API_URL": gateway.url}
    added = aiem(
        "endpoints",
        "add",
        "--name",
        "cli-gpt",
        "--type",
        "openai_api",
        "--url",
        openai_upstream.url,
        "--model",
        "m1",
        "--credential",
        f"api_key={CANARY}",
        env=env,
    )
    assert added.returncode == 0, added.stderr
    assert "created cli-gpt" in added.stdout and CANARY not in added.stdout
    started = aiem("endpoints", "start", "cli-gpt", env=env)
    assert started.returncode == 0 and "cli-gpt: healthy" in started.stdout
    chat = aiem("endpoints", "chat", "cli-gpt", "hello cli", "--session", "c1", env=env)
    assert chat.returncode == 0 and chat.stdout.strip() == "turn 1: hello cli"
    listing = aiem("endpoints", "list", env=env)
    assert "cli-gpt" in listing.stdout and "healthy" in listing.stdout
    stopped = aiem("endpoints", "stop", "cli-gpt", env=env)
    assert "cli-gpt: stopped" in stopped.stdout


def test_cli_errors_are_one_line_and_non_zero(gateway, tmp_path):
    env = {"AIEM_API_URL": gateway.url}
    missing = aiem("endpoints", "start", "ghost", env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip() == "aiem: error: no endpoint named or with id 'ghost'"
    bad_type = aiem("endpoints", "add", "--name", "x", "--type", "fax", env=env)
    assert bad_type.returncode == 2 and "known types" in bad_type.stderr
    assert len(bad_type.stderr.strip().splitlines()) == 1
    down = aiem("endpoints", "list", env={"AIEM_API_URL": "http://127.0.0.1:9"})
    assert down.returncode == 2 and "cannot reach the API" in down.stderr
    bad_setting = aiem(
        "config", "export", env={"ENDPOINT_MANAGER_PORT": "nope", "AIEM_DATA_DIR": str(tmp_path)}
    )
    assert bad_setting.returncode == 2 and "ENDPOINT_MANAGER_PORT" in bad_setting.stderr
    bad_file = aiem(
        "config", "import", str(tmp_path / "none.json"), env={"AIEM_DATA_DIR": str(tmp_path)}
    )
    assert bad_file.returncode == 2 and "cannot read" in bad_file.stderr


def test_serving_off_loopback_requires_a_token(tmp_path):
    result = aiem("serve", "--host", "0.0.0.0", "--port", "9", env={"AIEM_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "AIEM_ADMIN_TOKEN" in result.stderr


def test_wrong_key_is_a_clear_start_error(tmp_path, secret_key):
    from cryptography.fernet import Fernet

    env = {"AIEM_DATA_DIR": str(tmp_path), "AIEM_SECRET_KEY": secret_key}
    assert aiem("config", "export", env=env).returncode == 0
    env["AIEM_SECRET_KEY"] = Fernet.generate_key().decode()
    result = aiem("serve", "--no-console", "--port", "9", env=env)
    assert result.returncode == 2 and "does not match" in result.stderr


def test_an_unwritable_data_dir_stops_start_up_in_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    data_dir = blocker / "data"
    for command in (("serve", "--no-console", "--port", "9"), ("config", "export")):
        result = aiem(*command, env={"AIEM_DATA_DIR": str(data_dir)})
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("aiem: error: data directory ")
        assert str(data_dir) in lines[0] and "AIEM_DATA_DIR" in lines[0]


def test_an_unopenable_database_is_one_line_without_its_password(tmp_path):
    env = {
        "AIEM_DATA_DIR": str(tmp_path),
        "DATABASE_URL": "postgresql://aiem:hunter2-secret@127.0.0.1:9/none",
    }
    result = aiem("config", "export", env=env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "cannot open the store at postgresql" in result.stderr
    assert "hunter2-secret" not in result.stderr


def test_secret_export_over_an_existing_file_is_private(tmp_path, secret_key):
    env = {"AIEM_DATA_DIR": str(tmp_path / "d"), "AIEM_SECRET_KEY": secret_key}
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            [{"name": "k", "endpoint_type": "openai_api", "credentials": {"api_key": CANARY}}]
        )
    )
    assert aiem("config", "import", str(seed), env=env).returncode == 0
    existing = tmp_path / "existing.json"
    existing.write_text("{}")
    os.chmod(existing, 0o644)
    result = aiem("config", "export", "--include-secrets", "-o", str(existing), env=env)
    assert result.returncode == 0, result.stderr
    assert oct(existing.stat().st_mode & 0o777) == "0o600"
    assert CANARY in existing.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".existing")] == []


def test_config_export_import_round_trip(tmp_path, secret_key):
    source = {"AIEM_DATA_DIR": str(tmp_path / "a"), "AIEM_SECRET_KEY": secret_key}
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "endpoints": [
                    {
                        "name": "one",
                        "endpoint_type": "openai_api",
                        "url": "http://127.0.0.1:9/v1",
                        "credentials": {"api_key": CANARY},
                        "priority": 5,
                        "desired_state": "running",
                    },
                    {
                        "name": "two",
                        "endpoint_type": "rest_api",
                        "url": "http://127.0.0.1:9/x",
                        "config": {"response_path": "answer"},
                    },
                ]
            }
        )
    )
    imported = aiem("config", "import", str(seed), env=source)
    assert imported.returncode == 0, imported.stderr
    assert "2 created" in imported.stdout
    plain = aiem("config", "export", env=source)
    assert CANARY not in plain.stdout
    exported = json.loads(plain.stdout)["endpoints"]
    assert [e["name"] for e in exported] == ["one", "two"]
    assert exported[0]["credential_keys"] == ["api_key"] and exported[0]["priority"] == 5
    secret_file = tmp_path / "full.json"
    full = aiem("config", "export", "--include-secrets", "-o", str(secret_file), env=source)
    assert full.returncode == 0 and oct(secret_file.stat().st_mode & 0o777) == "0o600"
    assert json.loads(secret_file.read_text())["endpoints"][0]["credentials"] == {"api_key": CANARY}
    target = {"AIEM_DATA_DIR": str(tmp_path / "b"), "AIEM_SECRET_KEY": secret_key}
    assert aiem("config", "import", str(secret_file), env=target).returncode == 0
    again = aiem("config", "import", str(secret_file), env=target)
    assert "0 created, 2 updated" in again.stdout
    copy = json.loads(aiem("config", "export", "--include-secrets", env=target).stdout)
    original = json.loads(secret_file.read_text())
    assert copy == original


def test_import_rejects_bad_files_without_writing(tmp_path, secret_key):
    env = {"AIEM_DATA_DIR": str(tmp_path), "AIEM_SECRET_KEY": secret_key}
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "endpoints": [
                    {"name": "fine", "endpoint_type": "openai_api", "url": "http://127.0.0.1:9/v1"},
                    {"name": "broken", "endpoint_type": "openai_api", "config": {"nope": 1}},
                ]
            }
        )
    )
    result = aiem("config", "import", str(bad), env=env)
    assert result.returncode == 2 and "config.nope" in result.stderr
    assert json.loads(aiem("config", "export", env=env).stdout)["endpoints"] == []


def test_declarative_file_is_applied_at_start(gateway_factory, openai_upstream, tmp_path):
    data_dir = tmp_path / "declared"
    data_dir.mkdir()
    (data_dir / "endpoints.json").write_text(
        json.dumps(
            {
                "endpoints": [
                    {
                        "name": "declared",
                        "endpoint_type": "openai_api",
                        "url": openai_upstream.url,
                        "model_name": "m",
                        "start": True,
                    },
                ]
            }
        )
    )
    proc = gateway_factory(data_dir=data_dir)
    with proc.client() as api:
        listed = api.get("/endpoints").json()
        assert [(e["name"], e["state"]) for e in listed] == [("declared", "healthy")]
        reply = api.post(
            "/v1/chat/completions",
            json={"model": "declared", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert reply.json()["choices"][0]["message"]["content"] == "turn 1: hi"


def test_admin_token_guards_the_api(gateway_factory):
    proc = gateway_factory(env={"AIEM_ADMIN_TOKEN": TOKEN_A})
    assert httpx.get(proc.url + "/endpoints").status_code == 401
    assert httpx.get(proc.url + "/healthz").status_code == 200
    ok = httpx.get(proc.url + "/endpoints", headers={"Authorization": f"Bearer {TOKEN_A}"})
    assert ok.status_code == 200
    wrong = httpx.get(proc.url + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_admin_token_gives_the_console_a_sign_in(gateway_factory):
    proc = gateway_factory(console=True, env={"AIEM_ADMIN_TOKEN": TOKEN_B})
    with httpx.Client(base_url=proc.url, follow_redirects=False) as browser:
        first = browser.get("/")
        assert first.status_code == 303 and first.headers["location"] == "/login"
        assert "Admin token" in browser.get("/login").text
        wrong = browser.post("/login", data={"token": "nope"})
        assert wrong.status_code == 401 and "aiem_console" not in wrong.headers.get(
            "set-cookie", ""
        )
        signed_in = browser.post("/login", data={"token": TOKEN_B})
        assert signed_in.status_code == 303 and "HttpOnly" in signed_in.headers["set-cookie"]
        assert TOKEN_B not in signed_in.headers["set-cookie"]
        page = browser.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert browser.get("/endpoints").status_code == 200  # the cookie also opens the API
