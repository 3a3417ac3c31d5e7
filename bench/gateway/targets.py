"""Start, prepare and stop the processes the benchmark measures.

Every process is started here in its own session and stopped here by its own id; its output
goes to a log file next to the results, so a target that fails to start can be diagnosed.

Targets: ``direct`` (the mock upstream itself), ``forwarder`` (the calibration proxy),
``serve`` (``aiem serve --no-console``), ``group`` (the same process, ``model`` naming a
group of three endpoints) and ``up`` (``aiem up``, console mounted).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from cpu_watch import tree_total

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parent.parent
GATEWAY_MODEL = "bench"
GROUP_MODEL = "bench-group"
JSON = {"Content-Type": "application/json"}


@dataclass
class Target:
    name: str
    completions_url: str
    model: str
    pid: int  # the process whose memory is the target's own

    def body(self, stream: bool) -> str:
        stream_part = ', "stream": true' if stream else ""
        messages = '[{"role": "user", "content": "hi"}]'
        return f'{{"model": "{self.model}", "messages": {messages}{stream_part}}}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (0 once it has gone)."""
    return int(tree_total(pid, lambda proc: proc.memory_info().rss))


def rss_breakdown_mb(pid: int) -> dict[str, float]:
    """Anonymous (heap, arenas) and file-backed (mapped files, such as an mmap'd database)
    resident memory of ``pid`` itself, from /proc; a leak shows in the anonymous part."""
    fields = {"RssAnon:": "anon_mb", "RssFile:": "file_mb", "RssShmem:": "shmem_mb"}
    found: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, *rest = line.split()
            if name in fields and rest:
                found[fields[name]] = round(int(rest[0]) / 1024, 2)  # kB
    return found


@contextlib.contextmanager
def spawned(command: list[str], log_path: Path, env: dict | None = None) -> Iterator[int]:
    """Run ``command`` for the duration of the block; yield its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc.pid
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    # The child leads its own process group, so this reaches its children and nothing else.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def wait_until_serving(port: int, pid: int, timeout: float, path: str | None = None) -> None:
    """Until the port accepts connections (and ``path`` answers 200, when given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            raise RuntimeError(f"process {pid} exited before serving on port {port}")
        if _answers(port, path):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing served on port {port} within {timeout:.0f}s")


def _answers(port: int, path: str | None) -> bool:
    try:
        if path is None:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200
    except (OSError, httpx.HTTPError):
        return False


@contextlib.contextmanager
def mock_upstream(log_dir: Path, stream_gap_ms: float) -> Iterator[Target]:
    port = free_port()
    command = [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(port)]
    command += ["--stream-gap-ms", str(stream_gap_ms)]
    with spawned(command, log_dir / "mock_upstream.log") as pid:
        wait_until_serving(port, pid, timeout=20)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        yield Target("direct", url, "mock-model", pid)


def upstream_base(direct: Target) -> str:
    return direct.completions_url.removesuffix("/chat/completions")


@contextlib.contextmanager
def forwarder(log_dir: Path, upstream: Target) -> Iterator[Target]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "forwarder:create_app", "--factory"]
    command += ["--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--loop", "uvloop", "--http", "httptools", "--workers", "1"]
    command += ["--no-access-log", "--log-level", "warning"]
    env = {"BENCH_UPSTREAM_URL": upstream_base(upstream)}
    with spawned(command, log_dir / "forwarder.log", env) as pid:
        wait_until_serving(port, pid, timeout=30)
        yield Target("forwarder", f"http://127.0.0.1:{port}/v1/chat/completions", "mock-model", pid)


def gateway_command() -> list[str]:
    """The gateway's CLI module run from this checkout (an installed ``aiem`` script may
    import another checkout's code, e.g. a shared virtualenv's editable install)."""
    return [sys.executable, "-m", "gateway.cli"]


def gateway_available() -> bool:
    return (PROJECT_ROOT / "gateway" / "cli.py").exists()


@contextlib.contextmanager
def gateway(
    log_dir: Path, upstream: Target, mode: str, extra_env: dict | None = None
) -> Iterator[Target]:
    """``aiem serve --no-console`` (mode ``serve``) or ``aiem up`` (mode ``up``);
    ``extra_env`` sets gateway settings for A/B runs (e.g. PERFORMANCE_MONITORING=false)."""
    from cryptography.fernet import Fernet

    port = free_port()
    subcommand = ["serve", "--no-console"] if mode == "serve" else ["up"]
    command = [*gateway_command(), *subcommand, "--host", "127.0.0.1", "--port", str(port)]
    with tempfile.TemporaryDirectory(prefix="aiem-bench-") as data_dir:
        env = {**(extra_env or {}), "AIEM_DATA_DIR": data_dir}
        env["AIEM_SECRET_KEY"] = Fernet.generate_key().decode()
        with spawned(command, log_dir / f"gateway-{mode}.log", env) as pid:
            wait_until_serving(port, pid, timeout=120, path="/readyz")
            base = f"http://127.0.0.1:{port}"
            register_upstream(base, upstream_base(upstream))
            target = Target(mode, f"{base}/v1/chat/completions", GATEWAY_MODEL, pid)
            wait_until_answering(target)
            yield target


def register_upstream(
    base: str, upstream_url: str, name: str = GATEWAY_MODEL, group: str | None = None
) -> None:
    spec = {
        "name": name,
        "group_name": group,
        "endpoint_type": "openai_api",
        "url": upstream_url,
        "model_name": "mock-model",
        "credentials": {"api_key": "bench-not-a-secret"},
        "max_concurrent_requests": 256,
    }
    with httpx.Client(base_url=base, timeout=30) as client:
        created = client.post("/endpoints", json=spec)
        if created.status_code != 201:
            raise RuntimeError(f"POST /endpoints -> {created.status_code}: {created.text[:500]}")
        endpoint_id = created.json()["id"]
        started = client.post(f"/endpoints/{endpoint_id}/start")
        if started.status_code >= 300:
            raise RuntimeError(f"start -> {started.status_code}: {started.text[:500]}")


def group_of_three(serve: Target) -> Target:
    """Three more endpoints on the ``serve`` gateway, in one group, all pointed at the mock
    upstream: the group is routed by priority (equal here), then least busy."""
    base = serve.completions_url.removesuffix("/v1/chat/completions")
    with httpx.Client(base_url=base, timeout=30) as client:
        upstream_url = client.get(f"/endpoints/{GATEWAY_MODEL}").json()["url"]
    for index in range(1, 4):
        register_upstream(base, upstream_url, name=f"{GROUP_MODEL}-{index}", group=GROUP_MODEL)
    target = Target("group", serve.completions_url, GROUP_MODEL, serve.pid)
    wait_until_answering(target)
    return target


def wait_until_answering(target: Target, timeout: float = 60) -> None:
    """Until one chat completion through the target succeeds (the endpoint may still start)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            answer = httpx.post(
                target.completions_url, content=target.body(False), headers=JSON, timeout=10
            )
            if answer.status_code == 200 and answer.json().get("choices"):
                return
            last = f"{answer.status_code}: {answer.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{target.name} never answered a chat completion; last: {last}")
