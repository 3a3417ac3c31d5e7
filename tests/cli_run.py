"""Running the `aiem` command line in tests."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

from gateway.cli import main
from tests.gateway_proc import REPO_ROOT


def aiem(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``aiem args`` with ``env`` over this environment minus its AIEM_ settings.

    Commands that serve run as a real process (start-up is what they test); the others run
    ``main`` here, as their process would, without paying the interpreter's start each time.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AIEM_")}
    full_env.update(env)
    if args[0] not in ("serve", "up"):
        return in_process(list(args), full_env)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def in_process(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["aiem", *args], code, out.getvalue(), err.getvalue())
