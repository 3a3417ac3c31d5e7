"""Operator commands: ``aiem doctor``, ``aiem backup``, ``aiem restore``, ``aiem keys rotate``.

Each prints one line per step and exits non-zero when something failed; the work itself is
in store/maintenance.py and store/crypto.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

from gateway.settings import Settings, load_settings
from store.crypto import SecretBox

OPS_COMMANDS = ("doctor", "backup", "restore", "keys")
MIN_FREE_BYTES = 200 * 1024 * 1024


class OpsError(Exception):
    """One clear line for the operator; the CLI prints it and exits 2."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name:9} {self.detail}"


# ---- doctor --------------------------------------------------------------------------------


def check_data_dir(settings: Settings) -> Check:
    path = settings.data_dir.resolve()
    if not path.is_dir():
        return Check("data dir", False, f"{path} does not exist (it is made at first start)")
    mode = stat.S_IMODE(path.stat().st_mode)
    if not os.access(path, os.W_OK):
        return Check("data dir", False, f"{path} is not writable by this user")
    if mode & 0o077:
        return Check(
            "data dir", False, f"{path} is mode {mode:o}: others can read it; chmod 700 {path}"
        )
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        return Check("data dir", False, f"{path}: only {free // 2**20} MB free")
    return Check("data dir", True, f"{path} mode {mode:o}, {free // 2**20} MB free")


def check_secret_key(settings: Settings) -> Check:
    from store.crypto import SecretKeyError, key_file, read_key_file

    given = settings.secret_key_value()
    try:
        if given:
            SecretBox([k.strip().encode() for k in given.split(",") if k.strip()])
            return Check("key", True, "AIEM_SECRET_KEY is set and valid")
        path = key_file(settings.data_dir)
        if not path.exists():
            return Check("key", False, f"no AIEM_SECRET_KEY and no key file at {path}")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            return Check("key", False, f"{path} is mode {mode:o}; chmod 600 {path}")
        count = len(read_key_file(path))
        return Check("key", True, f"{path} ({count} key{'s' if count > 1 else ''}, mode 600)")
    except (SecretKeyError, OSError) as exc:
        return Check("key", False, str(exc))


def check_store(settings: Settings) -> list[Check]:
    """Reachable, migrated to this version's level, writable, and the key opens its canary."""
    from sqlalchemy import text

    from store.crypto import SecretKeyError
    from store.db import make_engine
    from store.maintenance import check_canary, migration_levels

    url = settings.store_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        return [Check("store", False, f"no database at {url[len('sqlite:///') :]}: start once")]
    engine = make_engine(url)
    try:
        current, head = migration_levels(engine)
        checks = [_migration_check(current, head)]
        with engine.begin() as conn:  # a write that is rolled back: proves the store is writable
            conn.execute(text("CREATE TEMPORARY TABLE aiem_doctor_probe (x INTEGER)"))
            conn.execute(text("INSERT INTO aiem_doctor_probe VALUES (1)"))
        checks.insert(0, Check("store", True, f"{_safe_url(url)} reachable and writable"))
        box = _existing_box(settings)
        if current is not None and box is not None:
            try:
                canary = check_canary(engine, box)
                checks.append(Check("secrets", True, f"the key opens the store (canary {canary})"))
            except SecretKeyError as exc:
                checks.append(Check("secrets", False, f"the key does not open the store: {exc}"))
        return checks
    except Exception as exc:  # noqa: BLE001 - doctor reports any failure as a line
        return [Check("store", False, f"{_safe_url(url)}: {_first_line(exc)}")]
    finally:
        engine.dispose()


def _existing_box(settings: Settings) -> SecretBox | None:
    """The configured keys, without creating a key file the way a first start does."""
    from store.crypto import SecretBox, key_file, read_key_file

    given = settings.secret_key_value()
    if given:
        return SecretBox([k.strip().encode() for k in given.split(",") if k.strip()])
    path = key_file(settings.data_dir)
    return SecretBox(read_key_file(path)) if path.exists() else None


def _migration_check(current: str | None, head: str | None) -> Check:
    if current is None:
        return Check("schema", True, f"empty store; created at first start (level {head})")
    if current != head:
        return Check("schema", False, f"level {current}, this version needs {head}: start once")
    return Check("schema", True, f"level {current} (current)")


def check_browser() -> Check:
    return asyncio.run(_check_browser())


async def _check_browser() -> Check:
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    from providers.web_chat.browser import QUIET_ARGS, browser_executable

    try:
        async with async_playwright() as pw:
            executable = browser_executable(pw)
            args = [*QUIET_ARGS, *(["--no-sandbox"] if os.geteuid() == 0 else [])]
            browser = await asyncio.wait_for(
                pw.chromium.launch(executable_path=executable, headless=True, args=args), 60
            )
            version = browser.version
            await browser.close()
    except (PlaywrightError, TimeoutError, OSError) as exc:
        return Check("browser", False, f"Chromium does not launch: {_first_line(exc)}")
    where = executable or "Playwright's Chromium"
    return Check("browser", True, f"{where} launches (Chromium {version})")


def check_port(settings: Settings) -> Check:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    with socket.socket() as sock:
        sock.settimeout(1)
        busy = sock.connect_ex((host, settings.port)) == 0
    if not busy:
        return Check("port", True, f"{settings.host}:{settings.port} is free")
    try:
        answer = httpx.get(f"http://{host}:{settings.port}/healthz", timeout=2)
        if answer.status_code == 200 and answer.json().get("status") == "ok":
            return Check("port", True, f"{settings.host}:{settings.port} serves a running aiem")
    except (httpx.HTTPError, ValueError):
        pass
    return Check("port", False, f"{settings.host}:{settings.port} is taken by another program")


def check_redis(url: str) -> Check:
    """REDIS_URL answers PING (the limits fall back to per-instance shares when it does not,
    so chats keep working, but the limits are then only as exact as the shares)."""
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
    from redis.retry import Retry

    from runtime.redis_limits import redacted

    client = Redis.from_url(
        url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
        version = client.info("server").get("redis_version", "?")
    except (RedisError, OSError) as exc:
        return Check("redis", False, f"{redacted(url)} does not answer PING: {_first_line(exc)}")
    finally:
        client.close()
    return Check("redis", True, f"{redacted(url)} answers PING (Redis {version})")


def run_doctor(settings: Settings, *, browser: bool = True) -> list[Check]:
    steps: list[Callable[[], Check | list[Check]]] = [
        lambda: check_data_dir(settings),
        lambda: check_secret_key(settings),
        lambda: check_store(settings),
        lambda: check_port(settings),
    ]
    if browser:
        steps.insert(0, check_browser)
    redis_url = settings.redis_url
    if redis_url:
        steps.append(lambda: check_redis(redis_url))
    checks: list[Check] = []
    for step in steps:
        result = step()
        checks.extend(result if isinstance(result, list) else [result])
    checks.append(Check("cluster", True, "single instance (no peers configured)"))
    return checks


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_doctor(load_settings(), browser=not args.no_browser)
    for check in checks:
        print(check.line(), flush=True)
    failed = [c.name for c in checks if not c.ok]
    if failed:
        print(f"aiem doctor: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# ---- backup / restore ----------------------------------------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    from store.maintenance import backup_sqlite, sqlite_path

    settings = load_settings()
    size = backup_sqlite(sqlite_path(settings.store_url), Path(args.file))
    print(f"backed up {sqlite_path(settings.store_url)} to {args.file} ({size} bytes, mode 600)")
    print(
        "the backup's secrets are encrypted: keep the key (AIEM_SECRET_KEY or "
        f"{settings.data_dir / 'secret.key'}) with it, apart from it",
        file=sys.stderr,
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from store.crypto import open_box
    from store.maintenance import restore_sqlite, sqlite_path

    settings = load_settings()
    if check_port(settings).detail.endswith("serves a running aiem"):
        raise OpsError(f"an instance is running on port {settings.port}: stop it before restoring")
    db = sqlite_path(settings.store_url)
    db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    restore_sqlite(Path(args.file), db, open_box(settings.secret_key_value(), settings.data_dir))
    print(f"restored {db} from {args.file}")
    return 0


# ---- keys ----------------------------------------------------------------------------------


def cmd_keys(args: argparse.Namespace) -> int:
    from store.crypto import SecretBox, key_file, read_key_file, write_key_file
    from store.db import make_engine
    from store.maintenance import reencrypt_all

    settings = load_settings()
    given = settings.secret_key_value()
    if given and not args.reencrypt:
        raise OpsError(
            "the key comes from AIEM_SECRET_KEY: put a new key first in it (new,old), restart "
            "the instances one by one, then run `aiem keys rotate --reencrypt`; a new key: "
            + Fernet.generate_key().decode()
        )
    if given:
        box = SecretBox([k.strip().encode() for k in given.split(",") if k.strip()])
    else:
        path = key_file(settings.data_dir)
        if not path.exists():
            raise OpsError(f"no key file at {path}: nothing to rotate")
        keys = read_key_file(path)
        if not args.reencrypt:
            keys = [Fernet.generate_key(), *keys]
            write_key_file(path, keys)  # old keys stay readable for running instances
            print(f"new key added first to {path} ({len(keys)} keys)")
        box = SecretBox(keys)
    engine = make_engine(settings.store_url)
    try:
        report = reencrypt_all(engine, box)
    finally:
        engine.dispose()
    print(f"re-encrypted {report.rows} secrets in {report.columns} columns under the newest key")
    return 0


# ---- wiring --------------------------------------------------------------------------------


def add_ops_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    doctor = sub.add_parser(
        "doctor", help="check the browser, store, key, data dir, port and Redis (when set)"
    )
    doctor.add_argument("--no-browser", action="store_true", help="skip the browser launch")
    backup = sub.add_parser("backup", help="copy the SQLite store of a running instance")
    backup.add_argument("file")
    restore = sub.add_parser("restore", help="replace the SQLite store with a backup")
    restore.add_argument("file")
    keys = sub.add_parser("keys", help="encryption keys")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    rotate = keys_sub.add_parser("rotate", help="encrypt every secret under a new key")
    rotate.add_argument(
        "--reencrypt",
        action="store_true",
        help="no new key: re-encrypt everything under the first configured key",
    )


def run_ops(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from store.crypto import SecretKeyError
    from store.maintenance import MaintenanceError

    handlers = {"doctor": cmd_doctor, "backup": cmd_backup, "restore": cmd_restore}
    try:
        return handlers.get(args.command, cmd_keys)(args)
    except (MaintenanceError, SecretKeyError) as exc:
        raise OpsError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise OpsError(f"the store cannot be used: {_first_line(exc)}") from None
    except OSError as exc:
        raise OpsError(f"{exc.filename or ''}: {exc.strerror}") from None


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return url


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
