"""Endpoint rows: validation against the provider registry, CRUD, state and events.

Synchronous (SQLModel); the manager calls these in a worker thread.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python
from sqlalchemy import String, cast, func, or_
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select, update

from providers.base import Provider
from providers.registry import ProviderRegistry, UnknownEndpointType
from runtime.errors import Conflict, InvalidConfig, NotFound
from runtime.events import EndpointEventNote, EventBus
from runtime.health import parse_health_config
from store.db import Store
from store.models import (
    Endpoint,
    EndpointCreate,
    EndpointEvent,
    EndpointEventPublic,
    EndpointPublic,
    EndpointUpdate,
    utcnow,
)

# EndpointPublic's fields, in its order: each one is a column of the endpoint table.
_PUBLIC_COLUMNS = tuple(EndpointPublic.model_fields)
# Fields a PATCH may set to null (the others are required columns).
CLEARABLE = frozenset({"group_name", "rate_limit_per_minute", "credentials", "config"})


def validation_errors(exc: ValidationError, prefix: str) -> list[dict[str, Any]]:
    return [
        {"loc": [prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def describe_errors(errors: list[dict[str, Any]]) -> str:
    return "; ".join(".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in errors)


class EndpointRepository:
    def __init__(
        self, store: Store, registry: ProviderRegistry, events: EventBus | None = None
    ) -> None:
        self.store = store
        self.registry = registry
        self.bus = events or EventBus()

    def canonical_type(self, endpoint_type: str) -> str:
        """The registered spelling of a type name (the seed writes ``WEB_CHAT``, ``REST_API``)."""
        if endpoint_type in self.registry.types():
            return endpoint_type
        lowered = endpoint_type.strip().lower()
        return lowered if lowered in self.registry.types() else endpoint_type

    # ---- validation ------------------------------------------------------------------------

    def provider_class(self, endpoint_type: str) -> type[Provider]:
        try:
            return self.registry.get(endpoint_type)
        except UnknownEndpointType as exc:
            raise InvalidConfig(
                str(exc),
                errors=[{"loc": ["endpoint_type"], "msg": str(exc), "type": "unknown_type"}],
            ) from None

    def validate_config(self, endpoint_type: str, config: dict[str, Any] | None) -> BaseModel:
        cls = self.provider_class(endpoint_type)
        try:
            return cls.validate_config(config)
        except ValidationError as exc:
            errors = validation_errors(exc, "config")
            raise InvalidConfig(
                f"invalid {endpoint_type} config: {describe_errors(errors)}", errors=errors
            ) from None

    def validate_health_config(self, data: dict[str, Any] | None) -> dict[str, Any]:
        try:
            config = parse_health_config(data)
        except ValidationError as exc:
            errors = validation_errors(exc, "health_config")
            raise InvalidConfig(
                f"invalid health_config: {describe_errors(errors)}", errors=errors
            ) from None
        return config.model_dump(mode="json", exclude_unset=True)

    # ---- reading ---------------------------------------------------------------------------

    def get(self, endpoint_id: str) -> Endpoint:
        with self.store.session() as session:
            row = session.get(Endpoint, endpoint_id)
        if row is None:
            raise NotFound(f"endpoint {endpoint_id!r} not found")
        return row

    def get_by_name(self, name: str) -> Endpoint | None:
        with self.store.session() as session:
            return session.exec(select(Endpoint).where(Endpoint.name == name)).first()

    def resolve(self, ref: str) -> Endpoint:
        """An endpoint by id or, failing that, by name (every per-endpoint route takes both)."""
        with self.store.session() as session:
            row = session.get(Endpoint, ref)
            if row is None:
                row = session.exec(select(Endpoint).where(Endpoint.name == ref)).first()
        if row is None:
            raise NotFound(f"endpoint {ref!r} not found")
        return row

    def group_members(self, group: str) -> list[Endpoint]:
        """A group's endpoints, best first (priority, then name)."""
        stmt = (
            select(Endpoint)
            .where(Endpoint.group_name == group)
            .order_by(col(Endpoint.priority), col(Endpoint.name))
        )
        with self.store.session() as session:
            return list(session.exec(stmt).all())

    def all(self, *, state: str | None = None, endpoint_type: str | None = None) -> list[Endpoint]:
        stmt = select(Endpoint).order_by(col(Endpoint.priority), col(Endpoint.name))
        if state:
            stmt = stmt.where(Endpoint.state == state)
        if endpoint_type:
            stmt = stmt.where(Endpoint.endpoint_type == self.canonical_type(endpoint_type))
        with self.store.session() as session:
            return list(session.exec(stmt).all())

    def count_by_state(self) -> dict[str, int]:
        stmt = select(Endpoint.state, func.count()).group_by(Endpoint.state)
        with self.store.session() as session:
            return {state: int(n) for state, n in session.exec(stmt).all()}

    def credentials(self, row: Endpoint) -> dict[str, str]:
        if not row.credentials_encrypted:
            return {}
        return orjson.loads(self.store.box.decrypt_bytes(row.credentials_encrypted))

    def credential_keys(self, row: Endpoint) -> list[str]:
        if row.credential_keys is not None:
            return list(row.credential_keys)
        return sorted(self.credentials(row))

    def backfill_credential_keys(self) -> int:
        """Store the key names of rows written before they were kept beside the ciphertext."""
        # Rows written before none_as_null hold the JSON value null rather than SQL NULL.
        keys = col(Endpoint.credential_keys)
        stmt = select(Endpoint).where(or_(keys.is_(None), cast(keys, String) == "null"))
        with self.store.session() as session:
            rows = list(session.exec(stmt).all())
            for row in rows:
                row.credential_keys = sorted(self.credentials(row))
                session.add(row)
            session.commit()
        return len(rows)

    def public(self, row: Endpoint) -> dict[str, Any]:
        data = EndpointPublic.model_validate(
            {**row.model_dump(), "credential_keys": self.credential_keys(row)}
        ).model_dump(mode="json")
        return data

    def public_rows(
        self, *, state: str | None = None, endpoint_type: str | None = None
    ) -> list[dict[str, Any]]:
        """``all()`` as public dicts, read with a plain column query: listing hundreds of
        endpoints skips building an ORM object and a validated model per row."""
        columns = [Endpoint.__table__.c[name] for name in _PUBLIC_COLUMNS]  # type: ignore[attr-defined]
        stmt = sa_select(*columns).order_by(col(Endpoint.priority), col(Endpoint.name))
        if state:
            stmt = stmt.where(col(Endpoint.state) == state)
        if endpoint_type:
            stmt = stmt.where(col(Endpoint.endpoint_type) == self.canonical_type(endpoint_type))
        with self.store.session() as session:
            result = session.execute(stmt)
            names = list(result.keys())
            rows = [dict(zip(names, values, strict=True)) for values in result.all()]
        for row in rows:
            if row["credential_keys"] is None:  # not backfilled yet: the slow way, once
                row["credential_keys"] = self.credential_keys(self.get(row["id"]))
        return to_jsonable_python(rows)  # type: ignore[no-any-return]

    def events(self, endpoint_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        self.get(endpoint_id)
        stmt = (
            select(EndpointEvent)
            .where(EndpointEvent.endpoint_id == endpoint_id)
            .order_by(EndpointEvent.id.desc())  # type: ignore[union-attr]
            .limit(limit)
        )
        with self.store.session() as session:
            rows = session.exec(stmt).all()
        return [
            EndpointEventPublic.model_validate(r, from_attributes=True).model_dump(mode="json")
            for r in rows
        ]

    def state_history(self, endpoint_id: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """The latest state changes, newest first."""
        stmt = (
            select(EndpointEvent)
            .where(
                EndpointEvent.endpoint_id == endpoint_id, col(EndpointEvent.to_state).is_not(None)
            )
            .order_by(EndpointEvent.id.desc())  # type: ignore[union-attr]
            .limit(limit)
        )
        with self.store.session() as session:
            rows = session.exec(stmt).all()
        return [
            {
                "at": r.at.isoformat(),
                "kind": r.kind,
                "from_state": r.from_state,
                "to_state": r.to_state,
                "reason": r.detail,
            }
            for r in rows
        ]

    # ---- writing ---------------------------------------------------------------------------

    def create(self, data: EndpointCreate, *, desired_state: str = "stopped") -> Endpoint:
        endpoint_type = self.canonical_type(data.endpoint_type)
        config = self.validate_config(endpoint_type, data.config)
        fields = data.model_dump(
            exclude={"credentials", "start", "config", "endpoint_type", "health_config"}
        )
        if fields["max_concurrent_requests"] is None:
            fields["max_concurrent_requests"] = self.provider_class(
                endpoint_type
            ).default_max_concurrent
        row = Endpoint(
            **fields,
            endpoint_type=endpoint_type,
            config=config.model_dump(mode="json", exclude_unset=True),
            health_config=self.validate_health_config(data.health_config),
        )
        row.display_name = row.display_name or row.name
        row.desired_state = desired_state
        self._set_credentials(row, data.credentials)
        with self.store.session() as session:
            if session.exec(select(Endpoint.id).where(Endpoint.name == data.name)).first():
                raise Conflict(f"an endpoint named {data.name!r} already exists")
            self._check_names(session, data.name, data.group_name)
            session.add(row)
            event = EndpointEvent(endpoint_id=row.id, kind="created", to_state=row.state)
            session.add(event)
            try:
                session.commit()
            except IntegrityError:
                raise Conflict(f"an endpoint named {data.name!r} already exists") from None
        self._publish(row.name, event)
        return row

    def update(self, endpoint_id: str, patch: EndpointUpdate) -> Endpoint:
        changes = patch.model_dump(exclude_unset=True)
        # A null clears only what may be empty; for the rest it means "unchanged".
        changes = {k: v for k, v in changes.items() if v is not None or k in CLEARABLE}
        with self.store.session() as session:
            row = session.get(Endpoint, endpoint_id)
            if row is None:
                raise NotFound(f"endpoint {endpoint_id!r} not found")
            if changes.get("group_name"):
                self._check_names(session, row.name, changes["group_name"])
            if "config" in changes:
                config = self.validate_config(row.endpoint_type, changes.pop("config"))
                row.config = config.model_dump(mode="json", exclude_unset=True)
            if "health_config" in changes:
                row.health_config = self.validate_health_config(changes.pop("health_config"))
            if "credentials" in changes:
                self._set_credentials(row, changes.pop("credentials") or {})
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            session.add(row)
            names = sorted(patch.model_dump(exclude_unset=True))
            event = EndpointEvent(endpoint_id=row.id, kind="updated", detail=", ".join(names))
            session.add(event)
            session.commit()
        self._publish(row.name, event)
        return row

    @staticmethod
    def _check_names(session: Any, name: str, group: str | None) -> None:
        """Endpoint names and group names share one namespace (both are a /v1 ``model``)."""
        if session.exec(select(Endpoint.id).where(Endpoint.group_name == name)).first():
            raise Conflict(f"{name!r} is already the name of a group; pick another name")
        if group is None:
            return
        if group == name or session.exec(select(Endpoint.id).where(Endpoint.name == group)).first():
            raise Conflict(f"{group!r} is already the name of an endpoint; pick another group name")

    def delete(self, endpoint_id: str) -> None:
        with self.store.session() as session:
            row = session.get(Endpoint, endpoint_id)
            if row is None:
                raise NotFound(f"endpoint {endpoint_id!r} not found")
            session.delete(row)
            session.commit()
        self._publish(row.name, EndpointEvent(endpoint_id=endpoint_id, kind="deleted"))

    def set_desired(self, endpoint_id: str, desired: str) -> None:
        with self.store.session() as session:
            row = session.get(Endpoint, endpoint_id)
            if row is None:
                raise NotFound(f"endpoint {endpoint_id!r} not found")
            row.desired_state = desired
            session.add(row)
            session.commit()

    def set_state(
        self,
        endpoint_id: str,
        state: str,
        reason: str = "",
        *,
        kind: str = "",
        until: datetime | None = None,
        only_from: Collection[str] | None = None,
    ) -> bool:
        """Record a state change and its event; False when nothing changed or the row is gone.

        With ``only_from`` the change is made only while the stored state is one of those:
        the check and the write are one compare-and-set, so a concurrent writer (a stop, a
        failure) is never overwritten by a late one.
        """
        for _ in range(5):
            with self.store.session() as session:
                row = session.get(Endpoint, endpoint_id)
                if row is None:
                    return False  # deleted meanwhile
                previous = row.state
                if only_from is not None and previous not in only_from:
                    return False
                if previous == state and row.state_reason == reason and row.state_until == until:
                    return False
                changed = session.exec(
                    update(Endpoint)
                    .where(col(Endpoint.id) == endpoint_id, col(Endpoint.state) == previous)
                    .values(
                        state=state, state_reason=reason, state_changed_at=utcnow(),
                        state_until=until,
                    )
                )  # fmt: skip
                if changed.rowcount != 1:
                    session.rollback()  # another writer got there first: look again
                    continue
                event = EndpointEvent(
                    endpoint_id=endpoint_id,
                    kind=kind or "state_change",
                    from_state=previous,
                    to_state=state,
                    detail=reason,
                )
                session.add(event)
                session.commit()
            self._publish(row.name, event)
            return True
        return False

    def set_states(self, changes: Sequence[tuple[str, str, str]]) -> list[str]:
        """``set_state`` for many endpoints in one transaction (start-up launches hundreds).

        ``changes`` holds (endpoint id, state, reason); the ids whose state changed come back.
        """
        events: list[tuple[str, EndpointEvent]] = []
        wanted = {endpoint_id: (state, reason) for endpoint_id, state, reason in changes}
        with self.store.session() as session:
            rows = session.exec(select(Endpoint).where(col(Endpoint.id).in_(list(wanted))))
            for row in rows.all():
                state, reason = wanted[row.id]
                if row.state == state and row.state_reason == reason and row.state_until is None:
                    continue
                event = EndpointEvent(
                    endpoint_id=row.id,
                    kind="state_change",
                    from_state=row.state,
                    to_state=state,
                    detail=reason,
                )
                row.state, row.state_reason, row.state_changed_at = state, reason, utcnow()
                row.state_until = None
                session.add(row)
                session.add(event)
                events.append((row.name, event))
            session.commit()
        for name, event in events:
            self._publish(name, event)
        return [event.endpoint_id for _, event in events]

    def add_event(self, endpoint_id: str, kind: str, detail: str = "") -> None:
        with self.store.session() as session:
            row = session.get(Endpoint, endpoint_id)
            if row is None:
                return
            event = EndpointEvent(endpoint_id=endpoint_id, kind=kind, detail=detail)
            session.add(event)
            session.commit()
        self._publish(row.name, event)

    def _publish(self, name: str, event: EndpointEvent) -> None:
        self.bus.publish(
            EndpointEventNote(
                endpoint_id=event.endpoint_id,
                endpoint_name=name,
                kind=event.kind,
                at=event.at,
                from_state=event.from_state,
                to_state=event.to_state,
                detail=event.detail,
            )
        )

    def _set_credentials(self, row: Endpoint, credentials: dict[str, str] | None) -> None:
        row.credential_keys = sorted(credentials or {})
        row.credentials_encrypted = (
            self.store.box.encrypt(orjson.dumps(credentials)) if credentials else None
        )
