"""The `aiem` command line.

    aiem up                      console + API in one process
    aiem serve [--no-console]    the same; --no-console for gateway-only instances
    aiem endpoints list|add|start|stop|chat ...   talk to a running instance's API
    aiem config export|import    declarative endpoints, straight from/to the store
    aiem doctor | backup FILE | restore FILE | keys rotate      operations (gateway/ops.py)

Errors are one clear line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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

    from gateway.app import create_app
    from runtime.errors import ManagerError
    from store.crypto import SecretKeyError

    overrides: dict[str, Any] = {}
    if args.host:
        overrides["ENDPOINT_MANAGER_HOST"] = args.host
    if args.port:
        overrides["ENDPOINT_MANAGER_PORT"] = args.port
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    os.environ.setdefault("AIEM_API_URL", f"http://{_client_host(settings.host)}:{settings.port}")
    try:
        app = create_app(settings, console=console)
    except (SecretKeyError, ManagerError) as exc:
        raise CLIError(str(exc)) from None
    kind = "console + API" if console else "API"
    print(f"aiem: {kind} on http://{settings.host}:{settings.port}", file=sys.stderr, flush=True)
    uvicorn.run(
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
    return 0


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


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


# ---- declarative config --------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.app import runtime_options
    from runtime.core import Runtime
    from runtime.errors import ManagerError
    from store.crypto import SecretKeyError

    settings = load_settings()
    try:
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
    except (SecretKeyError, ManagerError) as exc:
        raise CLIError(str(exc)) from None
    return 0


def _print_export(data: dict[str, Any], output: str | None, *, secret: bool) -> None:
    text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"
    if output:
        _write_private(Path(output), text, secret=secret)
        print(f"exported {len(data['endpoints'])} endpoints to {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _write_private(path: Path, text: str, *, secret: bool) -> None:
    if secret:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    else:
        path.write_text(text)


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
    return parser


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
        return cmd_config(args)
    except (CLIError, SettingsError, OpsError) as exc:
        print(f"aiem: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
