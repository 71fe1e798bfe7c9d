"""The dashboard's admin pages: instances, users, audit log, templates, health, GPUs, costs.

Rendered like the user pages (``dashboard``); non-admins get a 403 page. The GPU page's buttons
are plain forms (with the CSRF token) that redirect back with a notice.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import RedirectResponse, Response

from aigc_gateway import __version__
from aigc_gateway.accounting.core.reports import Report
from aigc_gateway.accounting.services.reports import Dimension
from aigc_gateway.api.deps import ClientDep, GatewayDep, MaybeUser
from aigc_gateway.api.gpus import gpu_inventory, set_cordon
from aigc_gateway.api.schemas import instance_actions
from aigc_gateway.auth.core.actor import Client
from aigc_gateway.auth.core.principal import Principal
from aigc_gateway.dashboard.routes.user import (
    PAGE_SIZE,
    REPORT,
    error_page,
    gate,
    pager,
    render,
    template_card,
    url_with,
)
from aigc_gateway.dashboard.ui import costs
from aigc_gateway.dashboard.ui import views as v
from aigc_gateway.dashboard.ui.i18n import Translator
from aigc_gateway.dashboard.ui.pages import translator
from aigc_gateway.doctor import gpu_summary
from aigc_gateway.domain.queries import InstanceFilter
from aigc_gateway.errors import GatewayError
from aigc_gateway.gateway import Gateway
from aigc_gateway.gpu import Request as GpuRequest

router = APIRouter(include_in_schema=False, tags=["dashboard"])

AUDIT_PAGE = 100


@router.get("/admin/instances")
async def admin_instances(
    request: Request,
    gw: GatewayDep,
    who: MaybeUser,
    user: str = "",
    team: str = "",
    template: str = "",
    state: str = "",
    page_no: Annotated[int, Query(alias="page", ge=0, le=100_000)] = 0,
) -> Response:
    """Everyone's instances, filtered on the server; batch actions through the API."""
    viewer = gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    found = await gw.instances.search(
        who, InstanceFilter(user, team, template, state), page=page_no, page_size=PAGE_SIZE
    )
    teams = sorted(t.name for t, _ in await gw.admin.list_teams(who))
    rows = [
        v.AdminInstanceRow(
            id=i.id,
            name=i.name,
            owner=owner,
            template_id=i.template_id,
            state=i.state,
            desired_state=i.desired_state,
            reason=i.reason,
            url=gw.settings.instance_url(i.slug),
            created_at=i.created_at,
            actions=instance_actions(i),
        )
        for i, owner in found.rows
    ]
    filters = {"user": user, "team": team, "template": template, "state": state}
    return render(
        viewer,
        "admin_instances.html",
        "admin-instances",
        "admin.instances.title",
        rows=rows,
        filters=filters,
        teams=teams,
        template_ids=sorted(gw.registry.catalog.templates),
        states=v.STATES,
        **pager("/admin/instances", filters, page_no, found.has_more),
    )


@router.get("/admin/users")
async def admin_users(
    request: Request,
    gw: GatewayDep,
    who: MaybeUser,
    q: Annotated[str, Query(max_length=128)] = "",
    page_no: Annotated[int, Query(alias="page", ge=0, le=100_000)] = 0,
) -> Response:
    """Users (disable, admin role, teams) and teams."""
    viewer = gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    found, more = await gw.admin.search_users(who, q, page=page_no, page_size=PAGE_SIZE)
    rows = [
        v.UserRow(
            id=u.id,
            name=u.name,
            display_name=u.display_name,
            is_admin=u.is_admin,
            disabled=u.disabled,
            sign_in="sso" if u.issuer else "local",
            teams=teams,
            created_at=u.created_at,
        )
        for u, teams in found
    ]
    teams = [{"id": t.id, "name": t.name, "members": n} for t, n in await gw.admin.list_teams(who)]
    return render(
        viewer,
        "admin_users.html",
        "admin-users",
        "admin.users.title",
        users=rows,
        teams=teams,
        q=q,
        **pager("/admin/users", {"q": q}, page_no, more),
    )


@router.get("/admin/audit")
async def admin_audit(
    request: Request,
    gw: GatewayDep,
    who: MaybeUser,
    action: Annotated[str, Query(max_length=48)] = "",
    actor: Annotated[str, Query(max_length=128)] = "",
    before: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """The audit log, newest first, a page at a time (``before``: older than this id)."""
    viewer = gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    events = await gw.accounts.list_audit(
        who, action=action or None, actor=actor or None, before_id=before, limit=AUDIT_PAGE + 1
    )
    filters = {"action": action, "actor": actor}
    more = len(events) > AUDIT_PAGE
    events = events[:AUDIT_PAGE]
    return render(
        viewer,
        "admin_audit.html",
        "admin-audit",
        "admin.audit.title",
        events=events,
        filters=filters,
        prev_url=url_with("/admin/audit", filters) if before else None,  # back to the newest
        next_url=url_with("/admin/audit", {**filters, "before": events[-1]["id"]})
        if more
        else None,
    )


@router.get("/admin/templates")
async def admin_templates(request: Request, gw: GatewayDep, who: MaybeUser) -> Response:
    """Loaded templates and the files that failed validation, with file and field."""
    viewer = gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    catalog = gw.registry.catalog
    cards = [template_card(loaded, viewer.lang) for loaded in catalog.templates.values()]
    return render(
        viewer,
        "admin_templates.html",
        "admin-templates",
        "admin.templates.title",
        cards=cards,
        problems=list(catalog.problems),
    )


@router.get("/admin/health")
async def admin_health(request: Request, gw: GatewayDep, who: MaybeUser) -> Response:
    """Runtime, store, controller, templates, version and GPUs."""
    viewer = gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    t = translator(viewer.lang)
    problems = len(gw.registry.catalog.problems)
    loaded = len(gw.registry.catalog.templates)
    runtime_dir = gw.settings.runtime_dir
    store_ok, (gpu_ok, gpu_detail) = await asyncio.gather(
        gw.db.ping(), asyncio.to_thread(gpu_summary)
    )
    checks = [
        v.HealthCheck(
            "admin.health.runtime", runtime_dir.is_dir(), f"{gw.runtime.name}: {runtime_dir}"
        ),
        v.HealthCheck("admin.health.store", store_ok, gw.db.display_url),
        v.HealthCheck(
            "admin.health.controller",
            gw.controller.alive,
            t("admin.health.resyncs", n=gw.controller.resyncs),
        ),
        v.HealthCheck(
            "admin.health.templates",
            problems == 0,
            t("admin.health.template_count", n=loaded, problems=problems),
        ),
        v.HealthCheck("admin.health.version", True, __version__),
        isolation_check(gw, t),
    ]
    return render(
        viewer,
        "admin_health.html",
        "admin-health",
        "admin.health.title",
        checks=checks,
        gpu_ok=gpu_ok,
        gpu_detail=gpu_detail,
    )


def isolation_check(gw: Gateway, t: Translator) -> v.HealthCheck:
    """Whether engines are sandboxed here; when not, the warning every surface shows."""
    iso = gw.isolation
    if iso.sandboxed:
        return v.HealthCheck(
            "admin.health.isolation", True, t("admin.health.isolated", detail=iso.detail)
        )
    why = iso.warning or iso.detail
    return v.HealthCheck("admin.health.isolation", False, t("admin.health.not_isolated", why=why))


CordonMode = Literal["cordon", "drain"] | None
CORDON_DONE = {
    "cordon": "admin.gpus.done_cordon",
    "drain": "admin.gpus.done_drain",
    "uncordon": "admin.gpus.done_uncordon",
}
"""The notice shown after each button, by the ``done`` query parameter."""


@router.get("/admin/gpus")
async def admin_gpus(
    request: Request,
    gw: GatewayDep,
    who: MaybeUser,
    done: str = "",
    gpu: Annotated[str, Query(max_length=256)] = "",
    moved: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> Response:
    """Each card with its holders, cordon buttons, and the wait queue."""
    viewer = gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    t = translator(viewer.lang)
    assert who is not None
    inventory = await gpu_inventory(gw, who, describe=lambda r: _wants(t, r))
    notice = ""
    if done in CORDON_DONE and gw.gpus.gpu(gpu) is not None:
        notice = t(CORDON_DONE[done], gpu=gpu, n=moved)
    return render(
        viewer,
        "admin_gpus.html",
        "admin-gpus",
        "admin.gpus.title",
        inventory=inventory,
        notice=notice,
    )


def _wants(t: Translator, r: GpuRequest) -> str:
    """A queued request in the page's language."""
    if r.is_share:
        assert r.memory_gib is not None
        wants = t("admin.gpus.wants_share", gib=v.num(r.memory_gib))
    else:
        wants = t("admin.gpus.wants_whole", n=r.count)
    return t("admin.gpus.wants_types", wants=wants, types=", ".join(r.types)) if r.types else wants


async def _cordon_form(
    request: Request,
    gw: Gateway,
    who: Principal | None,
    client: Client,
    gpu_id: str,
    mode: CordonMode,
) -> Response:
    """A GPU page button: change the card, then back to the page with a notice (303)."""
    if who is None:
        return RedirectResponse("/auth/login?next=%2Fadmin%2Fgpus", status_code=303)
    viewer = gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    try:
        result = await set_cordon(gw, who, client, gpu_id, mode)
    except GatewayError as exc:
        key = "error.not_found" if exc.status == 404 else "error.bad_request"
        return error_page(viewer, exc.status, key, key + "_text", exc.message)
    done = url_with(
        "/admin/gpus", {"done": mode or "uncordon", "gpu": gpu_id, "moved": len(result.moved)}
    )
    return RedirectResponse(done, status_code=303)


@router.post("/admin/gpus/{gpu_id}/cordon")
async def admin_gpu_cordon(
    request: Request, gpu_id: str, gw: GatewayDep, who: MaybeUser, client: ClientDep
) -> Response:
    """Take no new engines on this card (the form posts the CSRF token)."""
    return await _cordon_form(request, gw, who, client, gpu_id, "cordon")


@router.post("/admin/gpus/{gpu_id}/drain")
async def admin_gpu_drain(
    request: Request, gpu_id: str, gw: GatewayDep, who: MaybeUser, client: ClientDep
) -> Response:
    """Cordon, and restart the engines on it elsewhere."""
    return await _cordon_form(request, gw, who, client, gpu_id, "drain")


@router.post("/admin/gpus/{gpu_id}/uncordon")
async def admin_gpu_uncordon(
    request: Request, gpu_id: str, gw: GatewayDep, who: MaybeUser, client: ClientDep
) -> Response:
    """Put the card back into placement."""
    return await _cordon_form(request, gw, who, client, gpu_id, None)


COST_GROUPS: tuple[tuple[str, str, str], ...] = (
    ("team", "none", "admin.costs.csv_team"),
    ("user", "none", "admin.costs.csv_user"),
    ("instance", "none", "admin.costs.csv_instance"),
    ("template", "none", "admin.costs.csv_template"),
    ("gpu_type", "none", "admin.costs.csv_gpu_type"),
    ("pool", "none", "admin.costs.csv_pool"),
    ("resource", "none", "admin.costs.csv_resource"),
    ("team", "day", "admin.costs.csv_team_day"),
)
"""The CSV downloads of the costs page: (group by, period, catalog key of the link)."""


@router.get("/admin/costs")
async def admin_costs(
    request: Request,
    gw: GatewayDep,
    who: MaybeUser,
    month: Annotated[str, Query(max_length=16)] = "",
) -> Response:
    """A month's costs (``month=YYYY-MM``, default this one): totals, charts by team, GPU type
    and day, a table by user, the idle-waste ranking, CSV downloads and the budgets."""
    viewer = gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    current = f"{gw.controller.clock():%Y-%m}"
    chosen = costs.parse_month(month) if month else current
    if chosen is None:
        return error_page(viewer, 400, "error.bad_request", "error.bad_request_text", month)
    first, last = costs.month_bounds(chosen)
    by_team, by_gpu, by_user, by_instance, daily = await _month_reports(gw, who, first, last)
    idle_instances = costs.idle_ranking(by_instance.rows)
    charts = costs.month_charts(
        translator(viewer.lang),
        teams=by_team.rows,
        gpu_types=by_gpu.rows,
        daily=daily.rows,
        days=costs.days(first, last),
        currency=by_user.currency,
    )
    return render(
        viewer,
        "admin_costs.html",
        "admin-costs",
        "admin.costs.title",
        month=chosen,
        prev_month=costs.shift_month(chosen, -1),
        next_month=costs.shift_month(chosen, 1) if chosen < current else None,
        total=by_user.total,
        currency=by_user.currency,
        users=by_user.rows,
        charts=charts,
        idle_instances=idle_instances,
        idle_users=costs.idle_ranking(by_user.rows),
        owners=await gw.instances.owner_names(who, [r.key for r in idle_instances if r.key]),
        budgets=[costs.budget_view(s) for s in await gw.budgets.all()],
        downloads=_downloads(first, last),
    )


async def _month_reports(gw: Gateway, who: Principal, first: date, last: date) -> list[Report]:
    """Everyone's usage from ``first`` to ``last``: by team, GPU type, user, instance, and by
    resource per day."""
    groups: list[tuple[Dimension, Literal["day", "none"]]] = [
        ("team", "none"),
        ("gpu_type", "none"),
        ("user", "none"),
        ("instance", "none"),
        ("resource", "day"),
    ]
    span = (first.isoformat(), last.isoformat())
    return [await gw.reports.build(who, by, period, *span, "all") for by, period in groups]


def _downloads(first: date, last: date) -> list[tuple[str, str]]:
    """(catalog key, CSV address) of each grouping of everyone's usage in these days."""
    csv = {"since": first.isoformat(), "until": last.isoformat(), "scope": "all", "format": "csv"}
    return [
        (key, url_with(REPORT, {"by": by, "period": period, **csv}))
        for by, period, key in COST_GROUPS
    ]


# -- language and static files ------------------------------------------------------------------
