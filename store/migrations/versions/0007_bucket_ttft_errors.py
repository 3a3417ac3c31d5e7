"""metric buckets: time to first token sums and error classes

Revision ID: 0007
Revises: 0001
Create Date: 2026-12-01 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0001"
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


def downgrade() -> None:
    with op.batch_alter_table("metric_bucket", schema=None) as batch_op:
        batch_op.drop_column("error_kinds")
        batch_op.drop_column("ttft_count")
        batch_op.drop_column("ttft_sum_ms")
