"""discovery drafts; endpoints remember that discovery made them

Revision ID: 0004
Revises: 0005
Create Date: 2026-12-01 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "discovery_draft",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("url", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("use_llm", sa.Boolean(), nullable=False),
        sa.Column("llm", sa.JSON(), nullable=True),
        sa.Column("secrets_encrypted", sa.Text(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("probe_passed", sa.Boolean(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("screenshot", sa.LargeBinary(), nullable=True),
        sa.Column("endpoint_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("worker", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("discovery_draft", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_discovery_draft_status"), ["status"], unique=False)
    with op.batch_alter_table("endpoint", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("discovered_by_ai", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("discovery_confidence", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("discovery_analysis", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoint", schema=None) as batch_op:
        batch_op.drop_column("discovery_analysis")
        batch_op.drop_column("discovery_confidence")
        batch_op.drop_column("discovered_by_ai")
    with op.batch_alter_table("discovery_draft", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_discovery_draft_status"))
    op.drop_table("discovery_draft")
