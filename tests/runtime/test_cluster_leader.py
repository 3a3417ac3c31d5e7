"""The leader's advisory lock when its connection dies (the store restarted or went away): the
instance stops leading at once, without a heartbeat, and the lock is taken again by exactly one
instance at the next heartbeat, so singleton jobs never run on two instances."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from runtime.cluster import LEADER_LOCK_KEY, Cluster
from store.db import Store
from tests.conftest import _postgres_database


@pytest.fixture
def stores(data_dir: Path, secret_key: str) -> Iterator[list[Store]]:
    """Two stores on one fresh PostgreSQL database, as two instances would have."""
    for url in _postgres_database():
        opened = [Store.open(url=url, data_dir=data_dir, secret_key=secret_key) for _ in range(2)]
        yield opened
        for store in opened:
            store.dispose()


def lock_holders(store: Store) -> list[int]:
    """Backend pids holding the leader lock in this database."""
    query = sa.text(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = :key "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    with store.engine.connect() as conn:
        return [int(pid) for pid in conn.execute(query, {"key": LEADER_LOCK_KEY}).scalars()]


def end_lock_session(store: Store) -> None:
    """What a store restart does to the lock: the server ends the holder's session."""
    (pid,) = lock_holders(store)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()


def soon(check, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.02)


def test_a_lost_lock_stops_the_leader_at_once_and_one_instance_takes_it(stores):
    a, b = Cluster(stores[0]), Cluster(stores[1])
    try:
        a.beat([])
        b.beat([])
        assert a.is_leader and not b.is_leader and len(lock_holders(stores[0])) == 1

        end_lock_session(stores[0])
        soon(lambda: not a.is_leader)  # no heartbeat needed to notice
        assert lock_holders(stores[0]) == []
        b.beat([])  # B's heartbeat comes first once the lock is free
        a.beat([])
        assert b.is_leader and not a.is_leader and len(lock_holders(stores[0])) == 1

        end_lock_session(stores[0])
        soon(lambda: not b.is_leader)
        a.beat([])  # A finds the lock free: it leads from this very heartbeat
        b.beat([])
        assert a.is_leader and not b.is_leader and len(lock_holders(stores[0])) == 1
        with stores[0].engine.connect() as conn:
            named = conn.execute(sa.text("SELECT value FROM meta WHERE key = 'cluster_leader'"))
            assert named.scalar_one() == a.id
    finally:
        a._leave()
        b._leave()
