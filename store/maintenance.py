"""Operations on a store: migration level, key rotation, SQLite backup and restore.

Used by the ``aiem doctor | backup | restore | keys`` commands; nothing here needs a running
instance, and each works while one runs (SQLite's online backup; rotation row by row).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Table, select, update
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from store.crypto import SecretBox, SecretKeyError
from store.db import CANARY_KEY, CANARY_PLAINTEXT, alembic_config

BATCH = 200


class MaintenanceError(RuntimeError):
    """An operation that cannot be done as asked; the message says why and what to do."""


# ---- migrations ----------------------------------------------------------------------------


def migration_levels(engine: Engine) -> tuple[str | None, str | None]:
    """(the store's revision, the newest revision this version knows)."""
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, head


# ---- key rotation --------------------------------------------------------------------------


def encrypted_columns() -> list[tuple[Table, Column, list[Column]]]:
    """Every ``*_encrypted`` column of every table, with the table's primary key."""
    found = []
    for table in SQLModel.metadata.sorted_tables:
        for column in table.columns:
            if column.name.endswith("_encrypted"):
                found.append((table, column, list(table.primary_key.columns)))
    return found


@dataclass
class RotationReport:
    rows: int = 0
    columns: int = 0


def reencrypt_all(engine: Engine, box: SecretBox) -> RotationReport:
    """Re-encrypt every secret (and the key canary) under the box's first key.

    Row by row in small transactions, so a running instance is never blocked for long; a row
    changed meanwhile by that instance is simply rotated again on the next run.
    """
    report = RotationReport()
    for table, column, pk in [*encrypted_columns(), _canary_column()]:
        report.columns += 1
        report.rows += _rotate_column(engine, box, table, column, pk)
    return report


def _canary_column() -> tuple[Table, Column, list[Column]]:
    table = SQLModel.metadata.tables["meta"]
    return table, table.c.value, [table.c.key]


def _rotate_column(
    engine: Engine, box: SecretBox, table: Table, column: Column, pk: list[Column]
) -> int:
    stmt = select(*pk, column).where(column.is_not(None))
    if table.name == "meta":
        stmt = stmt.where(table.c.key == CANARY_KEY)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    done = 0
    for start in range(0, len(rows), BATCH):
        with engine.begin() as conn:
            for row in rows[start : start + BATCH]:
                *keys, token = row
                where = [col == value for col, value in zip(pk, keys, strict=True)]
                conn.execute(
                    update(table)
                    .where(*where, column == token)
                    .values({column.name: box.rotate(token)})
                )
                done += 1
    return done


def check_canary(engine: Engine, box: SecretBox) -> str:
    """'ok', 'missing' (a new store) or raise SecretKeyError (the key does not match)."""
    table = SQLModel.metadata.tables["meta"]
    with engine.connect() as conn:
        token = conn.execute(select(table.c.value).where(table.c.key == CANARY_KEY)).scalar()
    if token is None:
        return "missing"
    if box.decrypt(token) != CANARY_PLAINTEXT:
        raise SecretKeyError("the key canary decrypts to something else")
    return "ok"


# ---- SQLite backup and restore -------------------------------------------------------------


def sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise MaintenanceError(
            "backup and restore work on the SQLite store; for PostgreSQL use pg_dump and "
            "pg_restore (see the deployment guide)"
        )
    return Path(url[len("sqlite:///") :])


def backup_sqlite(db: Path, target: Path) -> int:
    """Copy a live SQLite database consistently (SQLite's online backup); return its size."""
    if not db.is_file():
        raise MaintenanceError(f"no database at {db}")
    if target.exists():
        raise MaintenanceError(f"{target} exists; choose a new file name")
    tmp = target.with_name(target.name + ".partial")
    _private_file(tmp)
    source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        dest = sqlite3.connect(tmp)
        try:
            source.backup(dest)
            dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            dest.close()
    finally:
        source.close()
    os.replace(tmp, target)
    return target.stat().st_size


def restore_sqlite(backup: Path, db: Path, box: SecretBox) -> None:
    """Replace the database with a backup, after checking it is one and the key opens it."""
    if not backup.is_file():
        raise MaintenanceError(f"no backup at {backup}")
    tmp = db.with_name(db.name + ".restoring")
    _private_file(tmp)
    source = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
    try:
        dest = sqlite3.connect(tmp)
        try:
            source.backup(dest)
        finally:
            dest.close()
    except sqlite3.DatabaseError as exc:
        tmp.unlink(missing_ok=True)
        raise MaintenanceError(f"{backup} is not a SQLite database: {exc}") from None
    finally:
        source.close()
    try:
        _check_backup(tmp, box)
    except MaintenanceError:
        tmp.unlink(missing_ok=True)
        raise
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    os.replace(tmp, db)


def _check_backup(path: Path, box: SecretBox) -> None:
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"endpoint", "alembic_version", "meta"} <= tables:
            raise MaintenanceError(f"{path.name} is not a backup of this product's store")
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (CANARY_KEY,)).fetchone()
    finally:
        conn.close()
    if row is not None:
        try:
            ok = box.decrypt(row[0]) == CANARY_PLAINTEXT
        except SecretKeyError:
            ok = False
        if not ok:
            raise MaintenanceError(
                "the backup was made under another encryption key; restore with that key "
                "(AIEM_SECRET_KEY or the data dir's secret.key)"
            )


def _private_file(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


__all__ = [
    "MaintenanceError",
    "backup_sqlite",
    "check_canary",
    "migration_levels",
    "reencrypt_all",
    "restore_sqlite",
    "sqlite_path",
]
