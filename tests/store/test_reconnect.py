"""A pooled PostgreSQL connection whose check before use fails is replaced, whatever the error.

Seen when PostgreSQL stopped under traffic: the server closed a pooled connection while
SQLAlchemy's pre-ping ran on it, psycopg left it "ACTIVE", and the ping's clean-up raised a
ProgrammingError that reached the caller (the metrics writer dropped a batch for it). That
moment cannot be produced on demand, so the ping fails here the way it failed there; the
engine, pool and server are real. tests/cluster/test_store_blip.py stops a real server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from store.db import Store
from tests.conftest import _postgres_database


@pytest.fixture
def pg_store(data_dir: Path, secret_key: str) -> Iterator[Store]:
    for url in _postgres_database():
        store = Store.open(url=url, data_dir=data_dir, secret_key=secret_key)
        yield store
        store.dispose()


def backend_pid(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_failing_its_check_is_replaced_not_raised(pg_store, monkeypatch):
    pg_store.engine.dispose()  # one pooled connection from here on (opening used two)
    pooled = backend_pid(pg_store)
    assert backend_pid(pg_store) == pooled  # the pool hands the same connection back

    def ping_cut_short(dbapi_connection):
        raise psycopg.ProgrammingError(
            "can't change 'autocommit' now: connection in transaction status ACTIVE"
        )

    monkeypatch.setattr(pg_store.engine.dialect, "do_ping", ping_cut_short)
    fresh = backend_pid(pg_store)  # the pool connects afresh (a fresh one is not pinged)
    assert fresh != pooled
