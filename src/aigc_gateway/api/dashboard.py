"""The dashboard: server-rendered pages for users and admins, the language switch, static files.

Pages read the store and services here and hand plain data (``web.views``) to the templates;
most changes are made by the pages' script through the JSON API. The GPU page's buttons are plain
forms (with the CSRF token) that redirect back with a notice. Each list is one query.
Not signed in: 303 to the sign-in page; admin pages answer non-admins with a 403 page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request
from sqlalchemy import func, or_, select
from starlette.responses import RedirectResponse, Response

from aigc_gateway import __version__
from aigc_gateway.accounts.service import Client
from aigc_gateway.api.deps import ClientDep, GatewayDep, MaybeUser
from aigc_gateway.api.files import file_service
from aigc_gateway.api.gpus import gpu_inventory, set_cordon
from aigc_gateway.api.schemas import InstancePublic
from aigc_gateway.api.usage import Report, build_report
from aigc_gateway.auth.principal import Principal
from aigc_gateway.doctor import gpu_summary
from aigc_gateway.domain.hosts import safe_next
from aigc_gateway.errors import GatewayError
from aigc_gateway.gateway import Gateway
from aigc_gateway.scheduler import Request as GpuRequest
from aigc_gateway.store.tables import Event, Instance, InstanceShare, Team, TeamMember, User
from aigc_gateway.store.usage import Dimension
from aigc_gateway.templates.loader import LoadedTemplate
from aigc_gateway.web import costs
from aigc_gateway.web import views as v
from aigc_gateway.web.i18n import LANG_COOKIE, Translator, negotiate, normalize
from aigc_gateway.web.pages import page, static_response, translator

router = APIRouter(include_in_schema=False, tags=["dashboard"])

PAGE_SIZE = 200
AUDIT_PAGE = 100
RECENT_DAYS = 30
REPORT = "/api/usage/report"
LANG_MAX_AGE = 365 * 24 * 3600


# -- helpers ------------------------------------------------------------------------------------


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _viewer(request: Request, who: Principal) -> v.Viewer:
    lang = negotiate(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))
    return v.Viewer(
        name=who.name,
        is_admin=who.acts_as_admin,
        csrf_token=who.csrf_token,
        lang=lang,
        path=_here(request),
    )


def _gate(request: Request, who: Principal | None, *, admin: bool = False) -> v.Viewer | Response:
    """The viewer, or the answer for who may not see the page."""
    if who is None:
        target = quote(_here(request), safe="")
        return RedirectResponse(f"/auth/login?next={target}", status_code=303)
    viewer = _viewer(request, who)
    if admin and not who.acts_as_admin:
        return _error(viewer, 403, "error.forbidden_title", "error.forbidden_text")
    return viewer


def _render(
    viewer: v.Viewer, name: str, section: str, title_key: str, status: int = 200, **data: Any
) -> Response:
    return page(
        name,
        status,
        lang=viewer.lang,
        viewer=viewer,
        section=section,
        page_id=section,
        title=translator(viewer.lang)(title_key),
        version=__version__,
        **data,
    )


def _error(
    viewer: v.Viewer, status: int, title_key: str, text_key: str, detail: str = ""
) -> Response:
    t = translator(viewer.lang)
    text = t(text_key) + (f" ({detail})" if detail else "")
    return _render(viewer, "error.html", "error", title_key, status, text=text)


def _url(base: str, params: dict[str, Any]) -> str:
    """``base`` with the non-empty ``params`` as its query."""
    query = {k: val for k, val in params.items() if val}
    return base + (f"?{urlencode(query)}" if query else "")


def _pager(base: str, params: dict[str, Any], page_no: int, more: bool) -> dict[str, Any]:
    return {
        "prev_url": _url(base, {**params, "page": page_no - 1}) if page_no > 0 else None,
        "next_url": _url(base, {**params, "page": page_no + 1}) if more else None,
    }


def _template_card(loaded: LoadedTemplate, lang: str) -> v.TemplateCard:
    t = loaded.template
    return v.TemplateCard(
        id=t.id,
        name=t.display.name.get(lang),
        description=t.display.description.get(lang) if t.display.description else "",
        icon=t.display.icon,
        version=t.version,
        family=t.family,
        installed=loaded.installed,
        install_problem=loaded.install_problem,
        gpu_count=t.resources.gpu.count,
        gpu_memory_gib=t.resources.gpu.memory_gib,
        cpu=t.resources.cpu,
        memory_gib=t.resources.memory_gib,
        quota_gib=t.storage.quota_gib,
        source=loaded.source,
    )


async def _cards(
    gw: Gateway, who: Principal, instances: Sequence[Instance], lang: str
) -> list[v.InstanceCard]:
    """Instance cards: the newest event ids, the owners' names and the shares, one query each."""
    ids = [i.id for i in instances]
    owned = [i.id for i in instances if i.owner_id == who.user_id]
    owners = {i.owner_id for i in instances} - {who.user_id}
    shares: dict[str, list[v.ShareView]] = {}
    async with gw.db.read() as session:
        newest = await session.execute(
            select(Event.instance_id, func.max(Event.id))
            .where(Event.instance_id.in_(ids))
            .group_by(Event.instance_id)
        )
        after: dict[str, int] = {str(i): int(n) for i, n in newest.all()}
        names = await session.execute(select(User.id, User.name).where(User.id.in_(owners)))
        owner_names: dict[str, str] = {str(i): str(n) for i, n in names.all()}
        rows = await session.execute(
            select(InstanceShare.id, InstanceShare.instance_id, User.name, Team.name)
            .outerjoin(User, User.id == InstanceShare.user_id)
            .outerjoin(Team, Team.id == InstanceShare.team_id)
            .where(InstanceShare.instance_id.in_(owned))
            .order_by(InstanceShare.created_at)
        )
        for share_id, instance_id, user_name, team_name in rows.all():
            kind, target = ("user", user_name) if user_name else ("team", team_name)
            shares.setdefault(instance_id, []).append(v.ShareView(share_id, str(target), kind))
    usage = await gw.gpu_usage.by_session() if any(i.gpu_ids for i in instances) else {}
    return [
        replace(_card(gw, who, i, lang, after, owner_names, shares), **_gpu_parts(gw, i, usage))
        for i in instances
    ]


def _gpu_parts(gw: Gateway, inst: Instance, usage: dict[int, int]) -> dict[str, Any]:
    """The card's GPUs and queue place, as the API reports them."""
    public = InstancePublic.of(inst, gw.settings, gw.gpus, usage)
    gpu, queue = public.gpu, public.queue
    held = None
    if gpu is not None:
        held = v.CardGpu(
            count=len(gpu.gpu_ids),
            types=gpu.types or gpu.gpu_ids,
            share_gib=gpu.share_gib,
            placement=gpu.placement,
            memory_used_mib=gpu.memory_used_mib,
        )
    place = None if queue is None else v.CardQueue(queue.position, queue.length, queue.estimate_s)
    return {"gpu": held, "queue": place}


def _card(
    gw: Gateway,
    who: Principal,
    inst: Instance,
    lang: str,
    after: dict[str, int],
    owner_names: dict[str, str],
    shares: dict[str, list[v.ShareView]],
) -> v.InstanceCard:
    loaded = gw.registry.get(inst.template_id)
    display = loaded.template.display if loaded is not None else None
    return v.InstanceCard(
        id=inst.id,
        name=inst.name,
        state=inst.state,
        desired_state=inst.desired_state,
        reason=inst.reason,
        exit_code=inst.exit_code,
        url=gw.settings.instance_url(inst.slug),
        template_id=inst.template_id,
        template_name=display.name.get(lang) if display else inst.template_id,
        icon=display.icon if display else "🧩",
        family=inst.family,
        owner_name=owner_names.get(inst.owner_id, who.name),
        is_owner=inst.owner_id == who.user_id,
        after=after.get(inst.id, 0),
        created_at=inst.created_at,
        shares=shares.get(inst.id, []),
    )


# -- pages for everyone signed in ---------------------------------------------------------------


@router.get("/")
async def home(request: Request, gw: GatewayDep, who: MaybeUser) -> Response:
    """My instances, with live state."""
    viewer = _gate(request, who)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    instances = await gw.instances.list_visible(who)
    cards = await _cards(gw, who, instances, viewer.lang)
    budgets = [costs.budget_view(s) for s in await gw.budgets.for_user(who.user_id)]
    over = [b for b in budgets if b.level != "ok"]
    return _render(viewer, "home.html", "home", "home.title", cards=cards, over_budget=over)


@router.get("/catalog")
async def catalog(request: Request, gw: GatewayDep, who: MaybeUser) -> Response:
    """The engines on offer."""
    viewer = _gate(request, who)
    if isinstance(viewer, Response):
        return viewer
    cards = [
        _template_card(loaded, viewer.lang)
        for loaded in gw.registry.catalog.templates.values()
        if loaded.template.enabled
    ]
    return _render(viewer, "catalog.html", "catalog", "catalog.title", cards=cards)


@router.get("/files")
async def files_index(request: Request, gw: GatewayDep, who: MaybeUser) -> Response:
    """My data folders, one per engine family, with their quotas."""
    viewer = _gate(request, who)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    families = [
        v.FamilyRow(u.family, u.used_bytes, u.quota_bytes)
        for u in await file_service(gw).usage(who)
    ]
    return _render(viewer, "files_index.html", "files", "files.title", families=families)


@router.get("/files/{family}")
async def files_folder(
    request: Request,
    family: str,
    gw: GatewayDep,
    who: MaybeUser,
    path: Annotated[str, Query(max_length=4096)] = "",
) -> Response:
    """One folder of a family's data: browse, preview, download, upload, delete."""
    viewer = _gate(request, who)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    try:
        found = await file_service(gw).listing(who, family, path)
    except GatewayError as exc:
        key = "error.not_found" if exc.status == 404 else "error.bad_request"
        return _error(viewer, exc.status, key, key + "_text", exc.message)
    entries = [
        v.FileRow(e.name, e.path, e.is_dir, e.size, e.modified, e.media_type is not None)
        for e in found.entries
    ]
    return _render(
        viewer,
        "files.html",
        "files",
        "files.title",
        family=family,
        path=found.path,
        parent="/".join(found.path.split("/")[:-1]),
        entries=entries,
        used=found.usage.used_bytes,
        quota=found.usage.quota_bytes,
    )


@router.get("/usage")
async def my_usage(
    request: Request,
    gw: GatewayDep,
    who: MaybeUser,
    per: Annotated[Literal["day", "week"], Query()] = "day",
) -> Response:
    """My hours (active and idle), GPU-hours and cost: this month, the last 30 days by instance
    and by day or week, cost per day as a chart, CSV downloads, and my budgets."""
    viewer = _gate(request, who)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    today = gw.controller.clock().date()  # the ledger's clock
    since = today - timedelta(days=RECENT_DAYS - 1)
    span = (since.isoformat(), today.isoformat())
    month = await build_report(gw, who, "user", "none", f"{today:%Y-%m}-01", span[1], "mine")
    by_instance = await build_report(gw, who, "instance", "none", *span, "mine")
    daily = await build_report(gw, who, "user", "day", *span, "mine")
    table = daily if per == "day" else await build_report(gw, who, "user", "week", *span, "mine")
    budgets = [costs.budget_view(s) for s in await gw.budgets.for_user(who.user_id)]
    title = translator(viewer.lang)("usage.chart_daily")
    chart = costs.daily_chart(daily.rows, costs.days(since, today), daily.currency, title)
    csv = {"since": span[0], "until": span[1], "scope": "mine", "format": "csv"}
    return _render(
        viewer,
        "usage.html",
        "usage",
        "usage.title",
        month=month,
        recent=by_instance,
        table=table,
        per=per,
        chart=chart,
        budgets=budgets,
        csv_instance=_url(REPORT, {"by": "instance", "period": "none", **csv}),
        csv_periods=_url(REPORT, {"by": "instance", "period": per, **csv}),
    )


@router.get("/account")
async def account(request: Request, gw: GatewayDep, who: MaybeUser) -> Response:
    """API tokens, sessions and the password."""
    viewer = _gate(request, who)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    tokens = [
        {
            "id": tok.id,
            "name": tok.name,
            "scopes": sorted(tok.scopes.split(",")) if tok.scopes else ["admin", "manage", "read"],
            "created_at": tok.created_at,
            "expires_at": tok.expires_at,
            "last_used_at": tok.last_used_at,
        }
        for tok in await gw.accounts.list_tokens(who)
    ]
    sessions = [
        {
            "id": s.id,
            "method": s.auth_method,
            "ip": s.ip,
            "user_agent": s.user_agent,
            "created_at": s.created_at,
            "last_seen_at": s.last_seen_at,
            "current": s.id == who.session_id,
        }
        for s in await gw.accounts.list_sessions(who)
    ]
    async with gw.db.read() as session:
        has_password = await session.scalar(
            select(User.password_hash.is_not(None)).where(User.id == who.user_id)
        )
    viewer = replace(viewer, local_account=bool(has_password))
    return _render(
        viewer, "account.html", "account", "account.title", tokens=tokens, sessions=sessions
    )


# -- admin pages --------------------------------------------------------------------------------


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
    viewer = _gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    stmt = select(Instance, User.name).join(User, User.id == Instance.owner_id)
    stmt = stmt.where(Instance.state == state) if state else stmt.where(Instance.state != "deleted")
    if user:
        stmt = stmt.where(User.name == user)
    if template:
        stmt = stmt.where(Instance.template_id == template)
    if team:
        members = select(TeamMember.user_id).join(Team, Team.id == TeamMember.team_id)
        stmt = stmt.where(Instance.owner_id.in_(members.where(Team.name == team)))
    stmt = stmt.order_by(Instance.created_at.desc(), Instance.id)
    async with gw.db.read() as session:
        found = (await session.execute(stmt.offset(page_no * PAGE_SIZE).limit(PAGE_SIZE + 1))).all()
        teams = (await session.scalars(select(Team.name).order_by(Team.name))).all()
    rows = [
        v.AdminInstanceRow(
            id=i.id,
            name=i.name,
            owner=str(owner),
            template_id=i.template_id,
            state=i.state,
            desired_state=i.desired_state,
            reason=i.reason,
            url=gw.settings.instance_url(i.slug),
            created_at=i.created_at,
        )
        for i, owner in found[:PAGE_SIZE]
    ]
    filters = {"user": user, "team": team, "template": template, "state": state}
    return _render(
        viewer,
        "admin_instances.html",
        "admin-instances",
        "admin.instances.title",
        rows=rows,
        filters=filters,
        teams=teams,
        template_ids=sorted(gw.registry.catalog.templates),
        states=v.STATES,
        **_pager("/admin/instances", filters, page_no, len(found) > PAGE_SIZE),
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
    viewer = _gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    stmt = select(User).order_by(User.name)
    if q:
        stmt = stmt.where(
            or_(
                User.name.contains(q, autoescape=True),
                User.display_name.contains(q, autoescape=True),
            )
        )
    async with gw.db.read() as session:
        users = (await session.scalars(stmt.offset(page_no * PAGE_SIZE).limit(PAGE_SIZE + 1))).all()
        shown = users[:PAGE_SIZE]
        memberships = await session.execute(
            select(TeamMember.user_id, Team.id, Team.name)
            .join(Team, Team.id == TeamMember.team_id)
            .where(TeamMember.user_id.in_([u.id for u in shown]))
            .order_by(Team.name)
        )
        teams_of: dict[str, list[tuple[str, str]]] = {}
        for user_id, team_id, team_name in memberships.all():
            teams_of.setdefault(user_id, []).append((team_id, team_name))
    rows = [
        v.UserRow(
            id=u.id,
            name=u.name,
            display_name=u.display_name,
            is_admin=u.is_admin,
            disabled=u.disabled,
            sign_in="sso" if u.issuer else "local",
            teams=teams_of.get(u.id, []),
            created_at=u.created_at,
        )
        for u in shown
    ]
    teams = [{"id": t.id, "name": t.name, "members": n} for t, n in await gw.admin.list_teams(who)]
    return _render(
        viewer,
        "admin_users.html",
        "admin-users",
        "admin.users.title",
        users=rows,
        teams=teams,
        q=q,
        **_pager("/admin/users", {"q": q}, page_no, len(users) > PAGE_SIZE),
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
    viewer = _gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    events = await gw.accounts.list_audit(
        who, action=action or None, actor=actor or None, before_id=before, limit=AUDIT_PAGE + 1
    )
    filters = {"action": action, "actor": actor}
    more = len(events) > AUDIT_PAGE
    events = events[:AUDIT_PAGE]
    return _render(
        viewer,
        "admin_audit.html",
        "admin-audit",
        "admin.audit.title",
        events=events,
        filters=filters,
        prev_url=_url("/admin/audit", filters) if before else None,  # back to the newest
        next_url=_url("/admin/audit", {**filters, "before": events[-1]["id"]}) if more else None,
    )


@router.get("/admin/templates")
async def admin_templates(request: Request, gw: GatewayDep, who: MaybeUser) -> Response:
    """Loaded templates and the files that failed validation, with file and field."""
    viewer = _gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    catalog = gw.registry.catalog
    cards = [_template_card(loaded, viewer.lang) for loaded in catalog.templates.values()]
    return _render(
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
    viewer = _gate(request, who, admin=True)
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
        v.HealthCheck(
            "admin.health.store", store_ok, gw.db.engine.url.render_as_string(hide_password=True)
        ),
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
    ]
    return _render(
        viewer,
        "admin_health.html",
        "admin-health",
        "admin.health.title",
        checks=checks,
        gpu_ok=gpu_ok,
        gpu_detail=gpu_detail,
    )


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
    viewer = _gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    t = translator(viewer.lang)
    inventory = await gpu_inventory(gw, describe=lambda r: _wants(t, r))
    notice = ""
    if done in CORDON_DONE and gw.gpus.gpu(gpu) is not None:
        notice = t(CORDON_DONE[done], gpu=gpu, n=moved)
    return _render(
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
    viewer = _gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    try:
        result = await set_cordon(gw, who, client, gpu_id, mode)
    except GatewayError as exc:
        key = "error.not_found" if exc.status == 404 else "error.bad_request"
        return _error(viewer, exc.status, key, key + "_text", exc.message)
    done = _url(
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
    viewer = _gate(request, who, admin=True)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    current = f"{gw.controller.clock():%Y-%m}"
    chosen = costs.parse_month(month) if month else current
    if chosen is None:
        return _error(viewer, 400, "error.bad_request", "error.bad_request_text", month)
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
    return _render(
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
        owners=await _owners(gw, [r.key for r in idle_instances if r.key]),
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
    return [await build_report(gw, who, by, period, *span, "all") for by, period in groups]


def _downloads(first: date, last: date) -> list[tuple[str, str]]:
    """(catalog key, CSV address) of each grouping of everyone's usage in these days."""
    csv = {"since": first.isoformat(), "until": last.isoformat(), "scope": "all", "format": "csv"}
    return [
        (key, _url(REPORT, {"by": by, "period": period, **csv})) for by, period, key in COST_GROUPS
    ]


async def _owners(gw: Gateway, instance_ids: list[str]) -> dict[str, str]:
    """The owners' names of these instances, by instance id (one query)."""
    async with gw.db.read() as session:
        found = await session.execute(
            select(Instance.id, User.name)
            .join(User, User.id == Instance.owner_id)
            .where(Instance.id.in_(instance_ids))
        )
        return {str(i): str(name) for i, name in found.all()}


# -- language and static files ------------------------------------------------------------------


@router.get("/lang/{code}")
async def set_language(request: Request, code: str, next: str = "/") -> Response:
    """Remember the language in the ``lang`` cookie and go back to ``next`` (on this site)."""
    response = RedirectResponse(safe_next(next), status_code=303)
    lang = normalize(code)
    if lang is not None:
        response.set_cookie(
            LANG_COOKIE,
            lang,
            max_age=LANG_MAX_AGE,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/",
        )
    return response


@router.get("/static/{path:path}")
async def static(request: Request, path: str) -> Response:
    """The dashboard's script and stylesheet (served by the gateway: no CDN, no build step)."""
    return await static_response(path, request.scope)
