"""Back-off for retried work (pure): doubling delays between a first and a most."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Doubling delays from ``first`` up to ``most``; :meth:`reset` after a success.
    ``conflicts`` counts the concurrent-change conflicts seen in a row (see the controller's
    guard)."""

    first: float = 0.1
    most: float = 30.0
    _next: float = field(init=False, default=0.0)
    conflicts: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._next = self.first

    def next(self) -> float:
        """The delay to wait now; the one after is twice as long (at most ``most``)."""
        delay, self._next = self._next, min(self._next * 2, self.most)
        return delay

    def reset(self) -> None:
        self._next, self.conflicts = self.first, 0
