"""aiem doctor: each check finds the thing it checks broken, and passes when it is not."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from gateway.ops import check_port, run_doctor
from gateway.settings import Settings
from store.db import Store
from tests.cli_run import aiem
from tests.gateway_proc import free_port


def settings_for(data_dir: Path, **env: str) -> Settings:
    values = {"AIEM_DATA_DIR": str(data_dir), "AIEM_SECRET_KEY": "", **env}
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def ready_dir(tmp_path: Path) -> Path:
    """A data dir as a first start leaves it: store, key file, mode 0700."""
    path = tmp_path / "data"
    Store.open(url=f"sqlite:///{path / 'aiem.db'}", data_dir=path, secret_key=None).dispose()
    path.chmod(0o700)
    return path


def by_name(checks) -> dict[str, tuple[bool, str]]:
    return {c.name: (c.ok, c.detail) for c in checks}


def test_a_ready_data_dir_passes_every_check(ready_dir):
    checks = by_name(
        run_doctor(settings_for(ready_dir, ENDPOINT_MANAGER_PORT=str(free_port())), browser=False)
    )
    assert all(ok for ok, _ in checks.values()), checks
    assert checks["schema"][1].endswith("(current)")
    assert "canary ok" in checks["secrets"][1]


def test_data_dir_readable_by_others_fails(ready_dir):
    ready_dir.chmod(0o755)
    ok, detail = by_name(run_doctor(settings_for(ready_dir), browser=False))["data dir"]
    assert not ok and "others can read it" in detail and "chmod 700" in detail


def test_missing_data_dir_and_key_fail(tmp_path):
    checks = by_name(run_doctor(settings_for(tmp_path / "nowhere"), browser=False))
    assert not checks["data dir"][0] and "does not exist" in checks["data dir"][1]
    assert not checks["key"][0] and "no key file" in checks["key"][1]
    assert not checks["store"][0]


def test_key_file_readable_by_others_fails(ready_dir):
    (ready_dir / "secret.key").chmod(0o644)
    ok, detail = by_name(run_doctor(settings_for(ready_dir), browser=False))["key"]
    assert not ok and "chmod 600" in detail


def test_a_wrong_key_does_not_open_the_store(ready_dir):
    wrong = Fernet.generate_key().decode()
    checks = by_name(run_doctor(settings_for(ready_dir, AIEM_SECRET_KEY=wrong), browser=False))
    assert checks["key"][0]  # a valid key...
    assert not checks["secrets"][0] and "does not open the store" in checks["secrets"][1]


def test_an_outdated_schema_fails(ready_dir):
    import sqlite3

    conn = sqlite3.connect(ready_dir / "aiem.db")
    conn.execute("UPDATE alembic_version SET version_num = '0001'")
    conn.commit()
    conn.close()
    ok, detail = by_name(run_doctor(settings_for(ready_dir), browser=False))["schema"]
    assert not ok and "level 0001" in detail


def test_an_unreachable_store_fails(ready_dir):
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    ok, detail = by_name(run_doctor(settings_for(ready_dir, DATABASE_URL=url), browser=False))[
        "store"
    ]
    assert not ok and str(url.split("@")[1].split("/")[0]) in detail


def test_a_port_taken_by_another_program_fails(ready_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        check = check_port(settings_for(ready_dir, ENDPOINT_MANAGER_PORT=str(port)))
    assert not check.ok and "taken by another program" in check.detail


def test_a_port_served_by_aiem_passes(ready_dir, gateway):
    check = check_port(settings_for(ready_dir, ENDPOINT_MANAGER_PORT=str(gateway.port)))
    assert check.ok and "running aiem" in check.detail


def run_cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``aiem args`` on ``data_dir`` (no key in the environment, a free port)."""
    defaults = {"AIEM_SECRET_KEY": "", "ENDPOINT_MANAGER_PORT": str(free_port())}
    return aiem(*args, env={"AIEM_DATA_DIR": str(data_dir), **defaults, **env})


@pytest.mark.browser
def test_doctor_command_launches_the_browser_and_exits_0(ready_dir):
    done = run_cli(ready_dir, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ok") and "launches (Chromium" in lines[0]
    assert len(lines) == 8 and all(line.startswith("ok") for line in lines)


def test_doctor_command_reports_a_missing_browser_and_exits_1(ready_dir):
    done = run_cli(ready_dir, "doctor", AIEM_BROWSER_EXECUTABLE="/nonexistent/chromium")
    assert done.returncode == 1
    first = done.stdout.splitlines()[0]
    assert first.startswith("FAIL") and "does not launch" in first
    assert "1 check(s) failed: browser" in done.stderr
