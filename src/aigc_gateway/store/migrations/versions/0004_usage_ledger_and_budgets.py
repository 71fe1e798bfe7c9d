"""usage ledger and budgets

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 05:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "usage_intervals",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("instance_name", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=True),
        sa.Column("template_id", sa.String(length=64), nullable=False),
        sa.Column("template_version", sa.String(length=64), nullable=False),
        sa.Column("resource", sa.String(length=16), nullable=False),
        sa.Column("gpu_type", sa.String(length=64), nullable=True),
        sa.Column("gpu_pool", sa.String(length=64), nullable=True),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("share_gib", sa.Float(), nullable=True),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("week", sa.String(length=8), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("seconds", sa.BigInteger(), nullable=False),
        sa.Column("active_s", sa.BigInteger(), nullable=False),
        sa.Column("last_active_minute", sa.BigInteger(), nullable=True),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("closed_by", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_intervals")),
    )
    op.create_index("ix_usage_intervals_open", "usage_intervals", ["instance_id", "end_at"])
    op.create_index("ix_usage_intervals_day_user", "usage_intervals", ["day", "user_id"])
    op.create_index("ix_usage_intervals_day_team", "usage_intervals", ["day", "team_id"])
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("subject_id", sa.String(length=32), nullable=False),
        sa.Column("soft_micros", sa.BigInteger(), nullable=True),
        sa.Column("hard_micros", sa.BigInteger(), nullable=True),
        sa.Column("pause_when_over", sa.Boolean(), nullable=False),
        sa.Column("max_gpus", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budgets")),
        sa.UniqueConstraint("scope", "subject_id", name="uq_budgets_scope_subject"),
    )
    op.create_table(
        "budget_warnings",
        sa.Column("budget_id", sa.String(length=32), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spent_micros", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["budget_id"],
            ["budgets.id"],
            name=op.f("fk_budget_warnings_budget_id_budgets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("budget_id", "month", name=op.f("pk_budget_warnings")),
    )


def downgrade() -> None:
    op.drop_table("budget_warnings")
    op.drop_table("budgets")
    op.drop_table("usage_intervals")
