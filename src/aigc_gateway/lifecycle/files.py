"""A user's data folders, one per engine family: list, read, upload, delete, with a quota.

The folder of a user and family is ``<volumes_dir>/<user_id>/<family>``; nothing outside it can be
reached. A path is refused when it is absolute, holds ``..``, a backslash or a NUL byte, and an
entry whose real path (symlinks resolved) leaves the folder is treated as missing. The user id
always comes from the signed-in principal, so another user's folder cannot even be named.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select

from aigc_gateway.auth.principal import Principal
from aigc_gateway.errors import Conflict, NotFound, UserError
from aigc_gateway.store.db import Database
from aigc_gateway.store.tables import Volume
from aigc_gateway.templates.registry import TemplateRegistry
from aigc_gateway.templates.schema import ID_PATTERN, Storage

GIB = 1024**3
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
}
"""Shown inline (previews). Everything else is downloaded as an attachment, never rendered on the
gateway's origin (an uploaded HTML or SVG file must not run script there)."""
UPLOAD_PREFIX = ".upload-"
FLUSH_BYTES = 1024 * 1024


class OverQuota(UserError):
    status = 413
    code = "over_quota"


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    path: str
    """Relative to the family folder, with ``/``."""
    is_dir: bool
    size: int
    modified: datetime

    @property
    def media_type(self) -> str | None:
        """The image type for a previewable image, else None."""
        return None if self.is_dir else IMAGE_TYPES.get(Path(self.name).suffix.lower())


@dataclass(frozen=True, slots=True)
class Usage:
    family: str
    used_bytes: int
    quota_bytes: int


@dataclass(frozen=True, slots=True)
class Listing:
    usage: Usage
    path: str
    entries: list[Entry]


def clean_parts(path: str) -> list[str]:
    """The components of a relative path; refuses anything that could leave the folder."""
    if "\x00" in path or "\\" in path:
        raise UserError("the path may not hold NUL bytes or backslashes", code="invalid_path")
    if path.startswith("/"):
        raise UserError("the path must be relative to the data folder", code="invalid_path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserError("the path may not hold '..'", code="invalid_path")
    return parts


def inside(base: Path, parts: list[str]) -> Path:
    """``base/parts`` with symlinks resolved; NotFound if that leaves ``base``."""
    root = base.resolve()
    real = root.joinpath(*parts).resolve()
    if real != root and not real.is_relative_to(root):
        raise NotFound("no such file", code="file_not_found")
    return real


def folder_size(root: Path) -> int:
    """Bytes of the regular files under ``root`` (symlinks not followed)."""
    total = 0
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


def _entry(root: Path, path: Path) -> Entry | None:
    """One listing row; None for what is not shown (uploads in progress, links leaving root)."""
    if path.name.startswith(UPLOAD_PREFIX):
        return None
    try:
        real = path.resolve()
        if real != root and not real.is_relative_to(root):
            return None
        st = real.stat()
    except (OSError, RuntimeError):
        return None
    is_dir = real.is_dir()
    return Entry(
        name=path.name,
        path=path.relative_to(root).as_posix(),
        is_dir=is_dir,
        size=0 if is_dir else st.st_size,
        modified=datetime.fromtimestamp(st.st_mtime, UTC),
    )


def list_folder(root: Path, folder: Path) -> list[Entry]:
    if not folder.is_dir():
        raise NotFound("no such folder", code="file_not_found")
    rows = [e for p in folder.iterdir() if (e := _entry(root, p)) is not None]
    return sorted(rows, key=lambda e: (not e.is_dir, e.name.lower()))


class FileService:
    def __init__(self, *, db: Database, registry: TemplateRegistry, volumes_dir: Path) -> None:
        self._db = db
        self._registry = registry
        self._volumes_dir = volumes_dir

    # -- families and quotas --------------------------------------------------------------------

    def _quotas(self) -> dict[str, float]:
        """Largest ``storage.quota_gib`` among the loaded templates of each family."""
        quotas: dict[str, float] = {}
        for loaded in self._registry.catalog.templates.values():
            t = loaded.template
            quotas[t.family] = max(quotas.get(t.family, 0.0), t.storage.quota_gib)
        return quotas

    async def _families(self, who: Principal) -> dict[str, int]:
        """The user's families (their volumes, and every template family) → quota in bytes."""
        async with self._db.read() as session:
            mine = (
                await session.scalars(select(Volume.family).where(Volume.user_id == who.user_id))
            ).all()
        quotas = self._quotas()
        default = Storage().quota_gib
        names = sorted(set(quotas) | set(mine))
        return {f: int(quotas.get(f, default) * GIB) for f in names}

    def folder(self, who: Principal, family: str) -> Path:
        return self._volumes_dir / who.user_id / family

    async def _family(self, who: Principal, family: str) -> int:
        """The family's quota in bytes; NotFound for a family the user has no folder for."""
        quota = (
            (await self._families(who)).get(family) if re.fullmatch(ID_PATTERN, family) else None
        )
        if quota is None:
            raise NotFound(f"no data folder for {family!r}", code="family_not_found")
        return quota

    async def usage(self, who: Principal) -> list[Usage]:
        families = await self._families(who)
        sizes = await asyncio.gather(
            *(asyncio.to_thread(folder_size, self.folder(who, f)) for f in families)
        )
        return [
            Usage(f, used, quota) for (f, quota), used in zip(families.items(), sizes, strict=True)
        ]

    # -- reading --------------------------------------------------------------------------------

    async def listing(self, who: Principal, family: str, path: str = "") -> Listing:
        quota = await self._family(who, family)
        base = self.folder(who, family)
        parts = clean_parts(path)

        def run() -> tuple[list[Entry], int]:
            if not base.exists():
                if parts:
                    raise NotFound("no such folder", code="file_not_found")
                return [], 0
            return list_folder(base.resolve(), inside(base, parts)), folder_size(base)

        entries, used = await asyncio.to_thread(run)
        return Listing(Usage(family, used, quota), "/".join(parts), entries)

    async def file(self, who: Principal, family: str, path: str) -> Entry:
        """A regular file to send; NotFound for folders and what does not exist."""
        await self._family(who, family)
        base = self.folder(who, family)
        parts = clean_parts(path)

        def run() -> Entry:
            real = inside(base, parts)
            if not parts or not real.is_file():
                raise NotFound("no such file", code="file_not_found")
            found = _entry(base.resolve(), real)
            if found is None:
                raise NotFound("no such file", code="file_not_found")
            return found

        return await asyncio.to_thread(run)

    def real_path(self, who: Principal, family: str, entry: Entry) -> Path:
        return self.folder(who, family).resolve() / entry.path

    # -- writing --------------------------------------------------------------------------------

    async def upload(
        self,
        who: Principal,
        family: str,
        path: str,
        body: AsyncIterator[bytes],
        length: int | None,
    ) -> Entry:
        """Stream ``body`` into a temporary file beside the target, then rename it into place;
        refuse with 413 before or while writing when it would go over the family's quota."""
        quota = await self._family(who, family)
        base = self.folder(who, family)
        parts = clean_parts(path)
        if not parts:
            raise UserError("name the file to upload: ?path=folder/name.png", code="invalid_path")
        target, room = await asyncio.to_thread(self._prepare, base, parts, quota)
        if length is not None and length > room:
            raise _over_quota(length, room)
        fd, tmp_name = await asyncio.to_thread(
            tempfile.mkstemp, prefix=UPLOAD_PREFIX, dir=target.parent
        )
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                await _copy(body, out, room)
            await asyncio.to_thread(os.replace, tmp, target)
        except BaseException:
            await asyncio.to_thread(tmp.unlink, True)
            raise
        found = await asyncio.to_thread(_entry, base.resolve(), target)
        assert found is not None
        return found

    @staticmethod
    def _prepare(base: Path, parts: list[str], quota: int) -> tuple[Path, int]:
        """The real target path (its folder created) and the bytes still free for it."""
        base.mkdir(parents=True, exist_ok=True)
        target = inside(base, parts)
        if target == base.resolve() or target.is_dir():
            raise Conflict("a folder has that name", code="is_a_folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        inside(base, [*parts[:-1]])  # the created folders are still inside (no link raced in)
        replaced = target.stat().st_size if target.is_file() else 0
        return target, quota - folder_size(base) + replaced

    async def delete(self, who: Principal, family: str, path: str) -> None:
        """Delete a file or a folder with everything in it (a link is removed, not followed)."""
        await self._family(who, family)
        base = self.folder(who, family)
        parts = clean_parts(path)
        if not parts:
            raise UserError("the family's folder itself cannot be deleted", code="invalid_path")

        def run() -> None:
            parent = inside(base, parts[:-1])
            entry = parent / parts[-1]
            if entry.is_symlink():
                entry.unlink()
                return
            inside(base, parts)
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.exists():
                entry.unlink()
            else:
                raise NotFound("no such file", code="file_not_found")

        await asyncio.to_thread(run)


async def _copy(body: AsyncIterator[bytes], out: BinaryIO, room: int) -> None:
    written = 0
    pending: list[bytes] = []
    buffered = 0
    write = out.write
    async for chunk in body:
        written += len(chunk)
        if written > room:
            raise _over_quota(written, room)
        pending.append(chunk)
        buffered += len(chunk)
        if buffered >= FLUSH_BYTES:
            await asyncio.to_thread(write, b"".join(pending))
            pending, buffered = [], 0
    if pending:
        await asyncio.to_thread(write, b"".join(pending))


def _over_quota(size: int, room: int) -> OverQuota:
    return OverQuota(
        f"not enough room: this upload needs {size} bytes and only {max(room, 0)} bytes are left "
        "in this folder's quota; delete files you no longer need"
    )
