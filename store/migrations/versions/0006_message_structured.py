"""structured message parts: content parts, tool calls and tool call ids of stored messages

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-01 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("message") as batch:
        # NULL for plain text messages (almost all of them).
        batch.add_column(sa.Column("structured", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("message") as batch:
        batch.drop_column("structured")
