from __future__ import annotations

from fastapi import APIRouter

from aigc_gateway.api.deps import CurrentUser, GatewayDep
from aigc_gateway.api.schemas import ProblemPublic, TemplateList, TemplatePublic
from aigc_gateway.auth.core.principal import require_admin
from aigc_gateway.errors import NotFound

router = APIRouter(prefix="/api/templates", tags=["templates"])


def _listing(gw: GatewayDep, with_problems: bool) -> TemplateList:
    catalog = gw.registry.catalog
    return TemplateList(
        templates=[TemplatePublic.of(t) for t in catalog.templates.values() if t.template.enabled],
        problems=[ProblemPublic.of(p) for p in catalog.problems] if with_problems else [],
    )


@router.get("")
async def list_templates(gw: GatewayDep, who: CurrentUser) -> TemplateList:
    """Templates on offer; admins also see the files that failed validation and why."""
    return _listing(gw, with_problems=who.acts_as_admin)


@router.get("/{template_id}")
async def get_template(template_id: str, gw: GatewayDep, who: CurrentUser) -> TemplatePublic:
    loaded = gw.registry.get(template_id)
    if loaded is None or not loaded.template.enabled:
        raise NotFound(f"unknown template {template_id!r}", code="unknown_template")
    return TemplatePublic.of(loaded)


@router.post("/reload")
async def reload_templates(gw: GatewayDep, who: CurrentUser) -> TemplateList:
    """Re-read the templates folder now (it is also re-read on change and on SIGHUP)."""
    require_admin(who)
    await gw.registry.reload()
    return _listing(gw, with_problems=True)
