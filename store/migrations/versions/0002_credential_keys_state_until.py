"""credential key names beside the ciphertext; the end time of a state

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoint") as batch:
        # NULL = not known yet: the runtime fills it in at start (it holds the key to decrypt).
        batch.add_column(sa.Column("credential_keys", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("state_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
        )
        batch.create_index("ix_endpoint_group_name", ["group_name"])


def downgrade() -> None:
    with op.batch_alter_table("endpoint") as batch:
        batch.drop_index("ix_endpoint_group_name")
        batch.drop_column("state_until")
        batch.drop_column("credential_keys")
