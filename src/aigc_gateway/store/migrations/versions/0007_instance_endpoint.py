"""instances: one endpoint column instead of host and port

A runtime says how the gateway reaches an engine as an endpoint: a Unix socket (a sandboxed
engine, which has no port on the host) or a TCP address. The instance keeps its text form,
``unix:/path`` or ``host:port``; existing rows keep their address as ``host:port``.

Revision ID: 0007
Revises: 0006l
Create Date: 2026-12-03 13:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006l"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("endpoint", sa.String(1024), nullable=True))
    op.execute(
        "UPDATE instances SET endpoint = CASE WHEN host LIKE '%:%' "
        "THEN '[' || host || ']:' || port ELSE host || ':' || port END "
        "WHERE host IS NOT NULL AND port IS NOT NULL"
    )
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("host")
        batch.drop_column("port")


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("host", sa.String(255), nullable=True))
        batch.add_column(sa.Column("port", sa.Integer(), nullable=True))
    # Only TCP endpoints have a host and port; a Unix one is lost (the engine is re-adopted by
    # the runtime, which records it, at the next start).
    op.execute(
        "UPDATE instances SET "
        "host = rtrim(ltrim(substr(endpoint, 1, length(endpoint) - length(replace("
        "endpoint, rtrim(endpoint, '0123456789'), '')) - 1), '['), ']'), "
        "port = CAST(replace(endpoint, rtrim(endpoint, '0123456789'), '') AS INTEGER) "
        "WHERE endpoint IS NOT NULL AND endpoint NOT LIKE 'unix:%'"
    )
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("endpoint")
