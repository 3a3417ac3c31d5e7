"""Engine, schema migrations and the key check.

SQLite (file under the data dir, WAL, foreign keys on) by default; PostgreSQL when the
database URL says so. The schema is always brought up to date with Alembic.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, create_engine, select

from store.crypto import SecretBox, SecretKeyError, open_box
from store.models import Meta

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
CANARY_KEY = "secret_canary"
CANARY_PLAINTEXT = "aiem-key-check"


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")
PG_CONNECT_TIMEOUT_S = 5


class DataDirError(RuntimeError):
    """The data directory cannot be created or written."""


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data dir readable by its owner only (tightening an existing one we own) and
    prove it is writable, so a bad one is one clear error rather than a failure deep inside."""
    path = Path(data_dir)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            os.chmod(path, PRIVATE_DIR_MODE)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataDirError(
            f"data directory {path.resolve()} is not writable ({reason}); set AIEM_DATA_DIR "
            "to a directory this user can write, or fix its permissions"
        ) from None
    return path


def make_private_sqlite_files(url: str) -> None:
    """SQLite creates its WAL and shared-memory files with the database file's mode: make that
    0600 (creating the file first if needed) so no other local user can read conversations."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    main = Path(database)
    if not main.parent.is_dir():
        return  # SQLite reports that itself when connecting
    if not main.exists():
        os.close(os.open(main, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE))
    for suffix in SQLITE_SUFFIXES:
        path = Path(f"{main}{suffix}")
        if path.exists() and path.stat().st_mode & 0o077:
            os.chmod(path, PRIVATE_FILE_MODE)


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'aiem.db'}"


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # NORMAL in WAL mode survives a process crash; only power loss can drop the last commits.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns (endpoint config, key names, webhook filters) through orjson: listing hundreds
# of endpoints decodes three per row.
JSON_CODEC: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": orjson.loads}


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        make_private_sqlite_files(url)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 10}, **JSON_CODEC
        )
        event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    parsed = make_url(url)
    if "connect_timeout" not in parsed.query:
        # A server that does not answer at all (a host gone, not a refusal) costs a caller this
        # long, not the system's TCP timeout of minutes. In the URL, so the cluster's own
        # connections (leader lock, change listener) made from it have it too.
        parsed = parsed.update_query_dict({"connect_timeout": str(PG_CONNECT_TIMEOUT_S)})
    engine = create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20, **JSON_CODEC)
    event.listen(engine, "handle_error", _failed_ping_means_reconnect)
    return engine


def _failed_ping_means_reconnect(context: ExceptionContext) -> None:
    """A pooled connection whose check before use fails in any way is not usable: drop it and
    connect afresh. When the server went away during the check, psycopg may report it as a
    ProgrammingError from the check's own clean-up, which SQLAlchemy would not take for a lost
    connection and would hand to the caller (a store restart then lost a metrics batch)."""
    if context.is_pre_ping:
        context.is_disconnect = True


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


# PostgreSQL advisory lock key ("AIEN"): instances starting together migrate one at a time.
MIGRATION_LOCK_KEY = 0x41_49_45_4E


def upgrade(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        command.upgrade(alembic_config(engine), "head")
        return
    # Two instances migrating an empty database at once would both create the same tables;
    # the second waits here and then finds nothing left to do.
    with engine.connect() as lock:
        lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        try:
            command.upgrade(alembic_config(engine), "head")
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})


class Store:
    """The engine, the secret box and a session factory, ready to use."""

    # Below this much free space in the SQLite data dir the store counts as full.
    min_free_bytes = 64 * 1024 * 1024

    def __init__(self, engine: Engine, box: SecretBox) -> None:
        self.engine = engine
        self.box = box

    @classmethod
    def open(cls, *, url: str, data_dir: Path, secret_key: str | None) -> Store:
        prepare_data_dir(Path(data_dir))
        box = open_box(secret_key, Path(data_dir))
        engine = make_engine(url)
        upgrade(engine)
        store = cls(engine, box)
        store.check_key()
        return store

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def check_key(self) -> None:
        """Fail clearly when the configured key is not the one the store was made with."""
        with self.session() as session:
            row = session.exec(select(Meta).where(Meta.key == CANARY_KEY)).first()
            if row is None:
                session.add(Meta(key=CANARY_KEY, value=self.box.encrypt(CANARY_PLAINTEXT)))
                try:
                    session.commit()
                    return
                except IntegrityError:
                    # Another instance opening the same new store wrote it first: check
                    # against theirs, so two instances with different keys cannot both start.
                    session.rollback()
                    row = session.exec(select(Meta).where(Meta.key == CANARY_KEY)).one()
            try:
                ok = self.box.decrypt(row.value) == CANARY_PLAINTEXT
            except SecretKeyError:
                ok = False
            if not ok:
                raise SecretKeyError(
                    "the encryption key (AIEM_SECRET_KEY or the key file in the data dir) "
                    "does not match the key this database was created with"
                )

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True

    def room_problem(self) -> str | None:
        """Why a write would fail for lack of space (SQLite's disk), or None."""
        if self.engine.dialect.name != "sqlite":
            return None
        database = self.engine.url.database
        if not database or database == ":memory:":
            return None
        try:
            free = shutil.disk_usage(Path(database).parent).free
        except OSError as exc:
            return f"cannot check free space: {exc.strerror}"
        if free < self.min_free_bytes:
            return f"disk nearly full: {free // (1024 * 1024)} MB free in the data dir"
        return None

    def dispose(self) -> None:
        self.engine.dispose()
