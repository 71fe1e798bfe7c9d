"""The gateway's own paths on an instance host (besides the hand-over): the wake page's live
status. Authenticated by the instance cookie, like the engine behind it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse
from starlette.responses import JSONResponse, Response

from aigc_gateway.api.deps import GatewayDep
from aigc_gateway.api.streams import until_revoked, watched
from aigc_gateway.auth.core.principal import Principal, Via
from aigc_gateway.auth.services.access_cache import Allowed
from aigc_gateway.auth.services.instance_access import INSTANCE_COOKIE
from aigc_gateway.domain.hosts import instance_slug
from aigc_gateway.lifecycle.routes import Route
from aigc_gateway.proxy.live import instance_access

router = APIRouter(prefix="/_aigc", tags=["instance host"], include_in_schema=False)


async def _allowed(request: Request, gw: GatewayDep) -> tuple[Route, Principal] | None:
    slug = instance_slug(request.headers.get("host", ""), gw.settings.apps_domain)
    route = gw.controller.routes.get(slug) if slug else None
    if route is None:
        return None
    decision = await gw.instance_access.decide(
        instance_id=route.instance_id,
        owner_id=route.owner_id,
        cookie=request.cookies.get(INSTANCE_COOKIE),
    )
    if not isinstance(decision, Allowed):
        return None
    who = Principal(
        user_id=decision.user_id,
        name=decision.user_name,
        is_admin=decision.is_admin,
        team_ids=decision.team_ids,
        via=Via.INSTANCE_COOKIE,
    )
    return route, who


def _status(route: Route) -> dict[str, Any]:
    return {
        "state": route.state,
        "desired_state": route.desired_state,
        "reason": route.reason,
        "exit_code": route.exit_code,
    }


@router.get("/status")
async def instance_status(request: Request, gw: GatewayDep) -> Response:
    found = await _allowed(request, gw)
    if found is None:
        return JSONResponse({"code": "not_found", "message": "no such instance"}, status_code=404)
    return JSONResponse(_status(found[0]))


@router.get("/events")
async def instance_events(request: Request, gw: GatewayDep) -> Response:
    """Live events of this instance (progress, transitions) for the "starting" page; the stream
    ends when the instance cookie no longer gives access (as the engine's WebSockets do)."""
    generation = gw.access_cache.generation  # read before access is decided
    found = await _allowed(request, gw)
    if found is None:
        return JSONResponse({"code": "not_found", "message": "no such instance"}, status_code=404)
    route, who = found
    allowed = instance_access(
        gw.proxy, route.slug, request.cookies.get(INSTANCE_COOKIE) or "", None
    )

    async def events() -> AsyncIterator[dict[str, str]]:
        yield {"event": "status", "data": json.dumps(_status(route))}
        watching = watched(request, allowed, generation=generation)
        with watching as watch, gw.hub.subscribe(route.instance_id) as queue:
            async for record in until_revoked(queue, watch):
                data = json.dumps(record.public(internal=who.acts_as_admin))
                yield {"id": str(record.id), "event": record.kind, "data": data}

    return EventSourceResponse(events(), ping=15)
