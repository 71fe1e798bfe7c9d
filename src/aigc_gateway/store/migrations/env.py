"""Alembic environment: runs on the connection the gateway hands over (see ``db.migrate``)."""

from __future__ import annotations

from alembic import context

from aigc_gateway.store.tables import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `aigc-gateway` (Database.migrate), not bare alembic")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
