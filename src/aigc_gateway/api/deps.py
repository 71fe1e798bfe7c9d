"""Dependencies: the gateway container and the signed-in principal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request

from aigc_gateway.auth.principal import Principal, parse_scopes
from aigc_gateway.errors import Unauthorized
from aigc_gateway.gateway import Gateway
from aigc_gateway.store.users import user_for_token


def get_gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def get_principal(request: Request) -> Principal:
    gw = get_gateway(request)
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret:
        raise Unauthorized("sign in: send `Authorization: Bearer <api token>`")
    async with gw.db.read() as session:
        found = await user_for_token(session, secret.strip(), datetime.now(UTC))
    if found is None:
        raise Unauthorized(
            "this API token is not valid (unknown, expired, revoked or disabled user)"
        )
    user, scopes = found
    return Principal(
        user_id=user.id, name=user.name, is_admin=user.is_admin, scopes=parse_scopes(scopes)
    )


CurrentUser = Annotated[Principal, Depends(get_principal)]
