"""What the services' searches are asked for (pure values, shared by the API, the pages and
the store)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["InstanceFilter"]


@dataclass(frozen=True, slots=True)
class InstanceFilter:
    """What an administrator narrows everyone's instances to; an empty field matches all.
    Without ``state``, deleted instances are left out."""

    user: str = ""
    """An owner's user name."""
    team: str = ""
    """A team name: instances whose owner is a member."""
    template: str = ""
    state: str = ""
