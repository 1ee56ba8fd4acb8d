"""The schema as it stood before migrations existed (a database created by `create_all` then
is stamped with this revision and upgraded from here).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "geo_names",
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("bind_address", sa.String(64), nullable=False),
        sa.Column("ip", sa.String(64), nullable=False),
        sa.Column("country", sa.String(8), nullable=False),
        sa.Column("region", sa.String(200), nullable=False),
        sa.Column("city", sa.String(200), nullable=False),
        sa.Column("isp", sa.String(200), nullable=False),
        sa.Column("asn", sa.BigInteger(), nullable=False),
        sa.Column("network", sa.String(8), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("credits", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "usage_errors",
        sa.Column("package_id", sa.String(40), primary_key=True),
        sa.Column("hour", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("code", sa.String(40), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "usage_hours",
        sa.Column("package_id", sa.String(40), primary_key=True),
        sa.Column("hour", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("bytes_up", sa.BigInteger(), nullable=False),
        sa.Column("bytes_down", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "usage_totals",
        sa.Column("package_id", sa.String(40), primary_key=True),
        sa.Column("bytes_up", sa.BigInteger(), nullable=False),
        sa.Column("bytes_down", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "packages",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rps_limit", sa.Integer(), nullable=True),
        sa.Column("concurrency_limit", sa.Integer(), nullable=True),
        sa.Column("traffic_limit_bytes", sa.BigInteger(), nullable=True),
        sa.Column("ip_allowlist", sa.JSON(), nullable=False),
        sa.Column("protocols", sa.JSON(), nullable=False),
        sa.Column("networks", sa.JSON(), nullable=False),
        sa.Column("rules", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_packages_org_id", "packages", ["org_id"])


def downgrade() -> None:
    for table in ("packages", "usage_totals", "usage_hours", "usage_errors", "orgs", "nodes",
                  "geo_names"):
        op.drop_table(table)
