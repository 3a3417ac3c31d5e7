"""Declarative endpoints: export all endpoints to JSON and upsert them back by name.

Secrets are exported only when asked for explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from runtime.errors import InvalidConfig
from runtime.repository import EndpointRepository, describe_errors, validation_errors
from store.models import DesiredState, EndpointBase, EndpointCreate, EndpointUpdate

FORMAT_VERSION = 1
EXPORTED_FIELDS = tuple(EndpointBase.model_fields)


def export_endpoints(repo: EndpointRepository, *, include_secrets: bool = False) -> dict[str, Any]:
    items = []
    for row in repo.all():
        item = {name: getattr(row, name) for name in EXPORTED_FIELDS}
        item["desired_state"] = row.desired_state
        if include_secrets:
            item["credentials"] = repo.credentials(row)
        else:
            item["credential_keys"] = repo.credential_keys(row)
        items.append(item)
    return {"version": FORMAT_VERSION, "endpoints": items}


def _parse(item: Any, index: int) -> tuple[EndpointCreate, bool]:
    if not isinstance(item, dict):
        raise InvalidConfig(f"endpoints[{index}] must be an object")
    body = {k: v for k, v in item.items() if k not in ("desired_state", "credential_keys", "id")}
    try:
        create = EndpointCreate.model_validate(body)
    except ValidationError as exc:
        errors = validation_errors(exc, f"endpoints[{index}]")
        raise InvalidConfig(describe_errors(errors), errors=errors) from None
    running = item.get("desired_state") == DesiredState.running or bool(item.get("start"))
    return create, running


def import_endpoints(repo: EndpointRepository, data: Any) -> dict[str, int]:
    """Validate everything first, then upsert by name; returns counts."""
    items = data.get("endpoints") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise InvalidConfig('expected {"endpoints": [...]} or a list of endpoints')
    parsed = [_parse(item, i) for i, item in enumerate(items)]
    for create, _ in parsed:
        repo.validate_config(create.endpoint_type, create.config)
    created = updated = 0
    for (create, running), raw in zip(parsed, items, strict=True):
        existing = repo.get_by_name(create.name)
        desired = DesiredState.running if running else DesiredState.stopped
        if existing is None:
            repo.create(create, desired_state=desired)
            created += 1
            continue
        fields = {k: v for k, v in create.model_dump().items() if k in EndpointUpdate.model_fields}
        if "credentials" not in raw:
            fields.pop("credentials", None)  # keep the stored secrets
        repo.update(existing.id, EndpointUpdate.model_validate(fields))
        if "desired_state" in raw or "start" in raw:
            repo.set_desired(existing.id, desired)
        updated += 1
    return {"created": created, "updated": updated}


def import_file(repo: EndpointRepository, path: Path) -> dict[str, int]:
    try:
        data = orjson.loads(Path(path).read_bytes())
    except orjson.JSONDecodeError as exc:
        raise InvalidConfig(f"{path}: not valid JSON ({exc})") from None
    return import_endpoints(repo, data)
