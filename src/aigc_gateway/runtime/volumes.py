"""Volumes: each user's data of one engine family, behind one interface a runtime provides.

A volume is named by its owner (a user id) and its engine family; it outlives the instances
that use it (a user's ComfyUI instances share their models). The runtime decides where it lives;
nothing outside the runtime builds or walks a volume path. Contract of :class:`Volumes`:

- ``create(owner, family, quota_bytes=None)`` makes the volume if it does not exist
  (idempotent) and returns what to give the engine as its data directory: :meth:`mount` (the
  host path the runtime binds into the engine's sandbox; a node-local path for a remote
  runtime). With ``quota_bytes``, the volume is capped at that size where the storage can
  enforce it (a write past it fails with "Disk quota exceeded"), every call setting the cap
  anew (a template's quota may have changed); where it cannot, nothing is capped and the
  gateway's measured check (:mod:`aigc_gateway.storage.quota`) is all there is.
- ``enforced(owner, family)`` says whether the volume's quota is enforced by its storage.
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
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from aigc_gateway.errors import UserError
from aigc_gateway.runtime import beneath
from aigc_gateway.runtime.base import NotSupported

__all__ = ["LocalVolumes", "VolumeRoot", "Volumes"]

log = logging.getLogger(__name__)

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

    async def create(self, owner: str, family: str, quota_bytes: int | None = None) -> str: ...

    def enforced(self, owner: str, family: str) -> bool: ...

    async def size(self, owner: str, family: str) -> int: ...

    async def delete(self, owner: str, family: str) -> None: ...

    async def snapshot(self, owner: str, family: str, name: str) -> None: ...

    def root(self, owner: str, family: str) -> VolumeRoot: ...


class LocalVolumes:
    """Volumes as folders of this host: ``<root>/<owner>/<family>``.

    Where ``<root>`` is on btrfs with quotas enabled (``btrfs quota enable``), each new volume
    is a subvolume and its quota a qgroup limit, which the kernel enforces for every writer, the
    engine included. Elsewhere (and for a volume made before as a plain folder) volumes are
    folders and quotas are measured only. ext4 and XFS project quotas are not used (they need a
    filesystem mounted with ``prjquota`` and a project id per volume; not done yet)."""

    def __init__(self, root: Path, *, btrfs: str | None = None) -> None:
        self._root = Path(root)
        self._btrfs = btrfs if btrfs is not None else shutil.which("btrfs", path=_SYSTEM_PATH)
        self._on_btrfs: bool | None = None
        self._limits: dict[str, int] = {}
        """The cap last set on each subvolume (a start does not ask btrfs twice)."""

    def mount(self, owner: str, family: str) -> str:
        return str(self._root / _name(owner) / _name(family))

    async def create(self, owner: str, family: str, quota_bytes: int | None = None) -> str:
        path = self.mount(owner, family)
        if os.path.isdir(path):  # one syscall when it exists
            if quota_bytes is not None and self._limits.get(path) != quota_bytes:
                await asyncio.to_thread(self._limit, path, quota_bytes)
            return path
        await asyncio.to_thread(self._make, path, quota_bytes)
        return path

    def enforced(self, owner: str, family: str) -> bool:
        return self.mount(owner, family) in self._limits

    def _make(self, path: str, quota_bytes: int | None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if quota_bytes is not None and self._btrfs is not None and self._is_btrfs():
            done = _run(self._btrfs, "subvolume", "create", path)
            if done is None and os.path.isdir(path):
                self._limit(path, quota_bytes)
                return
            log.warning(
                "could not make the volume a btrfs subvolume; its quota is only measured",
                extra={"volume": path, "error": done},
            )
        Path(path).mkdir(exist_ok=True)

    def _limit(self, path: str, quota_bytes: int) -> None:
        if self._btrfs is None or not self._is_btrfs() or not _is_subvolume(path):
            return
        problem = _run(self._btrfs, "qgroup", "limit", str(quota_bytes), path)
        if problem is None:
            self._limits[path] = quota_bytes
        else:  # quotas not enabled on the filesystem: measured only
            self._limits.pop(path, None)
            log.warning(
                "the volume's quota could not be set on btrfs (is `btrfs quota enable` done on "
                "its filesystem?); it is only measured",
                extra={"volume": path, "error": problem},
            )

    def _is_btrfs(self) -> bool:
        if self._on_btrfs is None:
            self._root.mkdir(parents=True, exist_ok=True)
            kind = subprocess.run(
                ["stat", "-f", "-c", "%T", str(self._root)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            self._on_btrfs = kind.returncode == 0 and kind.stdout.strip() == "btrfs"
        return self._on_btrfs

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


_SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
BTRFS_SUBVOLUME_INODE = 256
"""The inode number of every btrfs subvolume's top folder."""


def _is_subvolume(path: str) -> bool:
    try:
        return os.stat(path).st_ino == BTRFS_SUBVOLUME_INODE
    except OSError:
        return False


def _run(*argv: str) -> str | None:
    """Run a btrfs command: ``None`` when it worked, else what it said."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    return (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"


def _name(value: str) -> str:
    if _NAME.fullmatch(value) is None:
        raise UserError(f"invalid volume name part {value!r}", code="invalid_volume")
    return value
