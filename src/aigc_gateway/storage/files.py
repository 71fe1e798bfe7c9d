"""A user's data folders, one per engine family: list, read, upload, delete, with a quota.

The folder of a user and family is the runtime's volume of that owner and family, reached by
``Volumes.root`` (local file access: the volume's trusted base folder on this host and the
components beneath it); nothing outside it can be reached. A path is refused when it is absolute, holds ``..``, a backslash, a NUL byte or a name
longer than 255 bytes. The engine writes the same folder while the gateway serves it, so a path is
never checked first and opened later: every operation walks it from a descriptor of the volumes
root without following a link at any step and then works on what it opened
(:mod:`aigc_gateway.runtime.beneath`). A link in a folder is listed as a link and is neither
entered nor read. The user id always comes from the signed-in principal, so another user's folder
cannot even be named.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from aigc_gateway.auth.core.actor import NO_CLIENT, Client
from aigc_gateway.auth.core.principal import Principal
from aigc_gateway.catalog.registry import TemplateRegistry
from aigc_gateway.catalog.schema import ID_PATTERN, Storage
from aigc_gateway.errors import Conflict, NotFound, TemporaryError, UserError
from aigc_gateway.runtime import beneath
from aigc_gateway.runtime.beneath import Kind, closing_fd
from aigc_gateway.runtime.volumes import Volumes
from aigc_gateway.storage.quota import family_quotas
from aigc_gateway.store import access as acl
from aigc_gateway.store.db import Database
from aigc_gateway.store.tables import Volume

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
UPLOAD_PREFIX = ".aigc-upload-"
"""Names of uploads in progress (``.aigc-upload-<32 hex digits>``, made with ``O_EXCL``): not
listed, and refused as a name to upload to, so a temporary file never meets a user's file."""
MAX_NAME_BYTES = 255
"""The longest file or folder name (in UTF-8) the file systems the gateway runs on take."""
FLUSH_BYTES = 1024 * 1024
READ_BYTES = 256 * 1024
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


class OverQuota(UserError):
    status = 413
    code = "over_quota"


class DiskFull(TemporaryError):
    """The disk (or the file system's own quota) has no room left; nothing was changed."""

    status = 507
    code = "disk_full"


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    path: str
    """Relative to the family folder, with ``/``."""
    kind: Kind
    """A file, a folder or a link (never :attr:`Kind.OTHER`: those are not shown)."""
    size: int
    modified: datetime

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.FOLDER

    @property
    def is_link(self) -> bool:
        return self.kind is Kind.LINK

    @property
    def media_type(self) -> str | None:
        """The image type for a previewable image, else None."""
        if self.kind is not Kind.FILE:
            return None
        return IMAGE_TYPES.get(Path(self.name).suffix.lower())


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


@dataclass(slots=True)
class OpenFile:
    """A regular file opened for reading. Its reader owns the descriptor: :meth:`chunks` sends
    what it holds, :meth:`close` must be called however the sending ends."""

    fd: int
    entry: Entry

    async def chunks(self) -> AsyncIterator[bytes]:
        """The file's bytes read from the descriptor, at most ``entry.size`` of them."""
        left = self.entry.size
        while left > 0:
            chunk = await asyncio.to_thread(os.read, self.fd, min(READ_BYTES, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True, slots=True)
class _Target:
    """Where an upload goes: the opened folder, the name in it, the bytes the quota still has."""

    folder: int
    name: str
    room: int


def clean_parts(path: str) -> list[str]:
    """The components of a relative path; refuses anything that could leave the folder and
    names no file system takes."""
    if "\x00" in path or "\\" in path:
        raise UserError("the path may not hold NUL bytes or backslashes", code="invalid_path")
    if path.startswith("/"):
        raise UserError("the path must be relative to the data folder", code="invalid_path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserError("the path may not hold '..'", code="invalid_path")
    for name in parts:
        check_name(name)
    return parts


def check_name(name: str) -> None:
    """Refuse a file or folder name longer than :data:`MAX_NAME_BYTES` in UTF-8."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise UserError(
            f"the name {name!r} is not valid text (UTF-8)", code="invalid_name"
        ) from None
    if size > MAX_NAME_BYTES:
        raise UserError(
            f"the name {name[:24]!r}... is {size} bytes long; a file or folder name may be at "
            f"most {MAX_NAME_BYTES} bytes (UTF-8): choose a shorter one",
            code="invalid_name",
        )


def check_new_names(parts: list[str]) -> None:
    """Refuse names reserved for uploads in progress as names of new files and folders."""
    for name in parts:
        if name.startswith(UPLOAD_PREFIX):
            raise UserError(
                f"names starting with {UPLOAD_PREFIX!r} are reserved for uploads in progress; "
                f"rename {name!r}",
                code="invalid_name",
            )


@contextmanager
def translated(path: str) -> Iterator[None]:
    """File system errors as the gateway's: what is missing or behind a link is 404, a full
    disk 507; anything else is a bug or an I/O failure and stays an ``OSError`` (500)."""
    try:
        yield
    except beneath.LinkInTheWay:
        raise NotFound(
            f"no such file or folder: {path!r} (links in data folders are not followed)",
            code="is_a_link",
        ) from None
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"no such file or folder: {path!r}", code="file_not_found") from None
    except OSError as exc:
        mapped = _translate(exc, path)
        if mapped is exc:
            raise
        raise mapped from exc


def _translate(exc: OSError, path: str) -> Exception:
    """The gateway error for ``exc``, or ``exc`` itself when it has none."""
    if exc.errno in FULL_DISK:
        return DiskFull(
            "the disk is full: the upload was not saved and nothing else was changed; "
            "delete files you no longer need or ask an administrator for room",
            delay=60,
        )
    if exc.errno == errno.ENAMETOOLONG:
        return UserError(f"a name in {path!r} is too long", code="invalid_name")
    if exc.errno == errno.ENOTEMPTY:
        return Conflict(f"{path!r} changed while it was being deleted; try again")
    return exc


def _entry(folder: int, name: str, parts: list[str]) -> Entry | None:
    """The row for ``name`` in the opened ``folder`` at ``parts``; None for what is not shown
    (uploads in progress, names that are not UTF-8, FIFOs and devices, what just vanished)."""
    if name.startswith(UPLOAD_PREFIX):
        return None
    try:
        name.encode("utf-8")
        st = beneath.lstat_at(folder, name)
    except (OSError, UnicodeEncodeError):
        return None
    kind = beneath.kind_of(st.st_mode)
    return None if kind is Kind.OTHER else _row(name, parts, kind, st)


def _row(name: str, parts: list[str], kind: Kind, st: os.stat_result) -> Entry:
    return Entry(
        name=name,
        path="/".join([*parts, name]),
        kind=kind,
        size=st.st_size if kind is Kind.FILE else 0,
        modified=datetime.fromtimestamp(st.st_mtime, UTC),
    )


def list_folder(folder: int, parts: list[str]) -> list[Entry]:
    """The rows of the opened ``folder`` at ``parts``: folders first, then by name."""
    with os.scandir(folder) as it:
        names = [entry.name for entry in it]
    rows = [e for name in names if (e := _entry(folder, name, parts)) is not None]
    return sorted(rows, key=lambda e: (not e.is_dir, e.name.lower()))


class FileService:
    def __init__(self, *, db: Database, registry: TemplateRegistry, volumes: Volumes) -> None:
        self._db = db
        self._registry = registry
        self._volumes = volumes

    # -- families and quotas --------------------------------------------------------------------

    async def _families(self, who: Principal) -> dict[str, int]:
        """The user's families (their volumes, and every template family) → quota in bytes."""
        async with self._db.read() as session:
            mine = (
                await session.scalars(select(Volume.family).where(Volume.user_id == who.user_id))
            ).all()
        quotas = family_quotas(self._registry)
        default = Storage().quota_gib
        names = sorted(set(quotas) | set(mine))
        return {f: int(quotas.get(f, default) * GIB) for f in names}

    async def _family(self, who: Principal, family: str) -> int:
        """The family's quota in bytes; NotFound for a family the user has no folder for."""
        quota = (
            (await self._families(who)).get(family) if re.fullmatch(ID_PATTERN, family) else None
        )
        if quota is None:
            raise NotFound(f"no data folder for {family!r}", code="family_not_found")
        return quota

    def _open_family(self, who: Principal, family: str, *, create: bool = False) -> int | None:
        """A descriptor of the user's family folder, walked from the volume's trusted base
        without following links (made when ``create``); None when it does not exist."""
        where = self._volumes.root(who.user_id, family)
        if create:
            where.base.mkdir(parents=True, exist_ok=True)
        try:
            with closing_fd(beneath.open_root(where.base)) as root:
                return beneath.walk(root, list(where.parts), create=create)
        except FileNotFoundError:
            return None

    def _size(self, who: Principal, family: str) -> int:
        fam = self._open_family(who, family)
        if fam is None:
            return 0
        with closing_fd(fam):
            return beneath.tree_size(fam)

    async def usage(self, who: Principal) -> list[Usage]:
        families = await self._families(who)
        sizes = await asyncio.gather(*(asyncio.to_thread(self._size, who, f) for f in families))
        return [
            Usage(f, used, quota) for (f, quota), used in zip(families.items(), sizes, strict=True)
        ]

    # -- reading --------------------------------------------------------------------------------

    async def listing(self, who: Principal, family: str, path: str = "") -> Listing:
        quota = await self._family(who, family)
        parts = clean_parts(path)

        def run() -> tuple[list[Entry], int]:
            fam = self._open_family(who, family)
            if fam is None:
                if parts:
                    raise NotFound("no such folder", code="file_not_found")
                return [], 0
            with closing_fd(fam), translated(path):
                with closing_fd(beneath.walk(fam, parts)) as folder:
                    entries = list_folder(folder, parts)
                return entries, beneath.tree_size(fam)

        entries, used = await asyncio.to_thread(run)
        return Listing(Usage(family, used, quota), "/".join(parts), entries)

    async def open(self, who: Principal, family: str, path: str) -> OpenFile:
        """A regular file opened for sending (the caller closes it); NotFound for folders,
        links, and what does not exist."""
        await self._family(who, family)
        parts = clean_parts(path)
        if not parts or parts[-1].startswith(UPLOAD_PREFIX):
            raise NotFound("no such file", code="file_not_found")
        return await asyncio.to_thread(self._open_file, who, family, parts, path)

    def _open_file(self, who: Principal, family: str, parts: list[str], path: str) -> OpenFile:
        fam = self._open_family(who, family)
        if fam is None:
            raise NotFound("no such file", code="file_not_found")
        with closing_fd(fam), translated(path), closing_fd(beneath.walk(fam, parts[:-1])) as dir_fd:
            try:
                fd, st = beneath.open_file(dir_fd, parts[-1])
            except IsADirectoryError:
                raise NotFound(f"{path!r} is not a file", code="file_not_found") from None
        return OpenFile(fd, _row(parts[-1], parts[:-1], Kind.FILE, st))

    # -- writing --------------------------------------------------------------------------------

    async def upload(
        self,
        who: Principal,
        family: str,
        path: str,
        body: AsyncIterator[bytes],
        length: int | None,
        *,
        client: Client = NO_CLIENT,
    ) -> Entry:
        """Stream ``body`` into a new temporary file inside the target's (opened) folder, then
        rename it into place within that folder; refuse with 413 before or while writing when it
        would go over the family's quota, with 507 when the disk is full. On any failure the
        temporary file is removed and a file already at ``path`` is left as it was. Audited once
        the file is in place (a file is not a row: no transaction holds both)."""
        quota = await self._family(who, family)
        parts = clean_parts(path)
        if not parts:
            raise UserError("name the file to upload: ?path=folder/name.png", code="invalid_path")
        check_new_names(parts)
        target = await asyncio.to_thread(self._prepare, who, family, parts, quota, path)
        try:
            if length is not None and length > target.room:
                raise _over_quota(length, target.room)
            with translated(path):
                st = await _write(target, body)
        finally:
            os.close(target.folder)
        entry = _row(target.name, parts[:-1], Kind.FILE, st)
        await self._audit(
            who, client, "file.upload", family, {"path": entry.path, "size": entry.size}
        )
        return entry

    async def _audit(
        self, who: Principal, client: Client, action: str, family: str, detail: dict[str, Any]
    ) -> None:
        async with self._db.write() as session:
            await acl.audit_by(
                session, who, client, action, target_type="file", target_id=family, detail=detail
            )

    def _prepare(
        self, who: Principal, family: str, parts: list[str], quota: int, path: str
    ) -> _Target:
        """The opened folder of the target (folders on the way created) and the room left."""
        with translated(path):
            fam = self._open_family(who, family, create=True)
            assert fam is not None
            with closing_fd(fam):
                folder = beneath.walk(fam, parts[:-1], create=True)
                try:
                    room = quota - beneath.tree_size(fam) + _replaced(folder, parts[-1])
                except BaseException:
                    os.close(folder)
                    raise
        return _Target(folder, parts[-1], room)

    async def delete(
        self, who: Principal, family: str, path: str, *, client: Client = NO_CLIENT
    ) -> None:
        """Delete a file or a folder with everything in it (a link is removed, not followed);
        audited once it is gone."""
        await self._family(who, family)
        parts = clean_parts(path)
        if not parts:
            raise UserError("the family's folder itself cannot be deleted", code="invalid_path")

        def run() -> None:
            fam = self._open_family(who, family)
            if fam is None:
                raise NotFound("no such file", code="file_not_found")
            with closing_fd(fam), translated(path), closing_fd(beneath.walk(fam, parts[:-1])) as d:
                beneath.remove(d, parts[-1])

        await asyncio.to_thread(run)
        await self._audit(who, client, "file.delete", family, {"path": path})


def _replaced(folder: int, name: str) -> int:
    """Bytes of the file an upload to ``name`` replaces (0 for none or a link); Conflict for a
    folder."""
    try:
        st = beneath.lstat_at(folder, name)
    except FileNotFoundError:
        return 0
    kind = beneath.kind_of(st.st_mode)
    if kind is Kind.FOLDER:
        raise Conflict("a folder has that name", code="is_a_folder")
    return st.st_size if kind is Kind.FILE else 0


async def _write(target: _Target, body: AsyncIterator[bytes]) -> os.stat_result:
    """Write ``body`` as a new temporary file in the target's folder and rename it into place;
    the temporary file is removed on any failure (cancellation included)."""
    fd, tmp = await asyncio.to_thread(_new_temp, target.folder)
    try:
        await _copy(body, fd, target.room)
        return await asyncio.to_thread(_commit, target, fd, tmp)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=target.folder)
        raise
    finally:
        os.close(fd)


def _new_temp(folder: int) -> tuple[int, str]:
    """A new, empty, private file in ``folder`` under a random reserved name."""
    while True:
        name = UPLOAD_PREFIX + secrets.token_hex(16)
        with suppress(FileExistsError):
            fd = os.open(name, beneath.NEW_FILE_FLAGS, beneath.NEW_FILE_MODE, dir_fd=folder)
            return fd, name


def _commit(target: _Target, fd: int, tmp: str) -> os.stat_result:
    """Make the written bytes durable, then rename the temporary file over the target (a link
    there is replaced, never followed)."""
    os.fsync(fd)
    st = os.fstat(fd)
    try:
        os.rename(tmp, target.name, src_dir_fd=target.folder, dst_dir_fd=target.folder)
    except IsADirectoryError:
        raise Conflict("a folder has that name", code="is_a_folder") from None
    return st


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _copy(body: AsyncIterator[bytes], fd: int, room: int) -> None:
    written = 0
    pending: list[bytes] = []
    buffered = 0
    async for chunk in body:
        written += len(chunk)
        if written > room:
            raise _over_quota(written, room)
        pending.append(chunk)
        buffered += len(chunk)
        if buffered >= FLUSH_BYTES:
            await asyncio.to_thread(write_all, fd, b"".join(pending))
            pending, buffered = [], 0
    if pending:
        await asyncio.to_thread(write_all, fd, b"".join(pending))


def _over_quota(size: int, room: int) -> OverQuota:
    return OverQuota(
        f"not enough room: this upload needs {size} bytes and only {max(room, 0)} bytes are left "
        "in this folder's quota; delete files you no longer need"
    )
