"""The `aiem` command line.

    aiem up                      console + API in one process
    aiem serve [--no-console]    the same; --no-console for gateway-only instances
    aiem endpoints list|add|start|stop|chat ...   talk to a running instance's API
    aiem config export|import    declarative endpoints, straight from/to the store
    aiem doctor | backup FILE | restore FILE | keys rotate      operations (gateway/ops.py)
    aiem discover URL [...]      discover a web chat, print the draft and its probe

Errors are one clear line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from gateway.logs import configure as configure_logging
from gateway.ops import OPS_COMMANDS, OpsError, add_ops_commands, run_ops
from gateway.settings import SettingsError, load_settings


class CLIError(Exception):
    pass


# ---- serving ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, *, console: bool) -> int:
    import uvicorn

    from gateway.app import create_app, open_runtime
    from gateway.server import DrainingServer

    overrides: dict[str, Any] = {}
    if args.host:
        overrides["ENDPOINT_MANAGER_HOST"] = args.host
    if args.port:
        overrides["ENDPOINT_MANAGER_PORT"] = args.port
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    os.environ.setdefault("AIEM_API_URL", f"http://{_client_host(settings.host)}:{settings.port}")
    with start_up_errors(settings.store_url):
        runtime = open_runtime(settings)
        app = create_app(settings, console=console, runtime=runtime)
    kind = "console + API" if console else "API"
    print(f"aiem: {kind} on http://{settings.host}:{settings.port}", file=sys.stderr, flush=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        # JSON mode: uvicorn's own lines go through the root logger's JSON handler too.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout),
    )
    server = DrainingServer(config, grace_s=settings.drain_grace, on_drain=runtime.begin_draining)
    server.run()
    return 0


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


@contextlib.contextmanager
def start_up_errors(store_url: str) -> Iterator[None]:
    """Anything that stops the store from opening becomes one line naming what to fix."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from runtime.errors import ManagerError
    from store.crypto import SecretKeyError
    from store.db import DataDirError

    # Whatever this process creates (database, WAL, exports, browser profiles) is private.
    os.umask(0o077)
    try:
        yield
    except (SecretKeyError, ManagerError, DataDirError) as exc:
        raise CLIError(str(exc)) from None
    except SQLAlchemyError as exc:
        where = make_url(store_url).render_as_string(hide_password=True)
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise CLIError(f"cannot open the store at {where}: {reason}") from None
    except OSError as exc:
        raise CLIError(f"cannot start: {exc.strerror or exc} ({exc.filename or ''})") from None


# ---- talking to a running instance ---------------------------------------------------------


def api_client() -> httpx.Client:
    settings = load_settings()
    base = os.environ.get("AIEM_API_URL") or f"http://{_client_host(settings.host)}:{settings.port}"
    headers = {}
    if settings.admin_token_value():
        headers["Authorization"] = f"Bearer {settings.admin_token_value()}"
    return httpx.Client(base_url=base, headers=headers, timeout=httpx.Timeout(300, connect=5))


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise CLIError(f"cannot reach the API at {client.base_url}: {exc}") from None
    if response.status_code >= 400:
        raise CLIError(f"{response.status_code}: {_detail(response)}")
    return response.json() if response.content else None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            return str(body["error"].get("message"))
        return str(body.get("message") or body.get("detail"))
    return str(body)


def resolve(client: httpx.Client, ref: str) -> dict[str, Any]:
    for item in call(client, "GET", "/endpoints"):
        if ref in (item["id"], item["name"]):
            return item  # type: ignore[no-any-return]
    raise CLIError(f"no endpoint named or with id {ref!r}")


def cmd_endpoints(args: argparse.Namespace) -> int:
    with api_client() as client:
        if args.action == "list":
            rows = call(client, "GET", "/endpoints")
            print_table(rows)
        elif args.action == "add":
            body = add_body(args)
            item = call(client, "POST", "/endpoints", json=body)
            print(f"created {item['name']} ({item['id']}) state={item['state']}")
        elif args.action in ("start", "stop", "restart"):
            item = resolve(client, args.endpoint)
            item = call(client, "POST", f"/endpoints/{item['id']}/{args.action}")
            reason = f" ({item['state_reason']})" if item.get("state_reason") else ""
            print(f"{item['name']}: {item['state']}{reason}")
        elif args.action == "chat":
            item = resolve(client, args.endpoint)
            body = {"prompt": args.prompt, "session_id": args.session}
            answer = call(client, "POST", f"/endpoints/{item['id']}/chat", json=body)
            print(answer["content"])
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no endpoints; add one with: aiem endpoints add --name NAME --type TYPE --url URL")
        return
    print(f"{'NAME':24} {'TYPE':14} {'STATE':10} {'REQS':>6} {'OK%':>6}  ID")
    for row in rows:
        stats = row.get("stats") or {}
        rate = stats.get("success_rate")
        rate_text = "-" if rate is None else f"{rate:.1f}"
        print(
            f"{row['name'][:24]:24} {row['endpoint_type'][:14]:14} {row['state'][:10]:10} "
            f"{stats.get('requests', 0):>6} {rate_text:>6}  {row['id']}"
        )


def add_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.json:
        body = _read_json(args.json)
    for key in ("name", "display_name", "url", "model_name", "priority"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    if args.type:
        body["endpoint_type"] = args.type
    if args.config:
        body["config"] = _parse_json_arg(args.config, "--config")
    creds = dict(body.get("credentials") or {})
    for pair in args.credential or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"--credential expects KEY=VALUE, got {key!r}")
        creds[key] = value
    if creds:
        body["credentials"] = creds
    if args.start:
        body["start"] = True
    if "name" not in body or "endpoint_type" not in body:
        raise CLIError("an endpoint needs --name and --type (or a --json file with both)")
    return body


def _parse_json_arg(text: str, flag: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"{flag} is not valid JSON: {exc}") from None


def _read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CLIError(f"{path} is not valid JSON: {exc}") from None


# ---- discovery -------------------------------------------------------------------------------

DISCOVERY_DONE = ("ready", "failed", "approved")
DISCOVERY_POLL_S = 1.0


def discovery_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"url": args.url}
    if args.username or args.password:
        body["credentials"] = {"username": args.username or "", "password": args.password or ""}
    if args.llm and args.llm_base_url:
        raise CLIError("give either --llm ENDPOINT or --llm-base-url, not both")
    if args.llm_base_url and not args.llm_model:
        raise CLIError("--llm-base-url needs --llm-model")
    if args.llm:
        body["llm"] = {"endpoint": args.llm}
    elif args.llm_base_url:
        llm = {"base_url": args.llm_base_url, "model": args.llm_model}
        if os.environ.get("AIEM_LLM_API_KEY"):
            llm["api_key"] = os.environ["AIEM_LLM_API_KEY"]
        body["llm"] = llm
    if args.no_llm:
        body.pop("llm", None)
        body["use_llm"] = False
    return body


def follow_discovery(client: httpx.Client, draft_id: str, timeout: float, quiet: bool) -> Any:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        doc = call(client, "GET", f"/discovery/{draft_id}")
        if doc["status"] != last and not quiet:
            print(f"discover: {doc['status']}", file=sys.stderr, flush=True)
        last = doc["status"]
        if last in DISCOVERY_DONE:
            return doc
        if time.monotonic() >= deadline:
            raise CLIError(f"discovery {draft_id} did not finish within {timeout:.0f}s")
        time.sleep(DISCOVERY_POLL_S)


def print_discovery(doc: dict[str, Any]) -> None:
    print(f"discovery {doc['id']}: {doc['status']}", end="")
    print(f" ({doc['reason']}: {doc['message']})" if doc.get("reason") else "")
    print(f"confidence: {doc['confidence']:.2f}  probe passed: {doc['probe_passed']}")
    timings = doc.get("timings") or {}
    if timings:
        print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    if doc.get("config"):
        print("draft config:")
        print(json.dumps(doc["config"], indent=2, ensure_ascii=False))
    probe = (doc.get("evidence") or {}).get("probe") or {}
    for turn in (probe.get("engine") or {}).get("turns", []):
        print(f"probe: sent {turn['message_sent']!r}")
        print(f"       read {turn['answer_read']!r} in {turn['seconds']:.1f}s")
    if probe.get("signals_fired"):
        print("completion signals: " + ", ".join(probe["signals_fired"]))


def cmd_discover(args: argparse.Namespace) -> int:
    body = discovery_body(args)
    with api_client() as client:
        started = call(client, "POST", "/discovery", json=body)
        doc = follow_discovery(client, started["id"], args.timeout, quiet=args.json)
        if args.approve and doc["probe_passed"]:
            approve = {"name": args.approve, "start": args.start}
            endpoint = call(client, "POST", f"/discovery/{doc['id']}/approve", json=approve)
            doc = call(client, "GET", f"/discovery/{doc['id']}")
            if not args.json:
                print(f"approved: endpoint {endpoint['name']} ({endpoint['id']})", file=sys.stderr)
        elif args.approve:
            print("aiem: not approved: the draft did not pass its probe", file=sys.stderr)
    if args.json:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print_discovery(doc)
    return 0 if doc["probe_passed"] else 1


# ---- declarative config --------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.app import runtime_options
    from runtime.core import Runtime

    settings = load_settings()
    with start_up_errors(settings.store_url):
        rt = Runtime(runtime_options(settings))
        try:
            if args.action == "export":
                data = asyncio.run(rt.export_config(include_secrets=args.include_secrets))
                _print_export(data, args.output, secret=args.include_secrets)
            else:
                summary = asyncio.run(rt.import_config(_read_json(args.file)))
                print(f"imported: {summary['created']} created, {summary['updated']} updated")
                print(
                    "running instances apply the changes when each endpoint is (re)started",
                    file=sys.stderr,
                )
        finally:
            rt.close()
    return 0


def _print_export(data: dict[str, Any], output: str | None, *, secret: bool) -> None:
    text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    if output:
        _write_private(Path(output), text, secret=secret)
        print(f"exported {len(data['endpoints'])} endpoints to {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _write_private(path: Path, text: str, *, secret: bool) -> None:
    """Secrets go into a new 0600 file that then replaces the target: an existing file's
    looser mode never applies to plaintext keys, and a failed write leaves the old one."""
    if not secret:
        try:
            path.write_text(text)
        except OSError as exc:
            raise CLIError(f"cannot write {path}: {exc.strerror}") from None
        return
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


# ---- the parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiem", description="Universal AI Endpoint Manager")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("up", "start the console and the API"), ("serve", "start the API")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--host", help="bind address (ENDPOINT_MANAGER_HOST)")
        p.add_argument("--port", type=int, help="port (ENDPOINT_MANAGER_PORT)")
        if name == "serve":
            p.add_argument("--no-console", action="store_true", help="API only, no console")
    ep = sub.add_parser("endpoints", help="manage endpoints of a running instance")
    ep_sub = ep.add_subparsers(dest="action", required=True)
    ep_sub.add_parser("list", help="list endpoints")
    add = ep_sub.add_parser("add", help="add an endpoint")
    add.add_argument("--name")
    add.add_argument("--type", help="endpoint type (see GET /providers)")
    add.add_argument("--url")
    add.add_argument("--model", dest="model_name")
    add.add_argument("--display-name", dest="display_name")
    add.add_argument("--priority", type=int)
    add.add_argument("--credential", action="append", metavar="KEY=VALUE")
    add.add_argument("--config", help="provider config as JSON")
    add.add_argument("--json", help="a JSON file with the whole endpoint")
    add.add_argument("--start", action="store_true", help="start it right away")
    for action in ("start", "stop", "restart"):
        ep_sub.add_parser(action, help=f"{action} an endpoint").add_argument("endpoint")
    chat = ep_sub.add_parser("chat", help="send one prompt")
    chat.add_argument("endpoint", help="name or id")
    chat.add_argument("prompt")
    chat.add_argument("--session", help="session id to continue")
    cfg = sub.add_parser("config", help="export or import all endpoints as JSON")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    export = cfg_sub.add_parser("export", help="write all endpoints as JSON")
    export.add_argument("-o", "--output", help="file (default: standard output)")
    export.add_argument(
        "--include-secrets",
        action="store_true",
        help="also export credentials in plain text (file mode 0600)",
    )
    imp = cfg_sub.add_parser("import", help="upsert endpoints by name from a JSON file")
    imp.add_argument("file")
    add_ops_commands(sub)
    add_discover_parser(sub)
    return parser


def add_discover_parser(sub: Any) -> None:
    disc = sub.add_parser("discover", help="discover a web chat and draft its endpoint config")
    disc.add_argument("url", help="the chat page (http or https)")
    disc.add_argument("--username", help="log in to the site with this user name")
    disc.add_argument("--password", help="and this password")
    disc.add_argument("--llm", metavar="ENDPOINT", help="draft with a running endpoint as LLM")
    disc.add_argument(
        "--llm-base-url", help="draft with an OpenAI-compatible API (key from AIEM_LLM_API_KEY)"
    )
    disc.add_argument("--llm-model", help="the model at --llm-base-url")
    disc.add_argument("--no-llm", action="store_true", help="heuristics only")
    disc.add_argument("--approve", metavar="NAME", help="register the draft as NAME if it passed")
    disc.add_argument("--start", action="store_true", help="start the approved endpoint")
    disc.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (600)")
    disc.add_argument("--json", action="store_true", help="print the final document as JSON")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "up":
            return cmd_serve(args, console=True)
        if args.command == "serve":
            return cmd_serve(args, console=not args.no_console)
        if args.command == "endpoints":
            return cmd_endpoints(args)
        if args.command in OPS_COMMANDS:
            return run_ops(args)
        if args.command == "discover":
            return cmd_discover(args)
        return cmd_config(args)
    except (CLIError, SettingsError, OpsError) as exc:
        print(f"aiem: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
