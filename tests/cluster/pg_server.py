"""A PostgreSQL server of the test's own (initdb + pg_ctl on a free port in a temp dir), which
the test may stop and start again: the shared test server must never be taken away.

Like scripts/pg-temp.sh: run as the ``postgres`` user when we are root (PostgreSQL refuses to
run as root), trust authentication, fsync off, listening on 127.0.0.1 only.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.gateway_proc import free_port

ROLE = "aiem"


def postgres_bindir() -> str | None:
    """Where initdb and pg_ctl live, or None when PostgreSQL is not installed."""
    if shutil.which("pg_config"):
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        bindir = done.stdout.strip()
        if done.returncode == 0 and Path(bindir, "initdb").exists():
            return bindir
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(bindir, "initdb").exists():
            return bindir
    initdb = shutil.which("initdb")
    return str(Path(initdb).parent) if initdb else None


class PgServer:
    """``start()`` once (initdb), then ``stop()`` / ``start()`` as often as needed;
    ``destroy()`` stops it for good and removes its files."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
        self.dir = Path(tempfile.mkdtemp(prefix="aiem-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        self.url = f"postgresql://{ROLE}@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.getuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, user="postgres")

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        command = [str(Path(self.bindir, tool)), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}")

    def init(self) -> PgServer:
        self._run("initdb", "-D", str(self.data), "-U", ROLE, "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")  # fmt: skip
        return self

    def start(self) -> float:
        """Start the server and wait until it accepts connections; the seconds it took."""
        started = time.monotonic()
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options,
                  "start")  # fmt: skip
        return time.monotonic() - started

    def stop(self, mode: str = "fast") -> float:
        """Stop the server (``fast``: clients are disconnected at once); the seconds it took."""
        started = time.monotonic()
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        return time.monotonic() - started

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)

    def server_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
