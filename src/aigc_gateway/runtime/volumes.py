"""Volumes: each user's data of one engine family, behind one interface a runtime provides.

A volume is named by its owner (a user id) and its engine family; it outlives the instances
that use it (a user's ComfyUI instances share their models). The runtime decides where it lives;
nothing outside the runtime builds or walks a volume path. Contract of :class:`Volumes`:

- ``create(owner, family)`` makes the volume if it does not exist (idempotent) and returns what
  to give the engine as its data directory: :meth:`mount` (the host path the runtime binds into
  the engine's sandbox; a node-local path for a remote runtime).
- ``mount(owner, family)`` names that data directory without touching anything (pure).
- ``size(owner, family)`` measures the bytes the volume holds, not following symbolic links at
  any step (an engine can plant a link to anything); 0 for a volume that does not exist.
- ``delete(owner, family)`` removes the volume and everything in it; deleting an absent volume
  is not an error.
- ``snapshot(owner, family, name)`` is for later: runtimes that cannot raise
  :class:`~aigc_gateway.runtime.base.NotSupported`.
- ``root(owner, family)`` is **local file access only**: a :class:`VolumeRoot` (a trusted folder
  of this host and the components to walk beneath it) from which the files API opens the volume
  by descriptor, without following links (:mod:`aigc_gateway.runtime.beneath`). A runtime whose
  volumes are not on this host raises ``NotSupported`` (its files API goes through the node).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from aigc_gateway.errors import UserError
from aigc_gateway.runtime import beneath
from aigc_gateway.runtime.base import NotSupported

__all__ = ["LocalVolumes", "VolumeRoot", "Volumes"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True, slots=True)
class VolumeRoot:
    """Where a volume is on this host: ``base`` is the runtime's own folder (trusted: no engine
    can write it), ``parts`` the folders to walk beneath it to reach the volume."""

    base: Path
    parts: tuple[str, ...]


@runtime_checkable
class Volumes(Protocol):
    """See the module docstring for the contract of each method."""

    def mount(self, owner: str, family: str) -> str: ...

    async def create(self, owner: str, family: str) -> str: ...

    async def size(self, owner: str, family: str) -> int: ...

    async def delete(self, owner: str, family: str) -> None: ...

    async def snapshot(self, owner: str, family: str, name: str) -> None: ...

    def root(self, owner: str, family: str) -> VolumeRoot: ...


class LocalVolumes:
    """Volumes as folders of this host: ``<root>/<owner>/<family>``."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    def mount(self, owner: str, family: str) -> str:
        return str(self._root / _name(owner) / _name(family))

    async def create(self, owner: str, family: str) -> str:
        path = self.mount(owner, family)
        Path(path).mkdir(parents=True, exist_ok=True)  # one syscall when it exists
        return path

    async def size(self, owner: str, family: str) -> int:
        return await asyncio.to_thread(self._measure, _name(owner), _name(family))

    def _measure(self, owner: str, family: str) -> int:
        try:
            with beneath.closing_fd(beneath.open_root(self._root)) as root:
                folder = beneath.walk(root, [owner, family])
            with beneath.closing_fd(folder):
                return beneath.tree_size(folder)
        except OSError:  # missing, or not a real folder: nothing counted
            return 0

    async def delete(self, owner: str, family: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.mount(owner, family), True)

    async def snapshot(self, owner: str, family: str, name: str) -> None:
        raise NotSupported("the local runtime cannot snapshot volumes yet")

    def root(self, owner: str, family: str) -> VolumeRoot:
        return VolumeRoot(self._root, (_name(owner), _name(family)))


def _name(value: str) -> str:
    if _NAME.fullmatch(value) is None:
        raise UserError(f"invalid volume name part {value!r}", code="invalid_volume")
    return value
