"""The deployment files: the Dockerfile lints, the unit verifies, nginx really proxies JSON and
unbuffered SSE to a running instance, and the compose file wires what the guide says."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.gateway_proc import REPO_ROOT
from tests.ops.nginx_support import start_nginx, stop_nginx

DEPLOY = REPO_ROOT / "deploy"
IN_CI = bool(os.environ.get("CI"))


def tool(name: str, *extra_dirs: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([*extra_dirs, os.environ.get("PATH", "")]))
    if found:
        return found
    if IN_CI:
        pytest.fail(f"{name} must be installed in CI (.ci/run installs it)")
    pytest.skip(f"{name} is not installed")


def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint", str(Path(sys.executable).parent))
    done = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/healthz" in text
    assert "chromium" in text and 'VOLUME ["/var/lib/aiem"]' in text


def test_systemd_unit_verifies(tmp_path):
    analyze = tool("systemd-analyze", "/usr/bin", "/bin")
    unit = (DEPLOY / "aiem.service").read_text()
    for setting in (
        "StateDirectory=aiem",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "EnvironmentFile=/etc/aiem/aiem.env",
    ):
        assert setting in unit, setting
    # verify checks that ExecStart exists: point it at this checkout's command.
    local = tmp_path / "aiem.service"
    local.write_text(
        unit.replace("/opt/aiem/.venv/bin/aiem", str(Path(sys.executable).parent / "aiem"))
    )
    done = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "aiem.service" not in done.stderr, done.stderr


def test_compose_file_wires_postgres_aiem_and_nginx():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "aiem", "nginx"}
    aiem = services["aiem"]
    assert aiem["environment"]["DATABASE_URL"].startswith("postgresql://aiem:")
    assert aiem["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["nginx"]["depends_on"]["aiem"]["condition"] == "service_healthy"
    assert "./nginx/aiem.conf:/etc/nginx/conf.d/default.conf:ro" in services["nginx"]["volumes"]


@pytest.fixture
def nginx_in_front(tmp_path, gateway):
    proc, url = start_nginx(tool("nginx", "/usr/sbin"), tmp_path, [gateway.port])
    yield url
    stop_nginx(proc)


def test_nginx_proxies_json_and_streams_unbuffered(nginx_in_front, openai_upstream):
    openai_upstream.chunk_delay = 0.25
    with httpx.Client(base_url=nginx_in_front, timeout=30) as api:
        body = {
            "name": "behind",
            "endpoint_type": "openai_api",
            "url": openai_upstream.url,
            "model_name": "m",
            "start": True,
        }
        assert api.post("/endpoints", json=body).status_code == 201
        chat = {"model": "behind", "messages": [{"role": "user", "content": "one two three four"}]}
        answer = api.post("/v1/chat/completions", json=chat)
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == "turn 1: one two three four"
        arrivals = []
        with api.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                    if json.loads(line[6:])["choices"][0]["delta"].get("content"):
                        arrivals.append(time.monotonic())
    assert len(arrivals) >= 3
    # Chunks sent 0.25 s apart arrive apart: nginx did not hold the stream back.
    assert arrivals[-1] - arrivals[0] >= 0.4
