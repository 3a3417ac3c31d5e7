"""One owner per browser endpoint on a shared store: a lease per endpoint, in the store.

A browser logged into one account must not be driven from several machines at once, so on
PostgreSQL a browser endpoint runs on the instance that holds its lease (endpoint id ->
holder, expires_at); the other instances forward its chats there.

- Taken and renewed by one statement, ``INSERT .. ON CONFLICT DO UPDATE .. WHERE the holder is
  me OR the lease expired``: PostgreSQL locks the row, and an instance that lost a race
  re-reads the winner's row and updates nothing. Exactly one of any number of racers wins.
- The holder renews with its heartbeat (every ``HEARTBEAT_S``) the leases of the endpoints it
  runs or is restarting; one not renewed for ``LEASE_S`` is expired and any instance may take
  it (failover). All times are the database's clock: instances never compare their own.
- Released when the holder stops running the endpoint (at its next heartbeat at the latest),
  and all at once on a clean stop, with a change notice so another instance adopts at once.
  Deleting an endpoint deletes its lease (foreign key).

SQLite is single-instance: no lease is ever written, every endpoint is this instance's own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from store.db import Store
from store.models import Endpoint, EndpointLease, Instance

log = logging.getLogger("aiem.leases")

LEASE_S = 15.0

# Takes (or keeps) the lease of each endpoint in :ids that still exists, unless another
# instance holds it unexpired; returns the ids now held by :holder.
CLAIM = text(
    """
    INSERT INTO endpoint_lease (endpoint_id, holder, acquired_at, expires_at)
    SELECT id, :holder, now(), now() + make_interval(secs => :ttl)
    FROM endpoint WHERE id = ANY(:ids)
    ON CONFLICT (endpoint_id) DO UPDATE
    SET holder = excluded.holder,
        expires_at = excluded.expires_at,
        acquired_at = CASE WHEN endpoint_lease.holder = excluded.holder
                           THEN endpoint_lease.acquired_at ELSE excluded.acquired_at END
    WHERE endpoint_lease.holder = excluded.holder OR endpoint_lease.expires_at < now()
    RETURNING endpoint_id
    """
)
# Extends what :holder holds among :ids (endpoints in a transition here: restarting, starting).
EXTEND = text(
    """
    UPDATE endpoint_lease SET expires_at = now() + make_interval(secs => :ttl)
    WHERE holder = :holder AND endpoint_id = ANY(:ids)
    """
)
# Releases what :holder holds outside :ids (endpoints it no longer runs).
RELEASE_OTHERS = text(
    "DELETE FROM endpoint_lease WHERE holder = :holder AND NOT (endpoint_id = ANY(:ids)) "
    "RETURNING endpoint_id"
)
# Expired leases of endpoints that should run: their holder is gone, another instance adopts.
ORPHANED = text(
    """
    SELECT l.endpoint_id FROM endpoint_lease l JOIN endpoint e ON e.id = l.endpoint_id
    WHERE l.holder <> :holder AND l.expires_at < now()
      AND e.desired_state = 'running' AND e.state <> 'failed'
    """
)
RELEASE_ALL = text("DELETE FROM endpoint_lease WHERE holder = :holder RETURNING endpoint_id")


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a browser endpoint's lease, as the store says now."""

    endpoint_id: str
    endpoint: str
    holder: str
    holder_url: str
    acquired_at: datetime
    expires_at: datetime
    live: bool  # not expired: the holder renewed it within LEASE_S
    desired_running: bool = True
    request_timeout: float = 0.0
    holder_name: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance": self.holder,
            "name": self.holder_name or None,
            "url": self.holder_url or None,
            "since": self.acquired_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "expired": not self.live,
        }


@dataclass(frozen=True, slots=True)
class Renewal:
    # Running here, but a live other instance holds the lease now: this one must let go.
    lost: set[str]
    released: set[str]
    # Expired leases of endpoints that should run (their holder died): up for adoption.
    orphaned: set[str]


class Leases:
    """This instance's side of the endpoint leases (PostgreSQL); see the module docstring."""

    def __init__(self, store: Store, holder: str, *, ttl_s: float = LEASE_S) -> None:
        self.store = store
        self.holder = holder
        self.ttl_s = ttl_s

    def take(self, endpoint_id: str) -> bool:
        """Take (or keep) an endpoint's lease; False when a live other instance holds it."""
        with self.store.engine.begin() as conn:
            return endpoint_id in self._claim(conn, [endpoint_id])

    def renew(self, running: Iterable[str], in_use: Iterable[str]) -> Renewal:
        """One heartbeat's work: keep the leases of the browser endpoints ``running`` here
        (taking a missing one again), extend those of the endpoints ``in_use`` here (in a
        restart or a start), release every other one held; and find the orphaned ones."""
        running, in_use = sorted(set(running)), sorted(set(in_use) | set(running))
        params = {"holder": self.holder, "ids": in_use, "ttl": self.ttl_s}
        with self.store.engine.begin() as conn:
            released = set(conn.execute(RELEASE_OTHERS, params).scalars())
            conn.execute(EXTEND, params)
            held = self._claim(conn, running) if running else set()
            orphaned = set(conn.execute(ORPHANED, params).scalars())
        return Renewal(lost=set(running) - held, released=released, orphaned=orphaned)

    def release_all(self) -> list[str]:
        """Release every lease this instance holds (a clean stop); the ids released."""
        with self.store.engine.begin() as conn:
            return list(conn.execute(RELEASE_ALL, {"holder": self.holder}).scalars())

    def _claim(self, conn: Connection, ids: list[str]) -> set[str]:
        params = {"holder": self.holder, "ids": ids, "ttl": self.ttl_s}
        try:
            with conn.begin_nested():
                return set(conn.execute(CLAIM, params).scalars())
        except IntegrityError:
            # An endpoint was deleted between the statement's read and its insert: claim the
            # others one by one rather than lose them all.
            held: set[str] = set()
            for one in ids:
                try:
                    with conn.begin_nested():
                        held |= set(conn.execute(CLAIM, {**params, "ids": [one]}).scalars())
                except IntegrityError:
                    log.info("endpoint %s was deleted while its lease was claimed", one)
            return held

    # ---- reading ---------------------------------------------------------------------------

    def _owners_query(self) -> Any:
        return (
            select(
                EndpointLease,
                col(Endpoint.name),
                col(Endpoint.desired_state),
                col(Endpoint.request_timeout),
                col(Instance.url),
                col(Instance.name),
                (col(EndpointLease.expires_at) >= func.now()).label("live"),
            )
            .join(Endpoint, col(Endpoint.id) == col(EndpointLease.endpoint_id))
            .join(Instance, col(Instance.id) == col(EndpointLease.holder), isouter=True)
        )

    def owner(self, ref: str) -> Owner | None:
        """The lease of the endpoint with this id (or, failing that, this name), if any."""
        stmt = self._owners_query().where(or_(col(Endpoint.id) == ref, col(Endpoint.name) == ref))
        with self.store.session() as session:
            rows = list(session.execute(stmt).all())
        rows.sort(key=lambda r: r[0].endpoint_id != ref)  # the id before a name that equals it
        return _owner(rows[0]) if rows else None

    def owners(self) -> list[Owner]:
        """Every lease, by endpoint name."""
        stmt = self._owners_query().order_by(col(Endpoint.name))
        with self.store.session() as session:
            return [_owner(row) for row in session.execute(stmt).all()]


def _owner(row: Any) -> Owner:
    lease, name, desired, timeout, url, holder_name, live = row
    return Owner(
        endpoint_id=lease.endpoint_id,
        endpoint=name,
        holder=lease.holder,
        holder_url=url or "",
        holder_name=holder_name or "",
        acquired_at=lease.acquired_at,
        expires_at=lease.expires_at,
        live=bool(live),
        desired_running=desired == "running",
        request_timeout=float(timeout),
    )
