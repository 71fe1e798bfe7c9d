"""What the API and the pages read of an instance: a read-only shape, not the store's row.

The services hand out the store's rows; the outer layers see them only through
:class:`InstanceView`, so they depend on the fields they read and never on the ORM (the import
contract ``api`` forbids it). Any object with these attributes fits: the row, a test double.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

__all__ = ["InstanceView"]


class InstanceView(Protocol):
    """An instance as its viewers see it: identity, states, engine and GPUs (read only)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def slug(self) -> str: ...
    @property
    def owner_id(self) -> str: ...
    @property
    def template_id(self) -> str: ...
    @property
    def family(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def desired_state(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def generation(self) -> int:
        """Bumped by start, resume and restart (a restart is pending while it is ahead)."""

    @property
    def launched_generation(self) -> int:
        """The generation the engine was last launched for."""

    @property
    def pid(self) -> int | None: ...
    @property
    def endpoint(self) -> str | None:
        """How the gateway reaches the engine (``unix:/path`` or ``host:port``); None while
        none runs."""

    @property
    def gpu_ids(self) -> list[str] | None:
        """GPUs held while the engine may run; None otherwise."""

    @property
    def gpu_memory_gib(self) -> float | None:
        """For a GPU share: its size."""

    @property
    def placement(self) -> str | None:
        """Why the scheduler chose these GPUs (or why the instance waits)."""

    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def ready_at(self) -> datetime | None: ...
    @property
    def last_activity_at(self) -> datetime | None: ...
