"""Run the real gateway as a subprocess for tests: `aiem serve` / `aiem up` on a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayProcess:
    """One gateway process; ``restart()`` keeps the data dir and the port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        secret_key: str,
        console: bool = False,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.secret_key = secret_key
        self.console = console
        self.extra_env = dict(env or {})
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "gateway.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIEM_", "DATABASE_URL"))}
        env.update(
            {
                "AIEM_DATA_DIR": str(self.data_dir),
                "AIEM_SECRET_KEY": self.secret_key,
                "AIEM_CONFIG_FILE": str(self.data_dir / "endpoints.json"),
                "AIEM_LOG_LEVEL": "warning",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        mode = ["up"] if self.console else ["serve", "--no-console"]
        return [sys.executable, "-m", "gateway.cli", *mode, "--port", str(self.port)]

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            self.command(), cwd=REPO_ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> GatewayProcess:
        self.stop()
        return self.start()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def clear(self) -> None:
        """Delete every endpoint and session, so a shared instance looks new to the next test.

        Process-wide counters (the totals of /system/metrics) are not reset: a test about
        those needs a process of its own.
        """
        with self.client() as api:
            for session in api.get("/sessions", params={"limit": 1000}).json():
                api.delete(f"/sessions/{session['id']}").raise_for_status()
            for endpoint in api.get("/endpoints").json():
                api.delete(f"/endpoints/{endpoint['id']}").raise_for_status()


@contextlib.contextmanager
def running_gateway(data_dir: Path) -> Iterator[GatewayProcess]:
    """`aiem serve --no-console` on ``data_dir`` with a key of its own, stopped afterwards."""
    proc = GatewayProcess(data_dir, secret_key=Fernet.generate_key().decode())
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
