"""Migration 0010 on a store that already holds traffic, on SQLite and PostgreSQL: the old bucket
rows keep their figures under the unnamed instance, the instance joins the key, and a downgrade
adds the instances' rows of a minute back together."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from store.db import alembic_config, make_engine

MINUTE = datetime(2026, 11, 30, 12, 5, tzinfo=UTC)
HOUR = MINUTE.replace(minute=0)


def filler(column: sa.Column) -> Any:
    """A value for a required column the test does not care about."""
    kind = column.type
    for base, value in (
        (sa.Boolean, False),
        (sa.Integer, 0),
        (sa.Float, 0.0),
        (sa.Numeric, 0),
        (sa.DateTime, MINUTE),
        (sa.JSON, {}),
        (sa.String, "x"),
    ):
        if isinstance(kind, base):
            return value
    raise AssertionError(f"no filler for {column.name} ({kind!r})")


def insert(conn: Any, table_name: str, **values: Any) -> None:
    """A row as the schema of the moment has it (reflected), required columns filled in."""
    table = sa.Table(table_name, sa.MetaData(), autoload_with=conn)
    row = dict(values)
    for column in table.columns:
        needed = not column.nullable and column.server_default is None
        if column.name not in row and needed:
            row[column.name] = filler(column)
    conn.execute(table.insert(), row)


def bucket(requests: int, slow: int, kinds: dict[str, int]) -> dict[str, Any]:
    hist = [0] * 14
    hist[3], hist[9] = requests - slow, slow
    return {
        "endpoint_id": "e1", "requests": requests, "errors": sum(kinds.values()),
        "latency_sum_ms": 10.0 * requests, "latency_max_ms": 4000.0 if slow else 40.0,
        "tokens_in": requests, "tokens_out": 2 * requests, "cost": 0.5, "latency_hist": hist,
        "ttft_sum_ms": 3.0, "ttft_count": 1, "error_kinds": kinds,
    }


def rows(conn: Any, table: str) -> list[dict[str, Any]]:
    reflected = sa.Table(table, sa.MetaData(), autoload_with=conn)
    return [dict(r) for r in conn.execute(sa.select(reflected)).mappings()]


def key_of(engine: sa.Engine, table: str) -> set[str]:
    return set(sa.inspect(engine).get_pk_constraint(table)["constrained_columns"])


def test_old_buckets_survive_the_instance_key_both_ways(database_url):
    engine = make_engine(database_url)
    cfg = alembic_config(engine)
    before = ScriptDirectory.from_config(cfg).get_revision("0010").down_revision
    command.upgrade(cfg, before)
    with engine.begin() as conn:
        insert(conn, "endpoint", id="e1", name="e1", endpoint_type="openai_api")
        insert(conn, "metric_bucket", minute=MINUTE, **bucket(4, 1, {"timeout": 1}))
        insert(conn, "metric_bucket_hour", hour=HOUR, **bucket(4, 1, {"timeout": 1}))
        insert(conn, "instance", id="i1", url="http://a", running=[])

    command.upgrade(cfg, "head")

    assert key_of(engine, "metric_bucket") == {"endpoint_id", "instance", "minute"}
    assert key_of(engine, "metric_bucket_hour") == {"endpoint_id", "instance", "hour"}
    with engine.begin() as conn:
        (old,) = rows(conn, "metric_bucket")
        assert (old["instance"], old["requests"], old["errors"]) == ("", 4, 1)
        assert old["latency_hist"][9] == 1 and old["error_kinds"] == {"timeout": 1}
        (old_hour,) = rows(conn, "metric_bucket_hour")
        assert (old_hour["instance"], old_hour["requests"], old_hour["cost"]) == ("", 4, 0.5)
        assert [r["name"] for r in rows(conn, "instance")] == [""]
        # Another instance's row of the same endpoint and minute now has a place of its own.
        insert(conn, "metric_bucket", minute=MINUTE, instance="b", **bucket(6, 2, {"x": 2}))
        insert(conn, "metric_bucket_hour", hour=HOUR, instance="b", **bucket(6, 2, {"x": 2}))

    command.downgrade(cfg, before)

    assert key_of(engine, "metric_bucket") == {"endpoint_id", "minute"}
    with engine.begin() as conn:
        for table in ("metric_bucket", "metric_bucket_hour"):
            (merged,) = rows(conn, table)
            assert "instance" not in merged
            assert (merged["requests"], merged["errors"], merged["tokens_out"]) == (10, 3, 20)
            assert merged["latency_hist"][3] == 7 and merged["latency_hist"][9] == 3
            assert merged["error_kinds"] == {"timeout": 1, "x": 2}
            assert (merged["latency_max_ms"], merged["ttft_count"]) == (4000.0, 2)
    command.upgrade(cfg, "head")
    engine.dispose()
