"""The leak check excuses one library task: SQLAlchemy's shielded graceful close of an aiosqlite
connection that it has force-stopped (a cancelled user; tests/support/leaks.py): the close was
queued behind what the connection's thread was still doing (a statement waiting for SQLite's
lock), the stop ends the thread, and the close is never answered.
A real connection shows both cases: a close behind a slow statement on a running connection is
not excused; once the connection is stopped, as SQLAlchemy's ``terminate`` stops it, it is."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.leaks import _orphaned_close


async def test_only_the_close_of_a_stopped_connection_is_excused(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            adapted = raw.dbapi_connection
            inner = adapted._connection  # type: ignore[union-attr]
            slow = asyncio.ensure_future(inner._execute(time.sleep, 0.3))  # the thread is busy
            closing = asyncio.ensure_future(adapted._terminate_graceful_close())  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
            assert not closing.done() and not _orphaned_close(closing)  # a real wait
            stopped = inner.stop()  # what terminate's force close does next
            assert not closing.done() and _orphaned_close(closing)
            await asyncio.gather(slow, return_exceptions=True)
            if stopped is not None:
                await stopped  # the thread has ended
            await asyncio.sleep(0.05)
            # ...and the shielded close never will: nothing is left to answer it.
            assert not closing.done() and _orphaned_close(closing)
            closing.cancel()
            await asyncio.gather(closing, return_exceptions=True)
            await conn.invalidate()
    finally:
        await engine.dispose()
