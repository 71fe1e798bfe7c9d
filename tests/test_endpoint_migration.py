"""Migration 0007: instances keep one ``endpoint`` text instead of host and port. A recorded
engine address survives the upgrade (``host:port``, IPv6 in brackets) and, for TCP ones, the
downgrade; a Unix endpoint has no host and port to go back to."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from alembic import command
from sqlalchemy import Connection, text

from aigc_gateway.store.db import Database, alembic_config

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def to(revision: str, down: bool = False) -> Callable[[Connection], None]:
    def run(connection: Connection) -> None:
        (command.downgrade if down else command.upgrade)(alembic_config(connection), revision)

    return run


def instance_row(n: int, **address: object) -> dict[str, object]:
    return {
        "id": f"i{n}",
        "slug": f"s{n}",
        "name": f"n{n}",
        "owner_id": "u1",
        "template_id": "demo",
        "template_revision_id": 1,
        "family": "demo",
        "volume_id": "v1",
        "desired_state": "running",
        "state": "running",
        "reason": "",
        "generation": 1,
        "launched_generation": 1,
        "delete_data": False,
        "runtime": "local",
        "created_at": NOW,
        "updated_at": NOW,
        "queue_priority": 0,
        **address,
    }


async def insert(conn: object, table: str, row: dict[str, object]) -> None:
    names = ", ".join(row)
    values = ", ".join(f":{k}" for k in row)
    await conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({values})"), row)  # type: ignore[attr-defined]


async def test_engine_addresses_survive_the_endpoint_migration(database_url: str) -> None:
    database = Database(database_url)
    try:
        async with database.write_engine.connect() as conn:
            await conn.run_sync(to("0006l"))
            await insert(
                conn,
                "users",
                {
                    "id": "u1",
                    "name": "u",
                    "display_name": "",
                    "is_admin": False,
                    "disabled": False,
                    "created_at": NOW,
                },
            )
            await insert(
                conn,
                "template_revisions",
                {
                    "id": 1,
                    "template_id": "demo",
                    "family": "demo",
                    "version": "1",
                    "digest": "d",
                    "source": "",
                    "spec": "{}",
                    "loaded_at": NOW,
                },
            )
            await insert(
                conn,
                "volumes",
                {"id": "v1", "user_id": "u1", "family": "demo", "path": "/v", "created_at": NOW},
            )
            await insert(conn, "instances", instance_row(1, host="127.0.0.1", port=8123))
            await insert(conn, "instances", instance_row(2, host="::1", port=9000))
            await insert(conn, "instances", instance_row(3))
            await conn.run_sync(to("head"))
            rows = (
                await conn.execute(text("SELECT id, endpoint FROM instances ORDER BY id"))
            ).all()
            assert [tuple(r) for r in rows] == [
                ("i1", "127.0.0.1:8123"),
                ("i2", "[::1]:9000"),
                ("i3", None),
            ]
            await conn.execute(
                text("UPDATE instances SET endpoint = 'unix:/run/e.sock' WHERE id = 'i3'")
            )
            await conn.run_sync(to("0006l", down=True))
            back = (
                await conn.execute(text("SELECT id, host, port FROM instances ORDER BY id"))
            ).all()
            assert [tuple(r) for r in back] == [
                ("i1", "127.0.0.1", 8123),
                ("i2", "::1", 9000),
                ("i3", None, None),
            ]
            await conn.rollback()
    finally:
        await database.close()
