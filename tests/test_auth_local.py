"""Local accounts, sessions, CSRF, open redirects, rate limits and API tokens."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import update

from aigc_gateway.settings import Settings
from aigc_gateway.store.db import Database
from aigc_gateway.store.tables import Session
from tests.conftest import RunningGateway


async def sign_in(
    client: httpx.AsyncClient, user: str, password: str, **form: str
) -> httpx.Response:
    return await client.post("/auth/login", data={"username": user, "password": password, **form})


@pytest.fixture
async def browser(gateway: RunningGateway) -> httpx.AsyncClient:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        yield client  # type: ignore[misc]


async def csrf(client: httpx.AsyncClient) -> str:
    return str((await client.get("/api/me")).json()["csrf_token"])


async def test_sign_in_with_the_form_sets_a_safe_session_cookie(browser: httpx.AsyncClient) -> None:
    page = await browser.get("/auth/login")
    assert page.status_code == 200 and 'name="password"' in page.text
    r = await sign_in(browser, "alice", "pw-alice", next="/api/me")
    assert r.status_code == 303
    assert r.headers["location"] == "/api/me"
    set_cookie = r.headers["set-cookie"].lower()
    assert "aigc_session=" in set_cookie
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie
    assert "domain=" not in set_cookie  # host-only
    assert "secure" not in set_cookie  # plain http here; https requests get Secure
    me = (await browser.get("/api/me")).json()
    assert me["name"] == "alice" and me["via"] == "session" and me["csrf_token"]


async def test_wrong_password_shows_the_form_again(browser: httpx.AsyncClient) -> None:
    r = await sign_in(browser, "alice", "wrong")
    assert r.status_code == 400
    assert "wrong user name or password" in r.text
    assert "aigc_session" not in r.headers.get("set-cookie", "")
    assert (await browser.get("/api/me")).status_code == 401


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "javascript:alert(1)",
        "\\\\evil",
    ],
)
async def test_next_pointing_off_site_is_ignored(browser: httpx.AsyncClient, target: str) -> None:
    r = await sign_in(browser, "alice", "pw-alice", next=target)
    assert r.status_code == 303
    assert r.headers["location"] == "/"


async def test_cross_site_sign_in_post_is_refused(browser: httpx.AsyncClient) -> None:
    r = await browser.post(
        "/auth/login",
        data={"username": "alice", "password": "pw-alice"},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    assert "aigc_session" not in r.headers.get("set-cookie", "")


async def test_cookie_writes_need_the_csrf_token(browser: httpx.AsyncClient) -> None:
    await sign_in(browser, "alice", "pw-alice")
    token = await csrf(browser)
    # A cross-site form post carries the cookie but cannot know the token.
    forged = await browser.post("/api/instances", data={"template": "tiny"})
    assert forged.status_code == 403 and forged.json()["code"] == "csrf_failed"
    forged = await browser.post(
        "/api/instances", json={"template": "tiny"}, headers={"X-CSRF-Token": "guess"}
    )
    assert forged.status_code == 403
    ok = await browser.post(
        "/api/instances", json={"template": "tiny"}, headers={"X-CSRF-Token": token}
    )
    assert ok.status_code == 201
    # Reads need no token.
    assert (await browser.get("/api/instances")).status_code == 200


async def test_logout_revokes_the_session_at_once(browser: httpx.AsyncClient) -> None:
    await sign_in(browser, "alice", "pw-alice")
    stolen = browser.cookies["aigc_session"]
    out = await browser.post("/auth/logout", headers={"X-CSRF-Token": await csrf(browser)})
    assert out.status_code == 303 and out.headers["location"] == "/auth/logged-out"
    async with httpx.AsyncClient(
        base_url=str(browser.base_url), cookies={"aigc_session": stolen}
    ) as thief:
        assert (await thief.get("/api/me")).status_code == 401


async def test_logout_without_csrf_token_is_refused(browser: httpx.AsyncClient) -> None:
    await sign_in(browser, "alice", "pw-alice")
    assert (await browser.post("/auth/logout")).status_code == 403
    assert (await browser.get("/api/me")).status_code == 200


async def test_failed_sign_ins_are_limited_per_account(
    gateway: RunningGateway, browser: httpx.AsyncClient
) -> None:
    limit = gateway.settings.login_max_failures_per_account
    for _ in range(limit):
        assert (await sign_in(browser, "bob", "guess")).status_code == 400
    blocked = await sign_in(browser, "bob", "pw-bob")  # even the right password, for now
    assert blocked.status_code == 429
    assert "too many failed sign-ins for this account" in blocked.text
    # Other accounts are not affected.
    assert (await sign_in(browser, "alice", "pw-alice")).status_code == 303


@pytest.mark.parametrize("gateway_settings", [{"login_max_failures_per_address": 3}], indirect=True)
async def test_failed_sign_ins_are_limited_per_address(browser: httpx.AsyncClient) -> None:
    for name in ("u1", "u2", "u3"):
        assert (await sign_in(browser, name, "x")).status_code == 400
    blocked = await sign_in(browser, "alice", "pw-alice")
    assert blocked.status_code == 429
    assert "from your address" in blocked.text


async def _age_sessions(settings: Settings, **values: datetime) -> None:
    db = Database(settings.sqlalchemy_url)
    try:
        async with db.write() as s:
            await s.execute(update(Session).values(**values))
    finally:
        await db.close()


async def test_idle_and_absolute_expiry(
    gateway: RunningGateway, browser: httpx.AsyncClient
) -> None:
    await sign_in(browser, "alice", "pw-alice")
    assert (await browser.get("/api/me")).status_code == 200
    long_ago = datetime.now(UTC) - timedelta(minutes=gateway.settings.session_idle_minutes + 1)
    await _age_sessions(gateway.settings, last_seen_at=long_ago)
    assert (await browser.get("/api/me")).status_code == 401
    await sign_in(browser, "alice", "pw-alice")
    await _age_sessions(gateway.settings, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert (await browser.get("/api/me")).status_code == 401


async def test_disabling_a_user_ends_sessions_and_tokens(
    gateway: RunningGateway, browser: httpx.AsyncClient
) -> None:
    await sign_in(browser, "bob", "pw-bob")
    admin = {"Authorization": f"Bearer {gateway.admin_token}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=admin) as api:
        bob = next(u for u in (await api.get("/api/users")).json() if u["name"] == "bob")
        assert (
            await api.patch(f"/api/users/{bob['id']}", json={"disabled": True})
        ).status_code == 200
    assert (await browser.get("/api/me")).status_code == 401
    r = await browser.get("/api/me", headers={"Authorization": f"Bearer {gateway.bob}"})
    assert r.status_code == 401
    refused = await sign_in(browser, "bob", "pw-bob")
    assert refused.status_code == 403 and "disabled" in refused.text


async def test_password_change_and_admin_reset(
    gateway: RunningGateway, browser: httpx.AsyncClient
) -> None:
    await sign_in(browser, "alice", "pw-alice")
    token = await csrf(browser)
    bad = await browser.post(
        "/api/me/password",
        json={"current_password": "nope", "new_password": "n3w-passw0rd"},
        headers={"X-CSRF-Token": token},
    )
    assert bad.status_code == 400
    short = await browser.post(
        "/api/me/password",
        json={"current_password": "pw-alice", "new_password": "short"},
        headers={"X-CSRF-Token": token},
    )
    assert short.status_code == 422
    ok = await browser.post(
        "/api/me/password",
        json={"current_password": "pw-alice", "new_password": "n3w-passw0rd"},
        headers={"X-CSRF-Token": token},
    )
    assert ok.status_code == 204
    async with httpx.AsyncClient(base_url=gateway.url) as other:
        assert (await sign_in(other, "alice", "pw-alice")).status_code == 400
        assert (await sign_in(other, "alice", "n3w-passw0rd")).status_code == 303
    admin = {"Authorization": f"Bearer {gateway.admin_token}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=admin) as api:
        alice = next(u for u in (await api.get("/api/users")).json() if u["name"] == "alice")
        r = await api.post(
            f"/api/users/{alice['id']}/password", json={"password": "reset-by-admin"}
        )
        assert r.status_code == 204
    # A reset signs the user out everywhere.
    assert (await browser.get("/api/me")).status_code == 401


async def test_api_tokens_are_shown_once_scoped_and_revocable(gateway: RunningGateway) -> None:
    auth = {"Authorization": f"Bearer {gateway.alice}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=auth) as api:
        made = (
            await api.post(
                "/api/tokens", json={"name": "ci", "scopes": ["read"], "expires_in_days": 1}
            )
        ).json()
        secret = made["token"]
        assert secret.startswith("agw_") and made["scopes"] == ["read"]
        listed = (await api.get("/api/tokens")).json()
        assert "ci" in {t["name"] for t in listed}
        assert secret not in str(listed)
        refused = await api.post("/api/tokens", json={"name": "x", "scopes": ["admin"]})
        assert refused.status_code == 403  # only admins may mint admin tokens
    read_only = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=read_only) as ro:
        assert (await ro.get("/api/instances")).status_code == 200
        assert (await ro.post("/api/instances", json={"template": "tiny"})).status_code == 403
        async with httpx.AsyncClient(base_url=gateway.url, headers=auth) as api:
            assert (await api.delete(f"/api/tokens/{made['id']}")).status_code == 204
        assert (await ro.get("/api/instances")).status_code == 401  # at once


async def mint(api: httpx.AsyncClient, *scopes: str) -> httpx.Response:
    return await api.post("/api/tokens", json={"name": "minted", "scopes": list(scopes)})


async def test_a_token_mints_only_tokens_within_its_own_scopes(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.admin_token}"}
    ) as root:
        made = (await mint(root, "read", "manage")).json()
        assert (await mint(root, "admin")).status_code == 201  # the admin's own, full token
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"Authorization": f"Bearer {made['token']}"}
    ) as manage:
        # An admin user's read,manage token is no admin credential: it cannot mint one.
        refused = await mint(manage, "read", "manage", "admin")
        assert refused.status_code == 403 and refused.json()["code"] == "token_scope"
        assert (await mint(manage, "admin")).status_code == 403
        # No scopes at all is not "every scope".
        assert (await mint(manage)).status_code == 422
        assert (await mint(manage, "read")).status_code == 201
        assert (await manage.get("/api/users")).status_code == 403  # nor does it act as admin


async def test_a_read_token_changes_nothing_of_its_user(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as browser:
        await browser.post("/auth/login", data={"username": "alice", "password": "pw-alice"})
        csrf = (await browser.get("/api/me")).json()["csrf_token"]
        made = await browser.post(
            "/api/tokens", json={"name": "ro", "scopes": ["read"]}, headers={"X-CSRF-Token": csrf}
        )
        session_id = (await browser.get("/api/me/sessions")).json()[0]["id"]
        read = {"Authorization": f"Bearer {made.json()['token']}"}
        async with httpx.AsyncClient(base_url=gateway.url, headers=read) as ro:
            tokens = (await ro.get("/api/tokens")).json()  # reading is its scope
            other = next(t["id"] for t in tokens if t["name"] == "test")
            assert (await ro.delete(f"/api/tokens/{other}")).status_code == 403
            assert (await ro.delete(f"/api/me/sessions/{session_id}")).status_code == 403
            assert (await ro.post("/auth/logout")).status_code == 403
        # The user's other token and the browser session still work.
        assert (await browser.get("/api/me")).status_code == 200
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.alice}"}
    ) as api:
        assert (await api.get("/api/me")).status_code == 200


async def test_audit_log_records_who_did_what(
    gateway: RunningGateway, browser: httpx.AsyncClient
) -> None:
    await sign_in(browser, "alice", "wrong")
    await sign_in(browser, "alice", "pw-alice")
    made = await browser.post(
        "/api/instances", json={"template": "tiny"}, headers={"X-CSRF-Token": await csrf(browser)}
    )
    assert made.status_code == 201
    await browser.post("/auth/logout", headers={"X-CSRF-Token": await csrf(browser)})
    admin = {"Authorization": f"Bearer {gateway.admin_token}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=admin) as api:
        events = (await api.get("/api/audit")).json()
        summary = [(e["action"], e["outcome"], e["actor"]) for e in reversed(events)]
        for expected in [
            ("auth.login", "failure", "alice"),
            ("auth.login", "success", "alice"),
            ("instance.create", "success", "alice"),
            ("auth.logout", "success", "alice"),
            ("token.use", "success", "admin"),
        ]:
            assert expected in summary, summary
        assert all(e["ip"] == "127.0.0.1" for e in events if e["action"].startswith("auth."))
        # Only admins read the audit log.
        r = await api.get("/api/audit", headers={"Authorization": f"Bearer {gateway.alice}"})
        assert r.status_code == 403


async def test_secrets_never_reach_the_logs(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    # Everything the gateway logs, at every level of its own code (the test's own HTTP client
    # logs what it receives, which is not the gateway's doing).
    caplog.set_level(logging.DEBUG, logger="aigc_gateway")
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(base_url=gateway.url) as browser:
        await sign_in(browser, "alice", "pw-alice")
        cookie = browser.cookies["aigc_session"]
        auth = {"Authorization": f"Bearer {gateway.alice}"}
        made = (await browser.post("/api/tokens", json={"name": "t"}, headers=auth)).json()
        await browser.get("/api/me", headers={"Authorization": f"Bearer {made['token']}"})
        await sign_in(browser, "alice", "secret-typo-password")
    await asyncio.sleep(0)
    text = caplog.text
    for secret in (cookie, gateway.alice, made["token"], "pw-alice", "secret-typo-password"):
        assert secret not in text


def test_the_cli_log_filter_redacts_secrets() -> None:
    from aigc_gateway.logs import redact

    line = (
        "GET /_aigc/handover?token=abc123def&next=/ Authorization: Bearer agw_0123456789abcdef "
        "cookie: aigc_session=s3cr3tv4lue; theme=dark"
    )
    cleaned = redact(line)
    for secret in ("abc123def", "agw_0123456789abcdef", "s3cr3tv4lue"):
        assert secret not in cleaned
    assert "theme=dark" in cleaned and "next=/" in cleaned
