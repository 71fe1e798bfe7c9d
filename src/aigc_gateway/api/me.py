"""The signed-in user: who they are, their password, their sessions, their API tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from aigc_gateway.api.deps import ClientDep, CurrentUser, GatewayDep
from aigc_gateway.auth.core.principal import Scope

router = APIRouter(prefix="/api", tags=["me"])


class Me(BaseModel):
    id: str
    name: str
    is_admin: bool
    scopes: list[str]
    teams: list[str]
    via: str
    csrf_token: str | None = Field(
        description="send as X-CSRF-Token on cookie-authenticated writes"
    )


class PasswordChange(BaseModel):
    current_password: str
    new_password: str = Field(min_length=8, max_length=1024)


class SessionPublic(BaseModel):
    id: str
    method: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    ip: str | None
    user_agent: str | None
    current: bool


class TokenCreate(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    scopes: list[Scope] = Field(
        default_factory=lambda: [Scope.READ, Scope.MANAGE],
        min_length=1,
        description="read, manage, admin; at most those of the credential creating it",
    )
    expires_in_days: int | None = Field(
        default=90, ge=1, le=3650, description="null: never expires"
    )


class TokenPublic(BaseModel):
    id: str
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="shown only this once")


@router.get("/me")
async def get_me(who: CurrentUser, gw: GatewayDep) -> Me:
    teams = [t.name for t, _ in await gw.admin.list_teams(who) if t.id in who.team_ids]
    return Me(
        id=who.user_id,
        name=who.name,
        is_admin=who.is_admin,
        scopes=sorted(who.scopes),
        teams=sorted(teams),
        via=who.via.value,
        csrf_token=who.csrf_token,
    )


@router.post("/me/password", status_code=204)
async def change_password(
    body: PasswordChange, who: CurrentUser, gw: GatewayDep, client: ClientDep
) -> Response:
    await gw.admin.change_own_password(who, body.current_password, body.new_password, client)
    return Response(status_code=204)


@router.get("/me/sessions")
async def my_sessions(who: CurrentUser, gw: GatewayDep) -> list[SessionPublic]:
    return [
        SessionPublic(
            id=s.id,
            method=s.auth_method,
            created_at=s.created_at,
            last_seen_at=s.last_seen_at,
            expires_at=s.expires_at,
            ip=s.ip,
            user_agent=s.user_agent,
            current=s.id == who.session_id,
        )
        for s in await gw.accounts.list_sessions(who)
    ]


@router.delete("/me/sessions/{session_id}", status_code=204)
async def end_session(
    session_id: str, who: CurrentUser, gw: GatewayDep, client: ClientDep
) -> Response:
    await gw.accounts.revoke_own_session(who, session_id, client)
    return Response(status_code=204)


@router.get("/tokens", tags=["tokens"])
async def list_tokens(who: CurrentUser, gw: GatewayDep) -> list[TokenPublic]:
    return [
        TokenPublic(
            id=t.id,
            name=t.name,
            scopes=sorted(t.scopes.split(",")) if t.scopes else ["admin", "manage", "read"],
            created_at=t.created_at,
            expires_at=t.expires_at,
            last_used_at=t.last_used_at,
        )
        for t in await gw.accounts.list_tokens(who)
    ]


@router.post("/tokens", status_code=201, tags=["tokens"])
async def create_token(
    body: TokenCreate, who: CurrentUser, gw: GatewayDep, client: ClientDep
) -> TokenCreated:
    """Create a personal API token. The secret is in the answer and never shown again."""
    token, secret = await gw.accounts.create_token(
        who, name=body.name, scopes=body.scopes, expires_in_days=body.expires_in_days, client=client
    )
    return TokenCreated(
        id=token.id,
        name=token.name,
        scopes=sorted(body.scopes),
        created_at=token.created_at,
        expires_at=token.expires_at,
        last_used_at=None,
        token=secret,
    )


@router.delete("/tokens/{token_id}", status_code=204, tags=["tokens"])
async def revoke_token(
    token_id: str, who: CurrentUser, gw: GatewayDep, client: ClientDep
) -> Response:
    """Revoke a token; it stops working at once."""
    await gw.accounts.revoke_token(who, token_id, client)
    return Response(status_code=204)
