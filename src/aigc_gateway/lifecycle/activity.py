"""Last activity per instance, kept in memory and written to the store in batches."""

from __future__ import annotations

import time


class ActivityTracker:
    """``touch`` is called for every proxied request and WebSocket message: a dict write.
    ``drain`` hands the changes since the last drain to whoever persists them."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._dirty: set[str] = set()

    def touch(self, instance_id: str) -> None:
        # Epoch seconds of the process, not the ledger's clock: idle time is compared with the
        # engine's ready time, which the runtime stamps on the real clock.
        self._last[instance_id] = time.time()
        self._dirty.add(instance_id)

    def seed(self, instance_id: str, at: float) -> None:
        """Known activity from the store (after a restart); not written back."""
        if at > self._last.get(instance_id, 0.0):
            self._last[instance_id] = at

    def last(self, instance_id: str) -> float | None:
        return self._last.get(instance_id)

    def drain(self) -> dict[str, float]:
        changed = {i: self._last[i] for i in self._dirty}
        self._dirty.clear()
        return changed
