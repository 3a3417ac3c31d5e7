"""metric buckets carry the instance that served the requests; instances carry a stable name

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 17:00:00

The instance joins the key of both bucket tables, so every instance of a cluster writes its own
rows and reports sum them (or pick one). Rows written before this revision belong to no known
instance: they get "" (store.models.UNRECORDED_INSTANCE).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# (table, its time column); the primary key names are PostgreSQL's defaults, kept as they were.
BUCKET_TABLES = (("metric_bucket", "minute"), ("metric_bucket_hour", "hour"))
NAME_LENGTH = 100


def _instance_column() -> sa.Column:
    return sa.Column(
        "instance",
        sqlmodel.sql.sqltypes.AutoString(length=NAME_LENGTH),
        nullable=False,
        server_default="",
    )


@contextmanager
def _sqlite_rekeyed(table: str) -> Iterator[Any]:
    """A batch that copies ``table`` into a new one without its primary key, for the caller
    to give it another (SQLite cannot alter a primary key in place)."""
    reflected = sa.Table(table, sa.MetaData(), autoload_with=op.get_bind())
    reflected.primary_key.name = f"{table}_pkey"  # named, so the batch can drop it
    with op.batch_alter_table(table, copy_from=reflected, recreate="always") as batch_op:
        batch_op.drop_constraint(f"{table}_pkey", type_="primary")
        yield batch_op


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, time_column in BUCKET_TABLES:
        key = ["endpoint_id", "instance", time_column]
        if sqlite:
            with _sqlite_rekeyed(table) as batch_op:
                batch_op.add_column(_instance_column())
                batch_op.create_primary_key(f"{table}_pkey", key)
        else:
            op.add_column(table, _instance_column())
            op.drop_constraint(f"{table}_pkey", table, type_="primary")
            op.create_primary_key(f"{table}_pkey", table, key)
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "name",
                sqlmodel.sql.sqltypes.AutoString(length=NAME_LENGTH),
                nullable=False,
                server_default="",
            )
        )


def downgrade() -> None:
    """Back to one row per endpoint and time: the instances' rows are added together first."""
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_column("name")
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, time_column in BUCKET_TABLES:
        _merge_instances(table, time_column)
        key = ["endpoint_id", time_column]
        if sqlite:
            with _sqlite_rekeyed(table) as batch_op:
                batch_op.drop_column("instance")
                batch_op.create_primary_key(f"{table}_pkey", key)
        else:
            op.drop_constraint(f"{table}_pkey", table, type_="primary")
            op.drop_column(table, "instance")
            op.create_primary_key(f"{table}_pkey", table, key)


SUMMED = (
    "requests",
    "errors",
    "latency_sum_ms",
    "tokens_in",
    "tokens_out",
    "cost",
    "ttft_sum_ms",
    "ttft_count",
)


def _merge_instances(table: str, time_column: str) -> None:
    bind = op.get_bind()
    rows = sa.Table(table, sa.MetaData(), autoload_with=bind)
    merged: dict[tuple[Any, Any], dict[str, Any]] = {}
    for row in bind.execute(sa.select(rows)).mappings():
        key = (row["endpoint_id"], row[time_column])
        into = merged.get(key)
        if into is None:
            merged[key] = {**row, "instance": ""}
        else:
            _add(into, row)
    bind.execute(rows.delete())
    if merged:
        bind.execute(rows.insert(), list(merged.values()))


def _add(into: dict[str, Any], row: Any) -> None:
    for name in SUMMED:
        into[name] = (into[name] or 0) + (row[name] or 0)
    into["latency_max_ms"] = max(into["latency_max_ms"] or 0, row["latency_max_ms"] or 0)
    into["latency_hist"] = _added(into["latency_hist"] or [], row["latency_hist"] or [])
    kinds = dict(into["error_kinds"] or {})
    for kind, count in (row["error_kinds"] or {}).items():
        kinds[kind] = kinds.get(kind, 0) + count
    into["error_kinds"] = kinds


def _added(a: Iterable[int], b: Iterable[int]) -> list[int]:
    first, second = list(a), list(b)
    width = max(len(first), len(second))
    first += [0] * (width - len(first))
    second += [0] * (width - len(second))
    return [x + y for x, y in zip(first, second, strict=True)]
