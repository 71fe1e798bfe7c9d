"""The signed-in user's data folders, one per engine family: list, download, upload, delete.

Paths are relative to the family's folder (``?path=outputs/cat.png``); anything that could leave
it (``..``, absolute paths, NUL bytes) is refused with 400, and a link in the folder is listed as
``"type": "link"`` but never followed (404). A file is sent from the descriptor the service opened,
never reopened by its path.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from aigc_gateway.api.deps import ClientDep, CurrentUser, GatewayDep
from aigc_gateway.auth.core.principal import Principal
from aigc_gateway.errors import Forbidden, UserError
from aigc_gateway.storage.files import Entry, OpenFile, Usage

router = APIRouter(prefix="/api/files", tags=["files"])

PathQuery = Annotated[str, Query(max_length=4096, description="relative to the family's folder")]


class UsagePublic(BaseModel):
    family: str
    used_bytes: int
    quota_bytes: int

    @classmethod
    def of(cls, u: Usage) -> UsagePublic:
        return cls(family=u.family, used_bytes=u.used_bytes, quota_bytes=u.quota_bytes)


class EntryPublic(BaseModel):
    name: str
    path: str
    type: Literal["folder", "file", "link"]
    size: int
    modified: datetime
    image: bool

    @classmethod
    def of(cls, e: Entry) -> EntryPublic:
        return cls(
            name=e.name,
            path=e.path,
            type=e.kind.value,  # OTHER is never listed
            size=e.size,
            modified=e.modified,
            image=e.media_type is not None,
        )


class ListingPublic(BaseModel):
    family: str
    path: str
    used_bytes: int
    quota_bytes: int
    entries: list[EntryPublic]


class FileStream(Response):
    """An opened file sent from its descriptor, which is closed when sending ends however it
    ends (a client that goes away included)."""

    def __init__(self, opened: OpenFile, *, media_type: str, headers: dict[str, str]) -> None:
        size = str(opened.entry.size)
        super().__init__(media_type=media_type, headers={**headers, "Content-Length": size})
        self._opened = opened

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            await send(start)
            if scope.get("method") != "HEAD":
                async for chunk in self._opened.chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            self._opened.close()


def _writer(who: Principal) -> None:
    if not who.may_write:
        raise Forbidden("this token may only read; create a token with the manage scope")


@router.get("")
async def list_families(gw: GatewayDep, who: CurrentUser) -> list[UsagePublic]:
    """Your data folders, one per engine family, with the bytes used and the quota."""
    return [UsagePublic.of(u) for u in await gw.files.usage(who)]


@router.get("/{family}")
async def list_folder(
    family: str, gw: GatewayDep, who: CurrentUser, path: PathQuery = ""
) -> ListingPublic:
    """Folders and files in one folder of the family's data."""
    found = await gw.files.listing(who, family, path)
    return ListingPublic(
        family=family,
        path=found.path,
        used_bytes=found.usage.used_bytes,
        quota_bytes=found.usage.quota_bytes,
        entries=[EntryPublic.of(e) for e in found.entries],
    )


@router.get("/{family}/content", response_class=FileStream, status_code=200)
async def download(family: str, path: PathQuery, gw: GatewayDep, who: CurrentUser) -> Response:
    """The file's bytes: images inline (previews), everything else as a download."""
    opened = await gw.files.open(who, family, path)
    entry = opened.entry
    image = entry.media_type
    disposition = "inline" if image else "attachment"
    return FileStream(
        opened,
        media_type=image or "application/octet-stream",
        headers={
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(entry.name)}",
            "Last-Modified": format_datetime(entry.modified, usegmt=True),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, no-cache",
        },
    )


@router.put("/{family}/content", status_code=201)
async def upload(
    family: str,
    path: PathQuery,
    request: Request,
    gw: GatewayDep,
    who: CurrentUser,
    client: ClientDep,
) -> EntryPublic:
    """Upload the request body as the file at ``path`` (replacing it; folders are created).
    Refused with 400 for a name no file system takes or one reserved for uploads in progress,
    413 when it would go over the family's quota, 507 when the disk is full (nothing changed)."""
    _writer(who)
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise UserError("invalid Content-Length", code="invalid_request")
    entry = await gw.files.upload(
        who,
        family,
        path,
        request.stream(),
        int(length) if length is not None else None,
        client=client,
    )
    return EntryPublic.of(entry)


@router.delete("/{family}/content", status_code=204)
async def delete(
    family: str, path: PathQuery, gw: GatewayDep, who: CurrentUser, client: ClientDep
) -> Response:
    """Delete a file, or a folder with everything in it."""
    _writer(who)
    await gw.files.delete(who, family, path, client=client)
    return Response(status_code=204)
