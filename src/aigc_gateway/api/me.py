from __future__ import annotations

from fastapi import APIRouter

from aigc_gateway.api.deps import CurrentUser
from aigc_gateway.api.schemas import Me

router = APIRouter(prefix="/api", tags=["me"])


@router.get("/me")
async def get_me(who: CurrentUser) -> Me:
    return Me(id=who.user_id, name=who.name, is_admin=who.is_admin, scopes=sorted(who.scopes))
