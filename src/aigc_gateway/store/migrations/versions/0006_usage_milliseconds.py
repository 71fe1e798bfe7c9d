"""usage durations in milliseconds

Rows and rollup rows kept whole seconds, each rounded on its own, so many short intervals lost
time in reports (300 stops of 0.4 s each billed as 0 s). They now keep exact milliseconds and a
report rounds once. Existing values are whole seconds, so they convert exactly (times 1000).
Columns are renamed in place (SQLite 3.25+ and PostgreSQL), which keeps a large ledger's rows
where they are.

Revision ID: 0006l
Revises: 0005
Create Date: 2026-12-03 08:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006l"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RENAMES = {
    "usage_intervals": (("seconds", "duration_ms"), ("active_s", "active_ms")),
    "usage_rollup": (
        ("seconds", "duration_ms"),
        ("active_s", "active_ms"),
        ("gpu_seconds", "gpu_ms"),
    ),
}


def _convert(*, to_ms: bool) -> None:
    for table, pairs in RENAMES.items():
        for seconds, ms in pairs:
            old, new = (seconds, ms) if to_ms else (ms, seconds)
            op.execute(f"ALTER TABLE {table} RENAME COLUMN {old} TO {new}")
        scale = ", ".join(
            f"{ms} = {ms} * 1000" if to_ms else f"{s} = ({s} + 500) / 1000" for s, ms in pairs
        )
        op.execute(f"UPDATE {table} SET {scale}")  # noqa: S608 (names from this file)


def upgrade() -> None:
    _convert(to_ms=True)


def downgrade() -> None:
    _convert(to_ms=False)
