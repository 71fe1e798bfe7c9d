"""GPU placement and queue: what each instance holds or waits for, and cordoned GPUs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 05:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gpu_ids", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("gpu_memory_gib", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("gpu_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("placement", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("queue_priority", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "gpu_cordons",
        sa.Column("gpu_id", sa.String(length=128), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("by", sa.String(length=32), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("gpu_id", name=op.f("pk_gpu_cordons")),
    )


def downgrade() -> None:
    op.drop_table("gpu_cordons")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        for column in (
            "queue_priority",
            "queued_at",
            "placement",
            "gpu_since",
            "gpu_memory_gib",
            "gpu_ids",
        ):
            batch_op.drop_column(column)
