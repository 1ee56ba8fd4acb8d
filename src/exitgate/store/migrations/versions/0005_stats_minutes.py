"""The dashboard's per-minute history of the live figures (issue 11, store/history.py).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Idempotent: a database stamped at the baseline after a `create_all` of a newer schema
    # (the "made before migrations" path) may hold the table already.
    if sa.inspect(op.get_bind()).has_table("stats_minutes"):
        return
    op.create_table(
        "stats_minutes",
        sa.Column("minute", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("bytes_up", sa.BigInteger, nullable=False),
        sa.Column("bytes_down", sa.BigInteger, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("tunnels", sa.BigInteger, nullable=False),
        sa.Column("connections", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stats_minutes")
