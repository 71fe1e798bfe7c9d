"""usage rollup and report indexes

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 06:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GRAIN = (
    "month",
    "week",
    "instance_id",
    "instance_name",
    "user_id",
    "team_id",
    "template_id",
    "resource",
    "gpu_type",
    "gpu_pool",
)


def upgrade() -> None:
    op.create_index("ix_usage_intervals_user_day", "usage_intervals", ["user_id", "day"])
    op.create_index("ix_usage_intervals_team_month", "usage_intervals", ["team_id", "month"])
    op.create_table(
        "usage_rollup",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("week", sa.String(length=8), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("instance_name", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("template_id", sa.String(length=64), nullable=False),
        sa.Column("resource", sa.String(length=16), nullable=False),
        sa.Column("gpu_type", sa.String(length=64), nullable=False),
        sa.Column("gpu_pool", sa.String(length=64), nullable=False),
        sa.Column("seconds", sa.BigInteger(), nullable=False),
        sa.Column("active_s", sa.BigInteger(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("gpu_seconds", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_rollup")),
        sa.UniqueConstraint(*GRAIN, name="uq_usage_rollup_grain"),
    )
    op.create_index("ix_usage_rollup_user_month", "usage_rollup", ["user_id", "month"])
    # What was closed before this migration.
    keys = ", ".join(
        f"coalesce({c}, '')" if c in ("team_id", "gpu_type", "gpu_pool") else c for c in GRAIN
    )
    # Column names come from the constant above: no input reaches this SQL.
    backfill = (
        f"INSERT INTO usage_rollup ({', '.join(GRAIN)}, seconds, active_s, cost_micros, "  # noqa: S608
        f"gpu_seconds) SELECT {keys}, sum(seconds), sum(active_s), sum(cost_micros), "
        f"sum(seconds * gpu_count) FROM usage_intervals WHERE end_at IS NOT NULL "
        f"GROUP BY {keys}"
    )
    op.execute(backfill)


def downgrade() -> None:
    op.drop_table("usage_rollup")
    op.drop_index("ix_usage_intervals_team_month", "usage_intervals")
    op.drop_index("ix_usage_intervals_user_day", "usage_intervals")
