"""REDIS_URL: validated at start-up with one line, checked by `aiem doctor`, never shown with its
password."""

from __future__ import annotations

import pytest

from gateway.ops import run_doctor
from gateway.settings import SettingsError, describe_settings, load_settings
from tests.fixtures.redis_server import redis_server_fixture  # noqa: F401
from tests.gateway_proc import free_port


def redis_check(tmp_path, url: str) -> tuple[bool, str]:
    settings = load_settings(AIEM_DATA_DIR=str(tmp_path), REDIS_URL=url)
    checks = {c.name: c for c in run_doctor(settings, browser=False)}
    return checks["redis"].ok, checks["redis"].line()


def test_doctor_pings_redis_when_it_is_set(tmp_path, redis_server):
    ok, line = redis_check(tmp_path, redis_server.url)
    assert ok and line.startswith("ok") and "answers PING (Redis 7" in line


def test_doctor_fails_when_redis_does_not_answer_and_hides_the_password(tmp_path):
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    ok, line = redis_check(tmp_path, url)
    assert not ok and line.startswith("FAIL") and "does not answer PING" in line
    assert "hunter2-secret" not in line and ":***@127.0.0.1" in line


def test_no_redis_check_without_redis_url(tmp_path):
    checks = run_doctor(load_settings(AIEM_DATA_DIR=str(tmp_path)), browser=False)
    assert "redis" not in {c.name for c in checks}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://cache:6379", "redis://, rediss://, unix://"),
        ("redis://cache:port/0", "Port could not be cast"),
    ],
)
def test_a_bad_redis_url_is_one_clear_line(url, says):
    # The CLI prints a SettingsError as this one line and exits 2 (tests/gateway/test_cli.py).
    with pytest.raises(SettingsError) as bad:
        load_settings(REDIS_URL=url)
    message = str(bad.value)
    assert message.startswith("invalid settings: REDIS_URL:") and says in message
    assert "\n" not in message


def test_the_settings_listing_shows_redis_url_without_its_password():
    rows = describe_settings(load_settings(REDIS_URL="redis://app:hunter2-secret@cache:6379/1"))
    shown = {r["name"]: r["value"] for r in rows}["REDIS_URL"]
    assert shown == "redis://app:***@cache:6379/1"
