"""The store on SQLite and PostgreSQL: migrations, round trips, encryption at rest."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.fernet import Fernet
from sqlmodel import SQLModel, select

from store.crypto import KEY_FILE_NAME, SecretKeyError, open_box
from store.db import Store
from store.models import (
    ChatSession,
    Endpoint,
    EndpointEvent,
    Message,
    Meta,
    MetricBucket,
    utcnow,
)

CANARY = "sk-canary-7f3b9d1e5a"


def open_store(url: str, data_dir: Path, key: str | None) -> Store:
    return Store.open(url=url, data_dir=data_dir, secret_key=key)


def test_migrations_build_exactly_the_models(database_url, data_dir, secret_key):
    store = open_store(database_url, data_dir, secret_key)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    store.dispose()
    assert diff == []


def test_endpoint_round_trip_and_cascade(database_url, data_dir, secret_key):
    store = open_store(database_url, data_dir, secret_key)
    with store.session() as session:
        row = Endpoint(name="alpha", endpoint_type="openai_api", config={"headers": {"a": "b"}})
        session.add(row)
        session.commit()
        session.add(EndpointEvent(endpoint_id=row.id, kind="created"))
        session.add(MetricBucket(endpoint_id=row.id, minute=utcnow(), requests=3))
        session.commit()
    with store.session() as session:
        loaded = session.get(Endpoint, row.id)
        assert loaded is not None and loaded.config == {"headers": {"a": "b"}}
        session.delete(loaded)
        session.commit()
        assert session.exec(select(EndpointEvent)).all() == []
        assert session.exec(select(MetricBucket)).all() == []
    store.dispose()


def test_duplicate_endpoint_name_is_refused(database_url, data_dir, secret_key):
    store = open_store(database_url, data_dir, secret_key)
    with store.session() as session:
        session.add(Endpoint(name="same", endpoint_type="openai_api"))
        session.commit()
    with pytest.raises(sa.exc.IntegrityError), store.session() as session:
        session.add(Endpoint(name="same", endpoint_type="rest_api"))
        session.commit()
    store.dispose()


def test_message_sequence_is_unique_per_session(database_url, data_dir, secret_key):
    store = open_store(database_url, data_dir, secret_key)
    with store.session() as session:
        session.add(ChatSession(id="s1"))
        session.add(Message(session_id="s1", seq=0, role="user", content="hi"))
        session.commit()
    with pytest.raises(sa.exc.IntegrityError), store.session() as session:
        session.add(Message(session_id="s1", seq=0, role="user", content="again"))
        session.commit()
    store.dispose()


def test_secrets_are_encrypted_and_a_wrong_key_is_a_clear_error(database_url, data_dir):
    key = Fernet.generate_key().decode()
    store = open_store(database_url, data_dir, key)
    token = store.box.encrypt(CANARY)
    with store.session() as session:
        session.add(Endpoint(name="e", endpoint_type="openai_api", credentials_encrypted=token))
        session.commit()
    with store.engine.connect() as conn:
        dumped = " ".join(
            str(v) for r in conn.execute(sa.text("SELECT * FROM endpoint")) for v in r
        )
    assert CANARY not in dumped and store.box.decrypt(token) == CANARY
    store.dispose()
    with pytest.raises(SecretKeyError, match="does not match"):
        open_store(database_url, data_dir, Fernet.generate_key().decode())


def test_key_rotation_keeps_old_secrets_readable(database_url, data_dir):
    old = Fernet.generate_key().decode()
    store = open_store(database_url, data_dir, old)
    token = store.box.encrypt(CANARY)
    store.dispose()
    # Both keys configured (new first) during rotation: the old data still decrypts.
    rotated = open_store(database_url, data_dir, Fernet.generate_key().decode() + "," + old)
    assert rotated.box.decrypt(token) == CANARY
    rotated.dispose()


def test_key_file_is_created_private_and_reused(data_dir):
    url = f"sqlite:///{data_dir / 'aiem.db'}"
    store = open_store(url, data_dir, None)
    token = store.box.encrypt(CANARY)
    store.dispose()
    key_file = data_dir / KEY_FILE_NAME
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    again = open_store(url, data_dir, None)
    assert again.box.decrypt(token) == CANARY
    again.dispose()


def test_invalid_key_text_is_a_clear_error(data_dir):
    with pytest.raises(SecretKeyError, match="not a valid Fernet key"):
        open_store(f"sqlite:///{data_dir / 'aiem.db'}", data_dir, "not-a-key")


def test_sqlite_file_never_holds_the_plain_secret(data_dir, secret_key):
    store = open_store(f"sqlite:///{data_dir / 'aiem.db'}", data_dir, secret_key)
    with store.session() as session:
        session.add(
            Endpoint(name="e", endpoint_type="x", credentials_encrypted=store.box.encrypt(CANARY))
        )
        session.commit()
    store.dispose()
    raw = b"".join(p.read_bytes() for p in data_dir.iterdir() if p.name.startswith("aiem.db"))
    assert CANARY.encode() not in raw
    assert b"credentials_encrypted" in raw  # the schema is there, so the scan read the file


def test_two_instances_writing_the_key_canary_at_once_both_start(
    database_url, data_dir, secret_key
):
    """Two instances opening the same new store at once: the one whose canary insert loses
    the race checks the winner's canary instead of failing (or skipping the check).
    (SQLite is single-instance: a second process is refused by the instance lock.)"""
    if not database_url.startswith("postgresql"):
        pytest.skip("several instances share a PostgreSQL store only")
    first = Store.open(url=database_url, data_dir=data_dir / "a", secret_key=secret_key)
    with first.engine.begin() as conn:
        conn.execute(sa.delete(Meta))  # as if nobody had written the canary yet
    second = Store.open(url=database_url, data_dir=data_dir / "b", secret_key=secret_key)
    with second.engine.begin() as conn:
        conn.execute(sa.delete(Meta))
    raced = []

    def the_other_one_first(conn, cursor, statement, *args):  # noqa: ANN001
        # Just before this instance's insert, the other instance writes its canary.
        if statement.lstrip().upper().startswith("INSERT INTO META") and not raced:
            raced.append(True)
            second.check_key()

    sa.event.listen(first.engine, "before_cursor_execute", the_other_one_first)
    try:
        first.check_key()  # lost the race: re-reads and checks the other's canary
        assert raced == [True]
        with first.session() as session:
            assert len(session.exec(select(Meta)).all()) == 1
        other_key = Store(second.engine, open_box(Fernet.generate_key().decode(), data_dir / "c"))
        with first.engine.begin() as conn:
            conn.execute(sa.delete(Meta))
        sa.event.remove(first.engine, "before_cursor_execute", the_other_one_first)
        raced.clear()

        def other_key_first(conn, cursor, statement, *args):  # noqa: ANN001
            if statement.lstrip().upper().startswith("INSERT INTO META") and not raced:
                raced.append(True)
                other_key.check_key()

        sa.event.listen(first.engine, "before_cursor_execute", other_key_first)
        with pytest.raises(SecretKeyError):
            first.check_key()  # the winner's key is not this one: refused, not ignored
    finally:
        first.dispose()
        second.dispose()
