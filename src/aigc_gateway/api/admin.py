"""Administration: users, teams, everyone's instances and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from aigc_gateway.api.deps import ClientDep, CurrentUser, GatewayDep
from aigc_gateway.api.schemas import InstancePublic
from aigc_gateway.auth.services.admin import UserChanges
from aigc_gateway.domain.queries import InstanceFilter
from aigc_gateway.domain.states import InstanceState

router = APIRouter(prefix="/api", tags=["admin"])


class UserPublic(BaseModel):
    id: str
    name: str
    display_name: str
    email: str | None
    is_admin: bool
    disabled: bool
    sign_in: str = Field(description="local or sso")
    teams: list[str]
    max_instances: int | None
    created_at: datetime


class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    password: str | None = Field(default=None, min_length=8, max_length=1024)
    is_admin: bool = False


class UserUpdate(BaseModel):
    disabled: bool | None = None
    is_admin: bool | None = None
    max_instances: int | None = Field(default=None, ge=0, le=1000)


class PasswordReset(BaseModel):
    password: str = Field(min_length=8, max_length=1024)


class TeamCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)


class TeamPublic(BaseModel):
    id: str
    name: str
    members: int


class MemberPublic(BaseModel):
    user_id: str
    name: str
    source: str


class AdminInstancePublic(InstancePublic):
    owner: str = Field(description="the owner's user name")


class AdminInstancePage(BaseModel):
    items: list[AdminInstancePublic]
    page: int
    has_more: bool = Field(description="a next page exists (ask for page + 1)")


def _user(u: Any, teams: list[str]) -> UserPublic:
    return UserPublic(
        id=u.id,
        name=u.name,
        display_name=u.display_name,
        email=u.email,
        is_admin=u.is_admin,
        disabled=u.disabled,
        sign_in="sso" if u.issuer else "local",
        teams=teams,
        max_instances=u.max_instances,
        created_at=u.created_at,
    )


@router.get("/users")
async def list_users(who: CurrentUser, gw: GatewayDep) -> list[UserPublic]:
    return [_user(u, teams) for u, teams in await gw.admin.list_users(who)]


@router.post("/users", status_code=201)
async def create_user(
    body: UserCreate, who: CurrentUser, gw: GatewayDep, client: ClientDep
) -> UserPublic:
    user = await gw.admin.create_user(
        who, name=body.name, password=body.password, is_admin=body.is_admin, client=client
    )
    return _user(user, [])


@router.patch("/users/{user_id}")
async def update_user(
    user_id: str, body: UserUpdate, who: CurrentUser, gw: GatewayDep, client: ClientDep
) -> UserPublic:
    """Disable (signs the user out everywhere at once) or enable, make or unmake admin, set the
    user's instance limit."""
    user = await gw.admin.update_user(
        who,
        user_id,
        UserChanges(
            disabled=body.disabled, is_admin=body.is_admin, max_instances=body.max_instances
        ),
        client,
    )
    return _user(user, [])


@router.post("/users/{user_id}/password", status_code=204)
async def reset_password(
    user_id: str, body: PasswordReset, who: CurrentUser, gw: GatewayDep, client: ClientDep
) -> Response:
    await gw.admin.reset_password(who, user_id, body.password, client)
    return Response(status_code=204)


@router.post("/users/{user_id}/revoke-sessions")
async def revoke_sessions(
    user_id: str, who: CurrentUser, gw: GatewayDep, client: ClientDep
) -> dict[str, int]:
    return {"revoked": await gw.admin.revoke_sessions(who, user_id, client)}


@router.get("/admin/instances")
async def search_instances(
    who: CurrentUser,
    gw: GatewayDep,
    user: Annotated[str, Query(max_length=64, description="an owner's user name")] = "",
    team: Annotated[str, Query(max_length=128, description="owners in this team")] = "",
    template: Annotated[str, Query(max_length=128)] = "",
    state: Annotated[InstanceState | None, Query(description="default: all but deleted")] = None,
    page: Annotated[int, Query(ge=0, le=100_000)] = 0,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> AdminInstancePage:
    """Everyone's instances (administrators), filtered and paged on the server: the same
    search as the admin Instances page, newest first."""
    wanted = InstanceFilter(user, team, template, state.value if state else "")
    found = await gw.instances.search(who, wanted, page=page, page_size=page_size)
    usage = await gw.gpu_usage.by_session() if any(i.gpu_ids for i, _ in found.rows) else {}
    items = [
        AdminInstancePublic(
            **InstancePublic.of(i, gw.settings, gw.gpus, usage, internal=True).model_dump(),
            owner=owner,
        )
        for i, owner in found.rows
    ]
    return AdminInstancePage(items=items, page=found.page, has_more=found.has_more)


class AdminUserPage(BaseModel):
    items: list[UserPublic]
    page: int
    has_more: bool = Field(description="a next page exists (ask for page + 1)")


@router.get("/admin/users")
async def search_users(
    who: CurrentUser,
    gw: GatewayDep,
    q: Annotated[str, Query(max_length=128, description="in the name or display name")] = "",
    page: Annotated[int, Query(ge=0, le=100_000)] = 0,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> AdminUserPage:
    """Users (administrators), searched and paged on the server: the admin Users page's
    search, by name."""
    found, more = await gw.admin.search_users(who, q, page=page, page_size=page_size)
    items = [_user(u, [name for _, name in teams]) for u, teams in found]
    return AdminUserPage(items=items, page=page, has_more=more)


@router.get("/teams")
async def list_teams(who: CurrentUser, gw: GatewayDep) -> list[TeamPublic]:
    return [TeamPublic(id=t.id, name=t.name, members=n) for t, n in await gw.admin.list_teams(who)]


@router.post("/teams", status_code=201)
async def create_team(
    body: TeamCreate, who: CurrentUser, gw: GatewayDep, client: ClientDep
) -> TeamPublic:
    team = await gw.admin.create_team(who, body.name, client)
    return TeamPublic(id=team.id, name=team.name, members=0)


@router.get("/teams/{team_id}/members")
async def team_members(team_id: str, who: CurrentUser, gw: GatewayDep) -> list[MemberPublic]:
    return [
        MemberPublic(user_id=u.id, name=u.name, source=src)
        for u, src in await gw.admin.team_members(who, team_id)
    ]


@router.put("/teams/{team_id}/members/{user_id}", status_code=204)
async def add_member(
    team_id: str, user_id: str, who: CurrentUser, gw: GatewayDep, client: ClientDep
) -> Response:
    await gw.admin.set_member(who, team_id, user_id, True, client)
    return Response(status_code=204)


@router.delete("/teams/{team_id}/members/{user_id}", status_code=204)
async def remove_member(
    team_id: str, user_id: str, who: CurrentUser, gw: GatewayDep, client: ClientDep
) -> Response:
    await gw.admin.set_member(who, team_id, user_id, False, client)
    return Response(status_code=204)


@router.get("/audit")
async def audit_log(
    who: CurrentUser,
    gw: GatewayDep,
    action: Annotated[str | None, Query(description="prefix, e.g. auth. or instance.")] = None,
    actor: str | None = None,
    before: Annotated[int | None, Query(description="page: events older than this id")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Sign-ins (success and failure), sign-outs, token use, instance actions, shares and admin
    actions: who, what, when, from where. Newest first."""
    return await gw.accounts.list_audit(
        who, action=action, actor=actor, before_id=before, limit=limit
    )
