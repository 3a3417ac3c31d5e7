"""per-endpoint health settings (probes, breaker, passive signals)

Revision ID: 0005
Revises: 0008
Create Date: 2026-12-01 14:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoint") as batch:
        # Existing endpoints get {}: every health setting at its default.
        batch.add_column(sa.Column("health_config", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("endpoint") as batch:
        batch.drop_column("health_config")
