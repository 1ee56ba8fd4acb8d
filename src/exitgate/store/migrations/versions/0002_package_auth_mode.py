"""Packages choose how clients authenticate: key_or_ip (SPEC 4), key, or ip (issue 12).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "packages",
        sa.Column("auth_mode", sa.String(16), nullable=True, server_default="key_or_ip"),
    )


def downgrade() -> None:
    with op.batch_alter_table("packages") as batch:
        batch.drop_column("auth_mode")
