"""Engine, schema migrations and the key check.

SQLite (file under the data dir, WAL, foreign keys on) by default; PostgreSQL when the
database URL says so. The schema is always brought up to date with Alembic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine, select

from store.crypto import SecretBox, SecretKeyError, open_box
from store.models import Meta

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
CANARY_KEY = "secret_canary"
CANARY_PLAINTEXT = "aiem-key-check"


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


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> None:
    command.upgrade(alembic_config(engine), "head")


class Store:
    """The engine, the secret box and a session factory, ready to use."""

    def __init__(self, engine: Engine, box: SecretBox) -> None:
        self.engine = engine
        self.box = box

    @classmethod
    def open(cls, *, url: str, data_dir: Path, secret_key: str | None) -> Store:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
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
                session.commit()
                return
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

    def dispose(self) -> None:
        self.engine.dispose()
