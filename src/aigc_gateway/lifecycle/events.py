"""In-memory fan-out of instance events to live listeners (the SSE stream).

The store is the record; this hub only wakes listeners. A listener subscribes *before* reading
the stored backlog and drops ids it has seen, so no event falls between the two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aigc_gateway.store.tables import Event

INTERNAL = frozenset({"url", "host", "port", "upstream", "endpoint"})
"""Event data only administrators see: where the engine listens on the gateway host."""


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    instance_id: str
    at: datetime
    kind: str
    message: str
    source_state: str | None
    target_state: str | None
    data: dict[str, Any]

    @classmethod
    def of(cls, ev: Event) -> EventRecord:
        return cls(
            id=ev.id,
            instance_id=ev.instance_id,
            at=ev.at,
            kind=ev.kind,
            message=ev.message,
            source_state=ev.source_state,
            target_state=ev.target_state,
            data=dict(ev.data or {}),
        )

    def public(self, *, internal: bool = False) -> dict[str, Any]:
        """The event as users see it; ``internal`` (administrators only) keeps the engine's own
        address, which nobody else needs: users reach engines through the gateway, and an
        address on the gateway host is a way around it."""
        data = self.data if internal else {k: v for k, v in self.data.items() if k not in INTERNAL}
        return {
            "id": self.id,
            "instance_id": self.instance_id,
            "at": self.at.isoformat(),
            "kind": self.kind,
            "message": self.message,
            "from": self.source_state,
            "to": self.target_state,
            "data": data,
        }


class EventHub:
    """Live listeners per instance. ``on_publish(record)`` is told of every event published
    here (not of those published with ``announce=False``: heard from another gateway
    process), so that process's listeners hear it too."""

    QUEUE_SIZE = 1000

    def __init__(self, on_publish: Callable[[EventRecord], None] | None = None) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[EventRecord]]] = {}
        self.on_publish = on_publish

    def listened(self, instance_id: str) -> bool:
        """Whether anyone here listens to ``instance_id``'s events."""
        return bool(self._subscribers.get(instance_id))

    def publish(self, record: EventRecord, *, announce: bool = True) -> None:
        if announce and self.on_publish is not None:
            self.on_publish(record)
        for queue in self._subscribers.get(record.instance_id, ()):
            if queue.full():
                # A stalled listener loses the oldest live event; it can re-read the store.
                queue.get_nowait()
            queue.put_nowait(record)

    @contextmanager
    def subscribe(self, instance_id: str) -> Iterator[asyncio.Queue[EventRecord]]:
        queue: asyncio.Queue[EventRecord] = asyncio.Queue(self.QUEUE_SIZE)
        self._subscribers.setdefault(instance_id, set()).add(queue)
        try:
            yield queue
        finally:
            subs = self._subscribers.get(instance_id)
            if subs is not None:
                subs.discard(queue)
                if not subs:
                    del self._subscribers[instance_id]
