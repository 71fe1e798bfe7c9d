"""Sign-in pages and endpoints: local form, OIDC code flow, sign-out, forward-auth, and the
hand-over that opens an instance on its own host."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, Query, Request
from itsdangerous import BadSignature
from starlette.responses import JSONResponse, RedirectResponse, Response

from aigc_gateway.api.deps import SESSION_COOKIE, ClientDep, CurrentUser, GatewayDep, MaybeUser
from aigc_gateway.auth.core.oidc import LoginState
from aigc_gateway.auth.core.principal import Via
from aigc_gateway.auth.services.accounts import SignedIn
from aigc_gateway.auth.services.instance_access import INSTANCE_COOKIE
from aigc_gateway.dashboard.ui.pages import message, page
from aigc_gateway.domain.hosts import safe_next
from aigc_gateway.errors import GatewayError

log = logging.getLogger(__name__)
router = APIRouter(tags=["sign-in"])

OIDC_COOKIE = "aigc_oidc"
OIDC_STATE_MAX_AGE = 600


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _set_session_cookie(
    response: Response, request: Request, signed: SignedIn, max_age: int
) -> None:
    # Host-only (no Domain): the browser never sends it to instance hosts, so engines never see it.
    response.set_cookie(
        SESSION_COOKIE,
        signed.cookie,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        path="/",
    )


def _login_page(
    gw: GatewayDep, *, next_path: str, error: str = "", username: str = "", status: int = 200
) -> Response:
    return page(
        "login.html",
        status,
        title="Sign in",
        next=next_path,
        error=error,
        username=username,
        local_login=gw.settings.local_login,
        oidc_name=gw.settings.oidc_provider_name if gw.oidc else None,
    )


def _same_origin(request: Request) -> bool:
    """Refuse cross-site form posts to the sign-in form (login CSRF)."""
    origin = request.headers.get("origin")
    if origin is None:  # non-browser clients and older browsers send none
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


@router.get("/auth/login", include_in_schema=False)
async def login_page(gw: GatewayDep, who: MaybeUser, next: str = "/") -> Response:
    target = safe_next(next)
    if who is not None and who.via is Via.SESSION:
        return RedirectResponse(target, status_code=303)
    return _login_page(gw, next_path=target)


@router.post("/auth/login")
async def login(
    request: Request,
    gw: GatewayDep,
    client: ClientDep,
    username: Annotated[str, Form(max_length=128)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form()] = "/",
) -> Response:
    """Sign in with a local account (form post). Answers with a redirect and the session cookie;
    errors re-show the form with the reason. JSON clients get JSON (``Accept: application/json``)."""
    wants_json = "application/json" in request.headers.get("accept", "")
    if not _same_origin(request):
        return JSONResponse(
            {"code": "csrf_failed", "message": "cross-site sign-in refused"}, status_code=403
        )
    target = safe_next(next)
    try:
        signed = await gw.accounts.login_local(username, password, client)
    except GatewayError as exc:
        if wants_json:
            raise
        return _login_page(
            gw, next_path=target, error=exc.message, username=username, status=exc.status
        )
    max_age = int(gw.settings.session_max_hours * 3600)
    response: Response
    if wants_json:
        response = JSONResponse({"user": signed.user.name, "csrf_token": signed.session.csrf_token})
    else:
        response = RedirectResponse(target, status_code=303)
    _set_session_cookie(response, request, signed, max_age)
    return response


@router.post("/auth/logout")
async def logout(request: Request, gw: GatewayDep, who: CurrentUser, client: ClientDep) -> Response:
    """End the session (CSRF-protected). After single sign-on, continue to the provider's
    sign-out (RP-initiated logout) so the user is signed out there too."""
    id_token = await gw.accounts.logout(who, client)
    target = "/auth/logged-out"
    if gw.oidc is not None and id_token is not None:
        provider_url = await gw.oidc.logout_url(id_token=id_token, state=who.session_id or "")
        target = provider_url or target
    wants_json = "application/json" in request.headers.get("accept", "")
    response: Response = (
        JSONResponse({"signed_out": True, "next": target})
        if wants_json
        else RedirectResponse(target, status_code=303)
    )
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=_secure(request)
    )
    return response


@router.get("/auth/logged-out", include_in_schema=False)
async def logged_out() -> Response:
    return message(
        "Signed out",
        "You are signed out of AIGC Gateway.",
        200,
        link="/auth/login",
        link_text="Sign in again",
    )


@router.get("/auth/oidc/login", include_in_schema=False)
async def oidc_login(request: Request, gw: GatewayDep, next: str = "/") -> Response:
    if gw.oidc is None:
        return message("Single sign-on is not set up", "Ask an administrator to configure it.", 404)
    login, url = await gw.oidc.begin(safe_next(next))
    response = RedirectResponse(url, status_code=302)
    state = gw.signer.dumps([login.state, login.nonce, login.verifier, login.next])
    response.set_cookie(
        OIDC_COOKIE,
        state,
        max_age=OIDC_STATE_MAX_AGE,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        path="/auth/oidc",
    )
    return response


@router.get("/auth/oidc/callback", include_in_schema=False)
async def oidc_callback(
    request: Request,
    gw: GatewayDep,
    client: ClientDep,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> Response:
    if gw.oidc is None:
        return message("Single sign-on is not set up", "Ask an administrator to configure it.", 404)
    again = ("/auth/oidc/login", "Try again")
    if error:
        return message(
            "Sign-in failed",
            f"The provider answered: {error} {error_description or ''}".strip(),
            400,
            link=again[0],
            link_text=again[1],
        )
    login = _load_login(gw, request.cookies.get(OIDC_COOKIE))
    if login is None or not code or not state or not hmac.compare_digest(state, login.state):
        return message(
            "Sign-in expired",
            "This sign-in did not start here or took too long. Please try again.",
            400,
            link=again[0],
            link_text=again[1],
        )
    try:
        identity, id_token = await gw.oidc.finish(code=code, login=login)
        signed = await gw.accounts.login_oidc(identity, id_token, client)
    except GatewayError as exc:
        await gw.accounts.record_failure(method="oidc", reason=exc.message, client=client)
        return message(
            "Sign-in refused", exc.message, exc.status, link=again[0], link_text=again[1]
        )
    response = RedirectResponse(login.next, status_code=303)
    _set_session_cookie(response, request, signed, int(gw.settings.session_max_hours * 3600))
    response.delete_cookie(OIDC_COOKIE, path="/auth/oidc")
    return response


def _load_login(gw: GatewayDep, cookie: str | None) -> LoginState | None:
    if not cookie:
        return None
    try:
        state, nonce, verifier, next_path = gw.signer.loads(cookie, max_age=OIDC_STATE_MAX_AGE)
    except (BadSignature, ValueError, TypeError):
        return None
    return LoginState(str(state), str(nonce), str(verifier), safe_next(str(next_path)))


def _original_host(request: Request) -> str:
    original = request.headers.get("x-original-url")
    if original:
        return urlsplit(original).netloc
    return request.headers.get("x-forwarded-host", "")


@router.get("/auth/forward", include_in_schema=True)
async def forward_auth(request: Request, gw: GatewayDep) -> Response:
    """Forward-auth for nginx ``auth_request``, ingress-nginx ``auth-url`` and Traefik
    ``ForwardAuth``: 200 with ``X-Aigc-User``/``X-Aigc-Upstream`` headers, 401 (send the browser to
    ``/auth/instance-login?rd=…``) or 403. The instance is matched by the exact host."""
    decision = await gw.instance_access.forward(
        _original_host(request), request.cookies.get(INSTANCE_COOKIE)
    )
    return Response(status_code=decision.status, headers=decision.headers)


@router.get("/auth/instance-login", include_in_schema=False)
async def instance_login(
    request: Request, gw: GatewayDep, who: MaybeUser, client: ClientDep, rd: Annotated[str, Query()]
) -> Response:
    """Where forward-auth's 401 sends the browser: sign in if needed, then hand over to the
    instance host."""
    if who is None or who.via is not Via.SESSION:
        back = f"/auth/instance-login?rd={quote(rd, safe='')}"
        return RedirectResponse(f"/auth/login?next={quote(back, safe='')}", status_code=303)
    try:
        url = await gw.instance_access.start_handover(who, rd, client)
    except GatewayError as exc:
        return message(
            "Cannot open this instance", exc.message, exc.status, link="/", link_text="Back"
        )
    return RedirectResponse(url, status_code=303)


@router.get("/_aigc/handover", include_in_schema=False)
async def handover(
    request: Request, gw: GatewayDep, token: Annotated[str, Query(max_length=256)], next: str = "/"
) -> Response:
    """On an instance host: trade the one-time token for the instance cookie."""
    try:
        cookie, target = await gw.instance_access.redeem_handover(
            request.headers.get("host", ""), token, next
        )
    except GatewayError as exc:
        return message("Cannot open this instance", exc.message, exc.status)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        INSTANCE_COOKIE,
        cookie,
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        path="/",
        max_age=int(gw.settings.session_max_hours * 3600),
    )
    return response
