"""Faults in the real store's driver path (failure modes the real store cannot produce on
demand): queued DB-API errors raised by the next statements, as the driver would raise them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


class StoreFault:
    """Raises the queued errors (e.g. ``sqlite3.OperationalError("database is locked")``), one
    per statement, on the engine it is attached to; ``only`` limits it to statements starting
    with that word (``SELECT``)."""

    def __init__(self, engine: AsyncEngine, *, only: str = "") -> None:
        self.queued: list[Exception] = []
        self.only = only.upper()
        event.listen(engine.sync_engine, "before_cursor_execute", self._before)

    def _before(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if self.queued and statement.lstrip().upper().startswith(self.only):
            raise self.queued.pop(0)
