"""Debian's nginx with the shipped site (deploy/nginx/aiem.conf) in front of test instances."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.gateway_proc import REPO_ROOT, free_port

NGINX_FAIL_TIMEOUT_S = 5  # as in deploy/nginx/aiem.conf


SHIPPED_SITE = REPO_ROOT / "deploy" / "nginx" / "aiem.conf"
SHIPPED_SERVER = f"server aiem:8001 max_fails=3 fail_timeout={NGINX_FAIL_TIMEOUT_S}s;"


def write_nginx_conf(workdir: Path, upstream_ports: list[int], port: int) -> Path:
    """nginx.conf in ``workdir``: the shipped site listening on ``port``, its upstream block
    listing ``upstream_ports``, every file nginx writes kept in ``workdir``."""
    site = SHIPPED_SITE.read_text()
    if SHIPPED_SERVER not in site:
        raise RuntimeError(f"{SHIPPED_SITE} no longer has {SHIPPED_SERVER!r}: update this helper")
    servers = "\n    ".join(
        f"server 127.0.0.1:{p} max_fails=3 fail_timeout={NGINX_FAIL_TIMEOUT_S}s;"
        for p in upstream_ports
    )
    site = site.replace(SHIPPED_SERVER, servers).replace("listen 80;", f"listen 127.0.0.1:{port};")
    (workdir / "aiem.conf").write_text(site)
    temp = workdir / "tmp"
    temp.mkdir(exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {workdir}/aiem.conf;
}}
"""
    )
    return conf


def start_nginx(
    nginx: str, workdir: Path, upstream_ports: list[int]
) -> tuple[subprocess.Popen, str]:
    """The shipped site with its upstream pointed at ``upstream_ports``; returns (process, url)."""
    port = free_port()
    write_nginx_conf(workdir, upstream_ports, port)
    proc = subprocess.Popen(
        [nginx, "-c", str(workdir / "nginx.conf"), "-p", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("nginx did not come up: " + (workdir / "error.log").read_text())


def stop_nginx(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)
