"""Instances that share one store: registration, heartbeats, one leader, change notices.

Every instance registers itself (id, stable name, advertised URL, version) and heartbeats every
few seconds with the names of the endpoints it runs; one that misses heartbeats for
``DEAD_AFTER_S`` is dead for the others. The id is new at every start; the name (by default the
advertised host:port) stays across restarts and keys the instance's metric buckets.

On PostgreSQL the store is also the coordination engine:
- a change of an endpoint (created, edited, started, stopped, deleted) made through any
  instance is announced with NOTIFY; every instance LISTENs and applies it at once, and the
  manager's periodic reconcile is the safety net for a notice that was missed;
- the instance holding a session-level advisory lock is the leader and runs the singleton jobs
  (the session sweep); when it dies its connection closes, the lock is free, and another
  instance takes it at its next heartbeat;
- a browser endpoint is owned by the holder of its lease (runtime/leases.py), renewed with
  the heartbeat and released on a clean stop.
SQLite is single-instance: a second instance on the same file refuses to start (an OS file
lock beside the database, released by the kernel when the holder dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from select import POLLIN, poll
from typing import Any

from sqlalchemy import delete, text
from sqlmodel import col, select

from runtime.errors import Conflict
from runtime.leases import Leases
from runtime.throttle import LogThrottle, warn_of_failure
from store.db import Store
from store.instance_names import instance_name_for
from store.models import Instance, Meta, utcnow

log = logging.getLogger("aiem.cluster")

HEARTBEAT_S = 3.0
DEAD_AFTER_S = 15.0
FORGET_AFTER_S = 3600.0
CHANNEL = "aiem_endpoints"
LEADER_LOCK_KEY = 0x41_49_45_4D  # "AIEM"
LEADER_META_KEY = "cluster_leader"

OnChange = Callable[[str], Awaitable[None]]
OnBeat = Callable[[], Awaitable[None]]


class Cluster:
    def __init__(
        self, store: Store, *, advertise_url: str = "", version: str = "", name: str = ""
    ) -> None:
        self.store = store
        self.id = uuid.uuid4().hex
        self.name = name or instance_name_for(advertise_url)
        self.url = advertise_url
        self.version = version
        self.postgres = store.engine.dialect.name == "postgresql"
        self._leader_conn: Any = None
        self._file_lock: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.leases = Leases(store, self.id)

    # ---- lifecycle -------------------------------------------------------------------------

    def register(self) -> None:
        """Enter this instance in the store (SQLite: refuse when another one holds it)."""
        if not self.postgres:
            self._lock_sqlite()
        with self.store.session() as session:
            self._warn_of_a_twin(session)
            session.add(self._row())
            session.commit()

    def _row(self) -> Instance:
        return Instance(id=self.id, name=self.name, url=self.url, version=self.version)

    def _warn_of_a_twin(self, session: Any) -> None:
        # Two live instances under one name add their traffic into the same metric rows.
        if not self.postgres:
            return  # single-instance: a row left by a crashed process is no twin
        twin = session.exec(
            select(Instance).where(
                col(Instance.name) == self.name, col(Instance.heartbeat_at) >= self._alive_since()
            )
        ).first()
        if twin is not None:
            log.warning(
                "an instance (%s) named %r heartbeat in the last %d s: if it still runs, their "
                "metrics cannot be told apart; give each instance its own AIEM_INSTANCE_NAME",
                twin.url or twin.id,
                self.name,
                DEAD_AFTER_S,
            )

    def _lock_sqlite(self) -> None:
        # An OS lock beside the database file: the kernel drops it when the process dies, even
        # by SIGKILL, so a restart never waits for a heartbeat to expire.
        database = self.store.engine.url.database
        if not database or database == ":memory:":
            return
        path = Path(database).with_name(Path(database).name + ".instance.lock")
        handle = open(path, "a+")  # noqa: SIM115 - held for the life of the instance
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise Conflict(
                f"another instance ({holder}) runs on the SQLite store {database}; SQLite is "
                "single-instance: stop it, or use PostgreSQL (DATABASE_URL) to run several"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self.url or self.id} pid {os.getpid()}\n")
        handle.flush()
        self._file_lock = handle

    async def start(
        self, running: Callable[[], list[str]], on_change: OnChange, on_beat: OnBeat | None = None
    ) -> None:
        """Heartbeats (then ``on_beat``, the leases' renewal) and, on PostgreSQL, the listener."""
        beats = self._heartbeats(running, on_beat)
        self._tasks.append(asyncio.create_task(beats, name="aiem-heartbeat"))
        if self.postgres:
            self._tasks.append(asyncio.create_task(self._listen(on_change), name="aiem-listen"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await asyncio.to_thread(self._leave)

    def _leave(self) -> None:
        if self.postgres:  # first the leases: a lease must never outlive its holder's row
            with contextlib.suppress(Exception):
                for endpoint_id in self.leases.release_all():
                    self.notify(endpoint_id)  # another instance adopts it now, not at a reconcile
        with contextlib.suppress(Exception):
            with self.store.session() as session:
                session.execute(delete(Instance).where(col(Instance.id) == self.id))
                session.commit()
        self._drop_leadership()
        lock, self._file_lock = self._file_lock, None
        if lock is not None:
            lock.close()  # closing the file releases the lock

    # ---- heartbeats and the leader ---------------------------------------------------------

    async def _heartbeats(self, running: Callable[[], list[str]], on_beat: OnBeat | None) -> None:
        unreachable = LogThrottle(30.0)
        while True:
            try:
                await asyncio.to_thread(self.beat, running())
                if on_beat is not None:
                    await on_beat()
            except Exception as exc:  # noqa: BLE001 - a store blip must not end the heartbeats
                warn_of_failure(log, unreachable, "heartbeat", exc)
            await asyncio.sleep(HEARTBEAT_S)

    def beat(self, running: list[str]) -> None:
        with self.store.session() as session:
            row = session.get(Instance, self.id)
            if row is None:  # forgotten while the store was away: enter again
                row = self._row()
            row.heartbeat_at, row.running = utcnow(), sorted(running)
            session.add(row)
            forget = utcnow() - timedelta(seconds=FORGET_AFTER_S)
            session.execute(delete(Instance).where(col(Instance.heartbeat_at) < forget))
            session.commit()
        if self.postgres:
            self._hold_leadership()

    @property
    def is_leader(self) -> bool:
        """Whether this instance runs the singleton jobs now. SQLite: always. PostgreSQL: it
        took the advisory lock and the server has not closed the lock's connection since.

        That is seen without a round trip (the socket turns readable when the server ends the
        session), so the moment the store goes away this instance stops leading: once the
        store is back another instance may take the lock before this one's next heartbeat.
        A reply to the heartbeat's own check may read as a close for an instant; a job then
        waits for its next turn, which is the safe side.
        """
        if not self.postgres:
            return True
        conn = self._leader_conn
        return conn is not None and _still_open(conn)

    def _hold_leadership(self) -> None:
        """Keep the lock, or take it when it is free. After the store restarted every lock is
        gone: a lock whose connection died is taken again at once if nobody else has it."""
        import psycopg

        if self._leader_conn is not None and not self._lock_answers():
            log.warning("the leader lock's connection was lost (the store went away)")
            self._drop_leadership()
        try:
            if self._leader_conn is None and not self._take_lock():
                return
        except psycopg.Error as exc:
            log.warning("could not take the leader lock: %s", type(exc).__name__)
            return
        self._write_leader()

    def _lock_answers(self) -> bool:
        import psycopg

        try:
            self._leader_conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def _take_lock(self) -> bool:
        import psycopg

        conn = psycopg.connect(self._libpq_url(), autocommit=True)
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,)).fetchone()
        except BaseException:
            conn.close()
            raise
        if not (got and got[0]):
            conn.close()
            return False
        self._leader_conn = conn
        log.info("this instance (%s) is the leader", self.id)
        return True

    def _write_leader(self) -> None:
        with self.store.session() as session:
            row = session.get(Meta, LEADER_META_KEY) or Meta(key=LEADER_META_KEY, value="")
            if row.value != self.id:
                row.value = self.id
                session.add(row)
                session.commit()

    def _drop_leadership(self) -> None:
        conn, self._leader_conn = self._leader_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # ---- change notices --------------------------------------------------------------------

    def notify(self, endpoint_id: str) -> None:
        """Tell every instance (this one too) that an endpoint changed; no-op on SQLite."""
        if not self.postgres:
            return
        with self.store.engine.begin() as conn:
            conn.execute(
                text("SELECT pg_notify(:channel, :id)"), {"channel": CHANNEL, "id": endpoint_id}
            )

    async def _listen(self, on_change: OnChange) -> None:
        import psycopg

        unreachable = LogThrottle(30.0)
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._libpq_url(), autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await on_change("")  # (re)connected: changes may have been missed
                    async for notice in conn.notifies():
                        await on_change(notice.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening after a store blip
                warn_of_failure(log, unreachable, "change listener", exc)
                await asyncio.sleep(1.0)

    def _libpq_url(self) -> str:
        url = self.store.engine.url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    # ---- what the cluster looks like -------------------------------------------------------

    def _alive_since(self) -> Any:
        return utcnow() - timedelta(seconds=DEAD_AFTER_S)

    def view(self) -> dict[str, Any]:
        with self.store.session() as session:
            rows = list(session.exec(select(Instance).order_by(col(Instance.started_at))).all())
            leader = session.get(Meta, LEADER_META_KEY)
        since = self._alive_since()
        instances = [
            {
                "id": r.id,
                "name": r.name,
                "url": r.url,
                "version": r.version,
                "started_at": r.started_at.isoformat(),
                "heartbeat_at": r.heartbeat_at.isoformat(),
                "alive": r.heartbeat_at >= since,
                "self": r.id == self.id,
                "running": r.running,
            }
            for r in rows
        ]
        alive = {i["id"] for i in instances if i["alive"]}
        leader_id = self.id if not self.postgres else (leader.value if leader else None)
        leases = [
            {"endpoint_id": o.endpoint_id, "endpoint": o.endpoint, **o.as_dict()}
            for o in (self.leases.owners() if self.postgres else [])
        ]
        for item in instances:
            item["owns"] = [
                x["endpoint"] for x in leases if x["instance"] == item["id"] and not x["expired"]
            ]
        return {
            "instance": self.id,
            "instance_name": self.name,
            "store": "postgresql" if self.postgres else "sqlite",
            "leader": leader_id if leader_id in alive else None,
            "instances": instances,
            "leases": leases,
        }

    def running_on(self) -> dict[str, list[str]]:
        """Endpoint name -> the ids of the live instances that run it."""
        where: dict[str, list[str]] = {}
        for item in self.view()["instances"]:
            if item["alive"]:
                for name in item["running"]:
                    where.setdefault(name, []).append(item["id"])
        return where


def _still_open(conn: Any) -> bool:
    """Whether the server has not closed (or written unasked to) a connection at rest."""
    import psycopg

    try:
        watch = poll()  # not select(): a busy process may hold descriptors above 1023
        watch.register(conn.fileno(), POLLIN)  # hang-ups and errors are always reported
        return not watch.poll(0)
    except (OSError, ValueError, psycopg.Error):
        return False  # closed meanwhile
