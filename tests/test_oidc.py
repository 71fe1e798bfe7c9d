"""Single sign-on against a real OIDC provider (npm `oidc-provider`, the library Logto is built
on): the full code flow with PKCE, groups → teams, admin mapping, disabled users, logout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from itsdangerous import URLSafeTimedSerializer

from aigc_gateway.app import create_app
from aigc_gateway.bootstrap import bootstrap
from aigc_gateway.settings import Settings, signing_secret
from tests.support.gateway import make_settings, stop_engines
from tests.support.oidc import oidc_provider
from tests.support.oidc_browser import login_via_provider, provider_error_text, submit_logout
from tests.support.server import bound_socket, serve_in_thread
from tests.support.tools import require_tool

pytestmark = pytest.mark.needs("oidc-provider")

USERS = [
    {
        "sub": "sub-alice",
        "username": "alice",
        "password": "alice-pw",
        "email": "alice@example.com",
        "name": "Alice Artist",
        "groups": ["designers"],
    },
    {
        "sub": "sub-carol",
        "username": "carol",
        "password": "carol-pw",
        "email": "carol@example.com",
        "name": "Carol Admin",
        "groups": ["designers", "gateway-admins"],
    },
    {
        "sub": "sub-dave",
        "username": "dave",
        "password": "dave-pw",
        "email": "dave@example.com",
        "name": "Dave",
        "groups": [],
    },
]


@dataclass
class SsoGateway:
    url: str
    issuer: str
    settings: Settings
    admin_token: str


def _client(base: str, *, logout: bool) -> dict[str, Any]:
    return {
        "client_id": "aigc-gateway",
        "client_secret": "test-client-secret",
        "redirect_uris": [f"{base}/auth/oidc/callback"],
        "post_logout_redirect_uris": [f"{base}/auth/logged-out"] if logout else [],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
    }


@pytest.fixture(params=["both"])
def groups_in(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def register_logout() -> bool:
    return True


@pytest.fixture
def sso(tmp_path: Path, groups_in: str, register_logout: bool) -> Iterator[SsoGateway]:
    sock = bound_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with oidc_provider(
        clients=[_client(base, logout=register_logout)], users=USERS, groups_in=groups_in
    ) as op:
        settings = make_settings(
            tmp_path,
            public_url=base,
            oidc_issuer=op.issuer,
            oidc_client_id="aigc-gateway",
            oidc_client_secret="test-client-secret",
            oidc_scopes="openid profile email groups",
            oidc_admin_group="gateway-admins",
            oidc_provider_name="Test SSO",
        )
        first = asyncio.run(bootstrap(settings))
        assert first is not None and first.token is not None
        try:
            with serve_in_thread(create_app(settings), sock) as url:
                yield SsoGateway(url, op.issuer, settings, first.token)
        finally:
            stop_engines(settings)


@pytest.fixture
async def browser() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def sign_in(
    browser: httpx.AsyncClient, sso: SsoGateway, user: str, password: str
) -> httpx.Response:
    return await login_via_provider(
        browser, f"{sso.url}/auth/oidc/login?next=/api/me", user, password
    )


async def test_code_flow_signs_in_and_maps_groups_to_teams(
    sso: SsoGateway, browser: httpx.AsyncClient
) -> None:
    me = await sign_in(browser, sso, "alice", "alice-pw")
    assert me.status_code == 200, me.text
    assert str(me.url) == f"{sso.url}/api/me"
    body = me.json()
    assert body["name"] == "alice"
    assert body["teams"] == ["designers"]
    assert body["is_admin"] is False
    assert body["via"] == "session"
    cookie = next(c for c in browser.cookies.jar if c.name == "aigc_session")
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert not cookie.domain_specified  # host-only: never sent to instance hosts
    # Signing in again finds the same user (keyed by issuer and subject).
    async with httpx.AsyncClient(timeout=30) as other:
        again = await sign_in(other, sso, "alice", "alice-pw")
        assert again.json()["id"] == body["id"]


@pytest.mark.parametrize("groups_in", ["id_token", "userinfo"], indirect=True)
async def test_groups_are_read_wherever_the_provider_puts_them(
    sso: SsoGateway, browser: httpx.AsyncClient
) -> None:
    me = (await sign_in(browser, sso, "carol", "carol-pw")).json()
    assert me["teams"] == ["designers", "gateway-admins"]
    assert me["is_admin"] is True


async def test_admin_group_makes_an_admin_and_leaving_it_unmakes(
    sso: SsoGateway, browser: httpx.AsyncClient
) -> None:
    carol = (await sign_in(browser, sso, "carol", "carol-pw")).json()
    assert carol["is_admin"] is True
    csrf = carol["csrf_token"]
    users = await browser.get(f"{sso.url}/api/users")
    assert users.status_code == 200
    assert {u["name"] for u in users.json()} >= {"admin", "carol"}
    # A cookie-authenticated write needs the CSRF token.
    made = await browser.post(f"{sso.url}/api/teams", json={"name": "video"})
    assert made.status_code == 403 and made.json()["code"] == "csrf_failed"
    made = await browser.post(
        f"{sso.url}/api/teams", json={"name": "video"}, headers={"X-CSRF-Token": csrf}
    )
    assert made.status_code == 201
    async with httpx.AsyncClient(timeout=30) as other:  # closed: no connection left to the GC
        dave = await sign_in(other, sso, "dave", "dave-pw")
    assert dave.json()["is_admin"] is False and dave.json()["teams"] == []


async def test_wrong_password_at_the_provider_gives_no_session(
    sso: SsoGateway, browser: httpx.AsyncClient
) -> None:
    page = await sign_in(browser, sso, "alice", "not-her-password")
    assert (
        "Invalid username or password" in provider_error_text(page)
        or "Invalid username or password" in page.text
    )
    assert (await browser.get(f"{sso.url}/api/me")).status_code == 401


async def test_a_user_disabled_at_the_gateway_is_signed_out_and_cannot_sign_in(
    sso: SsoGateway, browser: httpx.AsyncClient
) -> None:
    alice = (await sign_in(browser, sso, "alice", "alice-pw")).json()
    admin = {"Authorization": f"Bearer {sso.admin_token}"}
    async with httpx.AsyncClient(base_url=sso.url, headers=admin) as api:
        r = await api.patch(f"/api/users/{alice['id']}", json={"disabled": True})
        assert r.status_code == 200 and r.json()["disabled"] is True
        # Her open session stops working at once.
        assert (await browser.get(f"{sso.url}/api/me")).status_code == 401
        async with httpx.AsyncClient(timeout=30) as fresh:
            refused = await sign_in(fresh, sso, "alice", "alice-pw")
            assert refused.status_code == 403
            assert "disabled" in refused.text
            assert (await fresh.get(f"{sso.url}/api/me")).status_code == 401
        audit = (await api.get("/api/audit", params={"action": "auth.login"})).json()
        assert any(
            e["outcome"] == "failure" and e["detail"].get("reason") == "account disabled"
            for e in audit
        )


async def test_logout_ends_the_gateway_session_and_the_providers(
    sso: SsoGateway, browser: httpx.AsyncClient
) -> None:
    me = (await sign_in(browser, sso, "alice", "alice-pw")).json()
    out = await browser.post(f"{sso.url}/auth/logout", headers={"X-CSRF-Token": me["csrf_token"]})
    assert out.status_code == 303
    provider_logout = out.headers["location"]
    assert provider_logout.startswith(sso.issuer)
    assert "post_logout_redirect_uri=" in provider_logout and "id_token_hint=" in provider_logout
    assert (await browser.get(f"{sso.url}/api/me")).status_code == 401
    landed = await submit_logout(browser, provider_logout)
    assert str(landed.url).startswith(f"{sso.url}/auth/logged-out")
    assert "signed out" in landed.text.lower()
    # The provider's session is gone too: signing in asks for the password again.
    page = await browser.get(f"{sso.url}/auth/oidc/login", follow_redirects=True)
    assert 'name="password"' in page.text


@pytest.mark.parametrize("register_logout", [False], indirect=False)
async def test_unregistered_post_logout_uri_is_explained_by_the_provider(
    sso: SsoGateway, browser: httpx.AsyncClient
) -> None:
    me = (await sign_in(browser, sso, "alice", "alice-pw")).json()
    out = await browser.post(f"{sso.url}/auth/logout", headers={"X-CSRF-Token": me["csrf_token"]})
    # The gateway session ends whatever the provider then says.
    assert (await browser.get(f"{sso.url}/api/me")).status_code == 401
    page = await submit_logout(browser, out.headers["location"])
    assert "post_logout_redirect_uri" in provider_error_text(page)


async def test_a_wrong_nonce_is_refused(sso: SsoGateway, browser: httpx.AsyncClient) -> None:
    start = await browser.get(f"{sso.url}/auth/oidc/login")
    assert start.status_code == 302
    signer = URLSafeTimedSerializer(signing_secret(sso.settings), salt="aigc-gateway")
    state, _nonce, verifier, next_path = signer.loads(start.cookies["aigc_oidc"])
    browser.cookies.set(
        "aigc_oidc",
        signer.dumps([state, "forged-nonce", verifier, next_path]),
        domain="127.0.0.1",
        path="/auth/oidc",
    )
    # Continue the same provider round trip (its nonce is the original one).
    refused = await login_via_provider(
        browser, start.headers["location"], "alice", "alice-pw", home=sso.url
    )
    assert refused.status_code == 403
    assert "nonce" in refused.text
    assert (await browser.get(f"{sso.url}/api/me")).status_code == 401


async def test_a_callback_without_the_login_cookie_is_refused(
    sso: SsoGateway, browser: httpx.AsyncClient
) -> None:
    r = await browser.get(f"{sso.url}/auth/oidc/callback", params={"code": "x", "state": "y"})
    assert r.status_code == 400
    assert "try again" in r.text.lower()


@pytest.mark.slow
async def test_sign_in_with_the_provider_in_a_real_browser(sso: SsoGateway) -> None:
    import re

    from playwright.async_api import expect

    from tests.support.browser import chromium, context, shot

    require_tool("chromium")
    async with chromium() as browser, context(browser) as ctx:
        page = await ctx.new_page()
        await page.goto(f"{sso.url}/auth/login")
        await page.get_by_role("link", name=re.compile("Test SSO")).click()
        await page.locator("input[name=username]").fill("alice")
        await page.locator("input[name=password]").fill("alice-pw")
        await shot(page, "oidc-1-provider-login")
        await page.locator("form button[type=submit], form input[type=submit]").first.click()
        await expect(page.get_by_test_id("nav-user")).to_contain_text("alice")
        await shot(page, "oidc-2-signed-in")
