"""instance_leases: which gateway process drives an instance

Several gateway processes may share one PostgreSQL. Each instance is driven (started, stopped,
moved) by one of them at a time: the holder of its lease, which renews it before ``expires_at``.
No rows at first: every gateway takes the leases it needs as it reconciles.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 02:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "instance_leases",
        sa.Column("instance_id", sa.String(32), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_instance_leases")),
    )
    op.create_index(op.f("ix_instance_leases_expires_at"), "instance_leases", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_instance_leases_expires_at"), table_name="instance_leases")
    op.drop_table("instance_leases")
