"""The database handle: engines, sessions, migrations.

SQLite (the embedded default) runs in WAL mode with two engines on the same file: one for reads,
and one for writes whose transactions start with ``BEGIN IMMEDIATE`` so that a read-check-write
(such as "count this user's instances, then insert one") is serialised instead of failing with
"database is locked" half-way. PostgreSQL uses one engine; writers lock the rows they check.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from aigc_gateway.errors import TemporaryError

log = logging.getLogger(__name__)

STORE_RETRY_S = 1.0
"""How soon to try again after the store was unreachable or busy."""


SQLITE_PASSING = ("locked", "busy", "disk i/o", "unable to open")
"""SQLite files most failures, "no such table" included, as OperationalError; these words mark
the ones that pass."""


def passing_trouble(exc: BaseException) -> bool:
    """Whether ``exc`` means the store is unreachable or busy for now (connection lost or
    refused, database locked, pool exhausted) rather than a bug in the statement."""
    if isinstance(exc, OperationalError) and isinstance(exc.orig, sqlite3.Error):
        return any(word in str(exc.orig).lower() for word in SQLITE_PASSING)
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout, ConnectionError)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def translate(exc: BaseException) -> TemporaryError | None:
    """The vocabulary's name for a store failure: a :class:`TemporaryError` for passing
    trouble; None for anything else (an untranslated IntegrityError, a programming error),
    which is a bug and propagates unchanged."""
    if not passing_trouble(exc):
        return None
    return TemporaryError(f"the store is unavailable: {type(exc).__name__}", delay=STORE_RETRY_S)


MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _sqlite_setup(engine: AsyncEngine, *, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (below), as the pysqlite docs recommend.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)


class Database:
    """Owns the engines. ``read()`` and ``write()`` give sessions; ``write()`` commits."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine = create_async_engine(url, **kwargs)
        self.write_engine = create_async_engine(url, **kwargs) if self.is_sqlite else self.engine
        if self.is_sqlite:
            _sqlite_setup(self.engine, immediate=False)
            _sqlite_setup(self.write_engine, immediate=True)
        self._read = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write = async_sessionmaker(self.write_engine, expire_on_commit=False)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read() as session:
            try:
                yield session
            except (SQLAlchemyError, ConnectionError) as exc:
                if (temporary := translate(exc)) is None:
                    raise
                raise temporary from exc

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        async with self._write() as session:
            try:
                async with session.begin():
                    yield session
            except (SQLAlchemyError, ConnectionError) as exc:
                # IntegrityError and friends are translated by repositories that expect them;
                # one that escapes is a bug, not a reason to ask the client to come back.
                if (temporary := translate(exc)) is None:
                    raise
                raise temporary from exc

    async def serialise(self, session: AsyncSession, what: str) -> None:
        """Hold ``what`` exclusively until ``session``'s write transaction ends, across every
        process on this database: a read-decide-write under it (GPU booking, the ledger's
        midnight cut) never interleaves with another process's. On PostgreSQL a transaction
        advisory lock; SQLite's ``BEGIN IMMEDIATE`` already admits one writer at a time."""
        if not self.is_sqlite:
            await session.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:what))"), {"what": what}
            )

    async def migrate(self) -> None:
        """Apply Alembic migrations up to head (idempotent; several gateways starting at once
        on one PostgreSQL take turns). Logged, so that a start is seen to migrate once."""
        log.info("migrating the store to the newest schema")
        async with self.write_engine.connect() as conn:
            if not self.is_sqlite:
                await conn.execute(text("SELECT pg_advisory_lock(hashtext('aigc-migrate'))"))
            try:
                await conn.run_sync(_upgrade)
                await conn.commit()
            finally:
                if not self.is_sqlite:
                    await conn.execute(text("SELECT pg_advisory_unlock(hashtext('aigc-migrate'))"))
                    await conn.commit()

    @property
    def display_url(self) -> str:
        """Where the store is, for people (the Health page): its URL without the password."""
        return self.engine.url.render_as_string(hide_password=True)

    async def ping(self) -> bool:
        """Whether the store answers (a ``SELECT 1``): the health checks' probe."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError):
            return False
        return True

    async def close(self) -> None:
        await self.engine.dispose()
        if self.write_engine is not self.engine:
            await self.write_engine.dispose()


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")
