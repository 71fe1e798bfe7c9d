"""Dependencies: the gateway container, the client's address, and the signed-in principal.

One function decides who is asking, for every API route and page: an ``Authorization: Bearer``
API token, or the gateway's session cookie. Cookie-authenticated writes must carry the session's
CSRF token (``X-CSRF-Token`` header or ``csrf_token`` form field); token-authenticated requests
need none, since browsers never attach bearer tokens by themselves.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from aigc_gateway.auth.core.actor import Client
from aigc_gateway.auth.core.credentials import bearer_secret
from aigc_gateway.auth.core.principal import Principal, Via, authorize_method
from aigc_gateway.errors import Forbidden, Unauthorized
from aigc_gateway.gateway import Gateway

SESSION_COOKIE = "aigc_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def client_of(request: Request) -> Client:
    return Client(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


ClientDep = Annotated[Client, Depends(client_of)]


async def optional_principal(request: Request) -> Principal | None:
    """The principal, or None when the request carries no credentials at all. Credentials that
    are present but invalid are an error, never silently anonymous."""
    gw = get_gateway(request)
    header = request.headers.get("authorization")
    if header:
        secret = bearer_secret(header)  # the proxy strips what this finds (auth/credentials.py)
        if secret is None:
            raise Unauthorized("use `Authorization: Bearer <api token>`")
        who = await gw.accounts.principal_for_token(secret, client_of(request))
        if who is None:
            raise Unauthorized(
                "this API token is not valid (unknown, expired, revoked or disabled user)"
            )
        authorize_method(who, request.method)  # the token's scope, on every route
        return who
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    who = await gw.accounts.principal_for_session(cookie)
    if who is not None and request.method not in SAFE_METHODS:
        await _check_csrf(request, who)
    return who


async def _check_csrf(request: Request, who: Principal) -> None:
    assert who.via is Via.SESSION and who.csrf_token is not None
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else None
    if sent is None or not hmac.compare_digest(sent, who.csrf_token):
        raise Forbidden(
            "missing or wrong CSRF token: cookie-authenticated changes must send X-CSRF-Token",
            code="csrf_failed",
        )


async def get_principal(request: Request) -> Principal:
    who = await optional_principal(request)
    if who is None:
        raise Unauthorized("sign in, or send `Authorization: Bearer <api token>`")
    return who


CurrentUser = Annotated[Principal, Depends(get_principal)]
MaybeUser = Annotated[Principal | None, Depends(optional_principal)]
