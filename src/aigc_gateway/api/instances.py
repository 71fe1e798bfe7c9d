"""Instances: create, read, list, actions, delete, events (JSON and a live SSE stream), logs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse

from aigc_gateway.api.deps import ClientDep, CurrentUser, GatewayDep, optional_principal
from aigc_gateway.api.schemas import InstanceCreate, InstancePublic
from aigc_gateway.api.streams import until_revoked, watched
from aigc_gateway.errors import Forbidden, NotFound, Unauthorized
from aigc_gateway.gateway import Gateway
from aigc_gateway.lifecycle.events import EventRecord
from aigc_gateway.lifecycle.service import Action, CreateRequest
from aigc_gateway.proxy.live import StillAllowed

router = APIRouter(prefix="/api/instances", tags=["instances"])


@router.get("")
async def list_instances(
    gw: GatewayDep, who: CurrentUser, all: Annotated[bool, Query()] = False
) -> list[InstancePublic]:
    """Your instances; with ``all=true`` an admin sees everyone's."""
    found = await gw.instances.list_visible(who, all_users=all)
    usage = await gw.gpu_usage.by_session() if any(i.gpu_ids for i in found) else {}
    return [
        InstancePublic.of(i, gw.settings, gw.gpus, usage, internal=who.acts_as_admin) for i in found
    ]


@router.post("", status_code=201)
async def create_instance(
    body: InstanceCreate, gw: GatewayDep, who: CurrentUser, response: Response, client: ClientDep
) -> InstancePublic:
    """Create an instance and start it. With the same ``request_id`` a retry returns the first
    instance (200) instead of creating another."""
    inst, created = await gw.instances.create(
        who,
        CreateRequest(template_id=body.template, name=body.name, request_id=body.request_id),
        client=client,
    )
    if not created:
        response.status_code = 200
    return InstancePublic.of(inst, gw.settings, gw.gpus, internal=who.acts_as_admin)


@router.get("/{instance_id}")
async def get_instance(instance_id: str, gw: GatewayDep, who: CurrentUser) -> InstancePublic:
    inst = await gw.instances.get(who, instance_id)
    usage = await gw.gpu_usage.by_session() if inst.gpu_ids else {}
    return InstancePublic.of(inst, gw.settings, gw.gpus, usage, internal=who.acts_as_admin)


@router.delete("/{instance_id}", status_code=202)
async def delete_instance(
    instance_id: str,
    gw: GatewayDep,
    who: CurrentUser,
    client: ClientDep,
    delete_data: Annotated[bool, Query(description="also delete the data folder")] = False,
) -> InstancePublic:
    """Delete the instance. Its data folder is kept unless ``delete_data=true``."""
    inst = await gw.instances.delete(who, instance_id, delete_data=delete_data, client=client)
    return InstancePublic.of(inst, gw.settings, gw.gpus, internal=who.acts_as_admin)


@router.get("/{instance_id}/events")
async def list_events(
    instance_id: str, gw: GatewayDep, who: CurrentUser, after: Annotated[int, Query(ge=0)] = 0
) -> list[dict[str, Any]]:
    internal = who.acts_as_admin
    return [e.public(internal=internal) for e in await gw.instances.events(who, instance_id, after)]


@router.get("/{instance_id}/events/stream", response_class=EventSourceResponse)
async def stream_events(
    request: Request,
    instance_id: str,
    gw: GatewayDep,
    who: CurrentUser,
    last_event_id: Annotated[int | None, Header()] = None,
    after: Annotated[int, Query(ge=0)] = 0,
) -> EventSourceResponse:
    """Server-Sent Events: the stored backlog after ``Last-Event-ID`` (or ``after``), then live
    events as they happen. Event types: ``transition``, ``progress``, ``action``, ``exit``. The
    stream ends when the caller may no longer see the instance (a share taken back, signed
    out, a revoked session or token, a disabled user)."""
    generation = gw.access_cache.generation  # read before access is decided
    await gw.instances.get(who, instance_id)  # authorise before streaming anything
    start = last_event_id if last_event_id is not None else after

    def sse(record: EventRecord) -> dict[str, str]:
        data = json.dumps(record.public(internal=who.acts_as_admin))
        return {"id": str(record.id), "event": record.kind, "data": data}

    async def events() -> AsyncIterator[dict[str, str]]:
        seen = start
        still = _still_viewing(request, instance_id)
        watching = watched(request, still, generation=generation)
        with watching as watch, gw.hub.subscribe(instance_id) as queue:
            for record in await gw.instances.events(who, instance_id, seen):
                seen = record.id
                yield sse(record)
            async for record in until_revoked(queue, watch):
                if record.id > seen:
                    seen = record.id
                    yield sse(record)

    return EventSourceResponse(events(), ping=15)


def _still_viewing(request: Request, instance_id: str) -> StillAllowed:
    """Whether the credential that opened a stream still sees the instance: the same check as
    a new request with it, made again on every access change."""

    async def allowed() -> bool:
        gw: Gateway = request.app.state.gateway
        try:
            who = await optional_principal(request)
            return who is not None and bool(await gw.instances.get(who, instance_id))
        except (Unauthorized, Forbidden, NotFound):
            return False

    return allowed


@router.get("/{instance_id}/logs", response_class=PlainTextResponse)
async def get_logs(
    instance_id: str,
    gw: GatewayDep,
    who: CurrentUser,
    tail: Annotated[int, Query(ge=1, le=100_000, description="how many lines")] = 1000,
) -> PlainTextResponse:
    """The engine's last ``tail`` lines of output (at most its last MiB)."""
    return PlainTextResponse(await gw.instances.logs(who, instance_id, lines=tail))


class ShareCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(default=None, description="a user name")
    team: str | None = Field(default=None, description="a team name")


class SharePublic(BaseModel):
    id: str
    user_id: str | None
    team_id: str | None
    target: str
    created_at: datetime


@router.get("/{instance_id}/shares", tags=["sharing"])
async def list_shares(instance_id: str, gw: GatewayDep, who: CurrentUser) -> list[SharePublic]:
    return [
        SharePublic(
            id=s.id, user_id=s.user_id, team_id=s.team_id, target=name, created_at=s.created_at
        )
        for s, name in await gw.instances.shares(who, instance_id)
    ]


@router.post("/{instance_id}/shares", status_code=201, tags=["sharing"])
async def add_share(
    instance_id: str, body: ShareCreate, gw: GatewayDep, who: CurrentUser, client: ClientDep
) -> SharePublic:
    """Let a user or a team open and operate the instance (not delete or reshare it)."""
    share = await gw.instances.share(
        who, instance_id, user_name=body.user, team_name=body.team, client=client
    )
    return SharePublic(
        id=share.id,
        user_id=share.user_id,
        team_id=share.team_id,
        target=body.user or body.team or "",
        created_at=share.created_at,
    )


@router.delete("/{instance_id}/shares/{share_id}", status_code=204, tags=["sharing"])
async def remove_share(
    instance_id: str, share_id: str, gw: GatewayDep, who: CurrentUser, client: ClientDep
) -> Response:
    """Revoke a share; access ends at once, on the API and on the instance host."""
    await gw.instances.unshare(who, instance_id, share_id, client=client)
    return Response(status_code=204)


# Declared last: its `{action}` segment would otherwise swallow `/shares`.
@router.post("/{instance_id}/{action}", status_code=202)
async def act(
    instance_id: str, action: Action, gw: GatewayDep, who: CurrentUser, client: ClientDep
) -> InstancePublic:
    """``start``/``resume``, ``pause`` (engine stopped, data kept) or ``restart``. Idempotent."""
    inst = await gw.instances.act(who, instance_id, action, client=client)
    return InstancePublic.of(inst, gw.settings, gw.gpus, internal=who.acts_as_admin)
