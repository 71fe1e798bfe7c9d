"""The user's pages: server-rendered, with the language switch, static files, and the helpers
the admin pages (:mod:`.admin`) share.

Pages call the services (never the store: the import contract ``api``) and hand plain data
(``dashboard.ui.views``) to the templates; most changes are made by the pages' script through
the JSON API. The GPU page's buttons are plain forms (with the CSRF token) that redirect back with a notice. Each list is one query.
Not signed in: 303 to the sign-in page; admin pages answer non-admins with a 403 page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request
from starlette.responses import RedirectResponse, Response

from aigc_gateway import __version__
from aigc_gateway.api.deps import GatewayDep, MaybeUser, optional_principal
from aigc_gateway.api.schemas import InstancePublic, instance_actions
from aigc_gateway.auth.core.principal import Principal
from aigc_gateway.catalog.loader import LoadedTemplate
from aigc_gateway.dashboard.ui import costs
from aigc_gateway.dashboard.ui import views as v
from aigc_gateway.dashboard.ui.i18n import LANG_COOKIE, negotiate, normalize
from aigc_gateway.dashboard.ui.icons import icon_url
from aigc_gateway.dashboard.ui.pages import page, static_response, translator
from aigc_gateway.domain.hosts import safe_next
from aigc_gateway.domain.instances import InstanceView
from aigc_gateway.errors import GatewayError
from aigc_gateway.gateway import Gateway
from aigc_gateway.storage.quota import StorageUse

router = APIRouter(include_in_schema=False, tags=["dashboard"])

PAGE_SIZE = 200
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


def gate(request: Request, who: Principal | None, *, admin: bool = False) -> v.Viewer | Response:
    """The viewer, or the answer for who may not see the page."""
    if who is None:
        target = quote(_here(request), safe="")
        return RedirectResponse(f"/auth/login?next={target}", status_code=303)
    viewer = _viewer(request, who)
    if admin and not who.acts_as_admin:
        return error_page(viewer, 403, "error.forbidden_title", "error.forbidden_text")
    return viewer


_NOT_PAGES = ("/api/", "/auth/", "/_aigc/", "/static/")
"""Paths whose unknowns stay JSON (or the server's answer) whoever asks."""


async def not_found_page(request: Request) -> Response | None:
    """What a browser's ``GET`` of a path nothing serves gets: the dashboard's "Not found" page
    (with the navigation for a signed-in viewer, a plain one otherwise), in the viewer's
    language. ``None`` (the JSON error) for the API's paths, other methods, and clients that do
    not ask for HTML."""
    accept = request.headers.get("accept", "")
    if request.method not in ("GET", "HEAD") or "text/html" not in accept:
        return None
    if request.url.path.startswith(_NOT_PAGES):
        return None
    try:
        who = await optional_principal(request)
    except GatewayError:  # a bad credential: the plain page, not a second error
        who = None
    if who is not None:
        return error_page(_viewer(request, who), 404, "error.not_found", "error.not_found_text")
    lang = negotiate(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))
    t = translator(lang)
    texts = {"title": t("error.not_found"), "text": t("error.not_found_text")}
    return page("message.html", 404, lang=lang, link="/", link_text=t("error.home"), **texts)


def render(
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


def error_page(
    viewer: v.Viewer, status: int, title_key: str, text_key: str, detail: str = ""
) -> Response:
    t = translator(viewer.lang)
    text = t(text_key) + (f" ({detail})" if detail else "")
    return render(viewer, "error.html", "error", title_key, status, text=text)


def url_with(base: str, params: dict[str, Any]) -> str:
    """``base`` with the non-empty ``params`` as its query."""
    query = {k: val for k, val in params.items() if val}
    return base + (f"?{urlencode(query)}" if query else "")


def pager(base: str, params: dict[str, Any], page_no: int, more: bool) -> dict[str, Any]:
    return {
        "prev_url": url_with(base, {**params, "page": page_no - 1}) if page_no > 0 else None,
        "next_url": url_with(base, {**params, "page": page_no + 1}) if more else None,
    }


def template_card(loaded: LoadedTemplate, lang: str) -> v.TemplateCard:
    t = loaded.template
    return v.TemplateCard(
        id=t.id,
        name=t.display.name.get(lang),
        description=t.display.description.get(lang) if t.display.description else "",
        icon=icon_url(t.display.icon, t.family),
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
    gw: Gateway, who: Principal, instances: Sequence[InstanceView], lang: str
) -> list[v.InstanceCard]:
    """Instance cards: the newest event ids, the owners' names and the shares, one query each."""
    facts = await gw.instances.card_facts(who, instances)
    after, owner_names = facts.newest_event, facts.owner_names
    shares = {
        instance_id: [v.ShareView(share_id, target, kind) for share_id, target, kind in found]
        for instance_id, found in facts.shares.items()
    }
    usage = await gw.gpu_usage.by_session() if any(i.gpu_ids for i in instances) else {}
    return [
        replace(_card(gw, who, i, lang, after, owner_names, shares), **_gpu_parts(gw, i, usage))
        for i in instances
    ]


def _gpu_parts(gw: Gateway, inst: InstanceView, usage: dict[int, int]) -> dict[str, Any]:
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
    inst: InstanceView,
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
        icon=icon_url(display.icon if display else None, inst.family),
        family=inst.family,
        owner_name=owner_names.get(inst.owner_id, who.name),
        is_owner=inst.owner_id == who.user_id,
        after=after.get(inst.id, 0),
        created_at=inst.created_at,
        shares=shares.get(inst.id, []),
        actions=instance_actions(inst),
    )


# -- pages for everyone signed in ---------------------------------------------------------------


@router.get("/")
async def home(request: Request, gw: GatewayDep, who: MaybeUser) -> Response:
    """My instances, with live state."""
    viewer = gate(request, who)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    instances = await gw.instances.list_visible(who)
    cards = await _cards(gw, who, instances, viewer.lang)
    budgets = [costs.budget_view(s) for s in await gw.budgets.for_user(who.user_id)]
    over = [b for b in budgets if b.level != "ok"]
    full = [f for f in await _families(gw, who) if f.level != "ok"]
    return render(
        viewer, "home.html", "home", "home.title", cards=cards, over_budget=over, storage=full
    )


async def _families(gw: Gateway, who: Principal) -> list[v.FamilyRow]:
    """The user's data folders, measured now, with their quota level."""
    rows = []
    for u in await gw.files.usage(who):
        level = StorageUse(u.family, u.used_bytes, u.quota_bytes).level
        rows.append(v.FamilyRow(u.family, u.used_bytes, u.quota_bytes, str(level)))
    return rows


@router.get("/catalog")
async def catalog(request: Request, gw: GatewayDep, who: MaybeUser) -> Response:
    """The engines on offer."""
    viewer = gate(request, who)
    if isinstance(viewer, Response):
        return viewer
    cards = [
        template_card(loaded, viewer.lang)
        for loaded in gw.registry.catalog.templates.values()
        if loaded.template.enabled
    ]
    return render(viewer, "catalog.html", "catalog", "catalog.title", cards=cards)


@router.get("/files")
async def files_index(request: Request, gw: GatewayDep, who: MaybeUser) -> Response:
    """My data folders, one per engine family, with their quotas."""
    viewer = gate(request, who)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    families = await _families(gw, who)
    return render(viewer, "files_index.html", "files", "files.title", families=families)


@router.get("/files/{family}")
async def files_folder(
    request: Request,
    family: str,
    gw: GatewayDep,
    who: MaybeUser,
    path: Annotated[str, Query(max_length=4096)] = "",
) -> Response:
    """One folder of a family's data: browse, preview, download, upload, delete."""
    viewer = gate(request, who)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    try:
        found = await gw.files.listing(who, family, path)
    except GatewayError as exc:
        key = "error.not_found" if exc.status == 404 else "error.bad_request"
        return error_page(viewer, exc.status, key, key + "_text", exc.message)
    entries = [
        v.FileRow(e.name, e.path, e.is_dir, e.size, e.modified, e.media_type is not None, e.is_link)
        for e in found.entries
    ]
    return render(
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
    viewer = gate(request, who)
    if isinstance(viewer, Response):
        return viewer
    assert who is not None
    today = gw.controller.clock().date()  # the ledger's clock
    since = today - timedelta(days=RECENT_DAYS - 1)
    span = (since.isoformat(), today.isoformat())
    month = await gw.reports.build(who, "user", "none", f"{today:%Y-%m}-01", span[1], "mine")
    by_instance = await gw.reports.build(who, "instance", "none", *span, "mine")
    daily = await gw.reports.build(who, "user", "day", *span, "mine")
    table = daily if per == "day" else await gw.reports.build(who, "user", "week", *span, "mine")
    budgets = [costs.budget_view(s) for s in await gw.budgets.for_user(who.user_id)]
    title = translator(viewer.lang)("usage.chart_daily")
    chart = costs.daily_chart(daily.rows, costs.days(since, today), daily.currency, title)
    csv = {"since": span[0], "until": span[1], "scope": "mine", "format": "csv"}
    return render(
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
        csv_instance=url_with(REPORT, {"by": "instance", "period": "none", **csv}),
        csv_periods=url_with(REPORT, {"by": "instance", "period": per, **csv}),
    )


@router.get("/account")
async def account(request: Request, gw: GatewayDep, who: MaybeUser) -> Response:
    """API tokens, sessions and the password."""
    viewer = gate(request, who)
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
    viewer = replace(viewer, local_account=await gw.accounts.has_password(who))
    return render(
        viewer, "account.html", "account", "account.title", tokens=tokens, sessions=sessions
    )


# -- admin pages --------------------------------------------------------------------------------


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


@router.get("/_aigc/favicon.svg")
async def favicon(request: Request) -> Response:
    """The gateway's icon on every host: the sign-in page and the wake pages link it here,
    since on an instance host everything outside ``/_aigc/`` (``/static/`` too) is the engine's."""
    return await static_response("favicon.svg", request.scope)
