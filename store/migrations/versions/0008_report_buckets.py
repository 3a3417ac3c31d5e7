"""report buckets: time to first token sums, error classes, an hourly rollup

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("metric_bucket", schema=None) as batch_op:
        zero = {"nullable": False, "server_default": "0"}
        batch_op.add_column(sa.Column("ttft_sum_ms", sa.Float(), **zero))
        batch_op.add_column(sa.Column("ttft_count", sa.Integer(), **zero))
        batch_op.add_column(
            sa.Column("error_kinds", sa.JSON(), nullable=False, server_default="{}")
        )
    with op.batch_alter_table("metric_bucket", schema=None) as batch_op:
        batch_op.create_index("ix_metric_bucket_minute", ["minute"], unique=False)
    hourly = op.create_table(
        "metric_bucket_hour",
        sa.Column("endpoint_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("hour", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("latency_sum_ms", sa.Float(), nullable=False),
        sa.Column("latency_max_ms", sa.Float(), nullable=False),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("latency_hist", sa.JSON(), nullable=False),
        sa.Column("ttft_sum_ms", sa.Float(), nullable=False),
        sa.Column("ttft_count", sa.Integer(), nullable=False),
        sa.Column("error_kinds", sa.JSON(), nullable=False, server_default="{}"),
        sa.ForeignKeyConstraint(["endpoint_id"], ["endpoint.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("endpoint_id", "hour"),
    )
    _backfill(hourly)


def _backfill(hourly: sa.Table) -> None:
    """Roll the existing minute buckets up per hour, so older traffic shows in long reports."""
    plain = ("endpoint_id", "requests", "errors", "latency_sum_ms", "latency_max_ms",
             "tokens_in", "tokens_out", "cost")
    minute = sa.table(
        "metric_bucket",
        *(sa.column(name) for name in plain),
        sa.column("minute", sqlmodel.sql.sqltypes.UTCDateTime()),
        sa.column("latency_hist", sa.JSON()),
    )
    rolled: dict[tuple[str, object], dict] = {}
    for row in op.get_bind().execute(sa.select(minute)).mappings():
        key = (row["endpoint_id"], row["minute"].replace(minute=0, second=0, microsecond=0))
        acc = rolled.setdefault(key, {"endpoint_id": key[0], "hour": key[1], "requests": 0,
                                      "errors": 0, "latency_sum_ms": 0.0, "latency_max_ms": 0.0,
                                      "tokens_in": 0, "tokens_out": 0, "cost": 0.0,
                                      "latency_hist": [], "ttft_sum_ms": 0.0, "ttft_count": 0,
                                      "error_kinds": {}})
        for name in ("requests", "errors", "latency_sum_ms", "tokens_in", "tokens_out", "cost"):
            acc[name] += row[name] or 0
        acc["latency_max_ms"] = max(acc["latency_max_ms"], row["latency_max_ms"] or 0)
        hist = list(row["latency_hist"] or [])
        old = acc["latency_hist"] or [0] * len(hist)
        acc["latency_hist"] = [a + b for a, b in zip(old, hist, strict=False)]
    if rolled:
        op.bulk_insert(hourly, list(rolled.values()))


def downgrade() -> None:
    op.drop_table("metric_bucket_hour")
    with op.batch_alter_table("metric_bucket", schema=None) as batch_op:
        batch_op.drop_index("ix_metric_bucket_minute")
    with op.batch_alter_table("metric_bucket", schema=None) as batch_op:
        batch_op.drop_column("error_kinds")
        batch_op.drop_column("ttft_count")
        batch_op.drop_column("ttft_sum_ms")
