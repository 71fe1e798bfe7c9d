"""Every route of the real app, for every role (anonymous, another user, the owner, an admin) and
every credential a signed-in role may act with: a browser session, and API tokens with the
``read``, ``read,manage`` and all scopes (``admin`` included, which only an admin user's token
acts on).

The rules below are the access policy written down. A route the app serves without a rule here
fails the suite, so no new route ships without deciding who may use it. A rule states what each
role gets with all of its rights (a session, or a token with every scope); what a narrower token
gets follows from the scope policy in :func:`expected`, the same for every route:

- ``read`` only reads: any other method is 403, whoever asks;
- a credential without the ``admin`` scope never acts as an administrator: an admin user with
  it gets what another user gets;
- a session has all of its user's rights; ``Rule.session`` notes where a route answers a browser
  session differently (sign-in page, password change).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Route

from aigc_gateway.app import create_app
from tests.conftest import RunningGateway

OK = {200, 201, 202, 204}
ROLES = ("anon", "other", "owner", "admin")
CREDENTIALS = ("session", "read", "manage", "all")
TOKEN_SCOPES = {"read": ["read"], "manage": ["read", "manage"]}
READ_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass(frozen=True)
class Rule:
    anon: set[int]
    other: set[int]
    owner: set[int]
    admin: set[int]
    body: dict[str, Any] | None = None
    form: dict[str, str] | None = None
    query: dict[str, str] | None = None
    session: set[int] | None = None
    """What a signed-in browser session gets, where it differs from a full token."""
    ends_session: bool = False
    """The request signs the session out (it is signed in again afterwards)."""

    def expected(self, role: str) -> set[int]:
        return getattr(self, role)  # type: ignore[no-any-return]


def expected(rule: Rule, method: str, role: str, credential: str) -> set[int]:
    """What ``role`` acting with ``credential`` gets (see the module's docstring)."""
    if role == "anon":
        return rule.anon
    if credential == "session" and rule.session is not None:
        return rule.session
    if credential == "read" and method not in READ_METHODS and rule.other != rule.anon:
        return {403}  # a route anyone may call (sign-in) asks for no credential at all
    if role == "admin" and credential in ("read", "manage"):
        return rule.other
    return rule.expected(role)


def public(codes: set[int] = OK, **kw: Any) -> Rule:
    return Rule(codes, codes, codes, codes, **kw)


def signed_in(**kw: Any) -> Rule:
    return Rule({401}, OK, OK, OK, **kw)


def owner_or_admin(**kw: Any) -> Rule:
    """Another user learns nothing: 404, as for an id that does not exist."""
    return Rule({401}, {404}, OK, OK, **kw)


def admin_only(**kw: Any) -> Rule:
    return Rule({401}, {403}, {403}, OK, **kw)


def page(**kw: Any) -> Rule:
    """A dashboard page: anonymous visitors are sent to sign in."""
    return Rule({303}, {200}, {200}, {200}, **kw)


def admin_page(**kw: Any) -> Rule:
    return Rule({303}, {403}, {403}, {200}, **kw)


def own_files(**kw: Any) -> Rule:
    """Files are always the caller's own; the literal `{family}` is no family anyone has."""
    return Rule({401}, {404}, {404}, {404}, **kw)


RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/openapi.json"): public(),
    ("GET", "/docs"): public(),
    ("GET", "/docs/oauth2-redirect"): public(),
    ("GET", "/redoc"): public(),
    ("GET", "/healthz"): public(),
    # No metrics token and no trusted address are set here, so nobody may read the metrics (a
    # user's API token is no metrics token); tests/test_metrics.py checks the token and addresses.
    ("GET", "/metrics"): public({403}),
    ("GET", "/api/me"): signed_in(),
    ("POST", "/api/me/password"): Rule(
        {401},
        {403},
        {403},
        {403},
        body={"current_password": "x", "new_password": "long-enough"},
        session={400},  # the current password is wrong
    ),  # tokens may not change passwords: only a signed-in browser session
    ("GET", "/api/me/sessions"): signed_in(),
    ("DELETE", "/api/me/sessions/{session_id}"): Rule({401}, {404}, OK, {404}),
    ("GET", "/api/tokens"): signed_in(),
    ("POST", "/api/tokens"): signed_in(body={"name": "matrix"}),
    ("DELETE", "/api/tokens/{token_id}"): Rule({401}, {404}, OK, OK),
    ("GET", "/api/templates"): signed_in(),
    ("GET", "/api/templates/{template_id}"): signed_in(),
    ("POST", "/api/templates/reload"): admin_only(),
    ("GET", "/api/instances"): signed_in(),
    ("POST", "/api/instances"): signed_in(body={"template": "missing-binary"}),
    ("GET", "/api/instances/{instance_id}"): owner_or_admin(),
    ("POST", "/api/instances/{instance_id}/{action}"): owner_or_admin(),
    ("DELETE", "/api/instances/{instance_id}"): owner_or_admin(),
    ("GET", "/api/instances/{instance_id}/events"): owner_or_admin(),
    ("GET", "/api/instances/{instance_id}/events/stream"): owner_or_admin(),
    ("GET", "/api/instances/{instance_id}/logs"): owner_or_admin(),
    ("GET", "/api/instances/{instance_id}/shares"): owner_or_admin(),
    ("POST", "/api/instances/{instance_id}/shares"): owner_or_admin(body={"user": "carol"}),
    ("DELETE", "/api/instances/{instance_id}/shares/{share_id}"): owner_or_admin(),
    ("GET", "/api/users"): admin_only(),
    ("GET", "/api/admin/instances"): admin_only(),
    ("GET", "/api/admin/users"): admin_only(),
    ("POST", "/api/users"): admin_only(body={"name": "{fresh}", "password": "long-enough"}),
    ("PATCH", "/api/users/{user_id}"): admin_only(body={"disabled": True}),
    ("POST", "/api/users/{user_id}/password"): admin_only(body={"password": "long-enough"}),
    ("POST", "/api/users/{user_id}/revoke-sessions"): admin_only(),
    ("GET", "/api/teams"): signed_in(),
    ("POST", "/api/teams"): admin_only(body={"name": "{fresh}"}),
    ("GET", "/api/teams/{team_id}/members"): admin_only(),
    ("PUT", "/api/teams/{team_id}/members/{user_id}"): admin_only(),
    ("DELETE", "/api/teams/{team_id}/members/{user_id}"): admin_only(),
    ("GET", "/api/audit"): admin_only(),
    ("GET", "/api/gpus"): admin_only(),
    ("GET", "/api/usage/report"): signed_in(),  # users get their own usage, admins everyone's
    ("GET", "/api/instances/{instance_id}/usage"): owner_or_admin(),
    ("GET", "/api/budgets"): admin_only(),
    ("PUT", "/api/budgets/{scope}/{name}"): admin_only(body={"soft": "5", "hard": "10"}),
    ("DELETE", "/api/budgets/{scope}/{name}"): admin_only(),
    ("GET", "/api/me/budgets"): signed_in(),
    # The literal `{gpu_id}` names no card: an admin learns that (404), nobody else gets that far.
    ("POST", "/api/gpus/{gpu_id}/cordon"): Rule({401}, {403}, {403}, {404}),
    ("POST", "/api/gpus/{gpu_id}/drain"): Rule({401}, {403}, {403}, {404}),
    ("POST", "/api/gpus/{gpu_id}/uncordon"): Rule({401}, {403}, {403}, {404}),
    ("GET", "/auth/login"): public({200}, session={303}),  # signed in already: go on
    ("POST", "/auth/login"): public({400}, form={"username": "alice", "password": "wrong"}),
    ("POST", "/auth/logout"): Rule({401}, {303}, {303}, {303}, ends_session=True),
    ("GET", "/auth/logged-out"): public({200}),
    ("GET", "/auth/oidc/login"): public({404}),  # single sign-on is not configured here
    ("GET", "/auth/oidc/callback"): public({404}),
    ("GET", "/auth/forward"): public({403}),  # not an instance host: never allowed
    # Sent to sign in first; a signed-in browser is told that `rd` names no instance here.
    ("GET", "/auth/instance-login"): public(
        {303}, query={"rd": "http://x.localhost/"}, session={400}
    ),
    ("GET", "/_aigc/handover"): public({404}, query={"token": "forged"}),  # not an instance host
    ("GET", "/_aigc/status"): public({404}),  # only on instance hosts, with the instance cookie
    ("GET", "/_aigc/events"): public({404}),
    ("GET", "/api/files"): signed_in(),
    ("GET", "/api/files/{family}"): own_files(),
    ("GET", "/api/files/{family}/content"): own_files(query={"path": "x.png"}),
    ("PUT", "/api/files/{family}/content"): own_files(query={"path": "x.png"}),
    ("DELETE", "/api/files/{family}/content"): own_files(query={"path": "x.png"}),
    ("GET", "/"): page(),
    ("GET", "/catalog"): page(),
    ("GET", "/files"): page(),
    ("GET", "/files/{family}"): Rule({303}, {404}, {404}, {404}),  # no such family: a 404 page
    ("GET", "/usage"): page(),
    ("GET", "/account"): page(),
    ("GET", "/admin/instances"): admin_page(),
    ("GET", "/admin/users"): admin_page(),
    ("GET", "/admin/audit"): admin_page(),
    ("GET", "/admin/templates"): admin_page(),
    ("GET", "/admin/health"): admin_page(),
    ("GET", "/admin/gpus"): admin_page(),
    ("GET", "/admin/costs"): admin_page(),
    # The GPU page's form buttons: anonymous visitors are sent to sign in, users get a 403 page,
    # and an admin a 404 page for the literal `{gpu_id}`, which names no card.
    ("POST", "/admin/gpus/{gpu_id}/cordon"): Rule({303}, {403}, {403}, {404}),
    ("POST", "/admin/gpus/{gpu_id}/drain"): Rule({303}, {403}, {403}, {404}),
    ("POST", "/admin/gpus/{gpu_id}/uncordon"): Rule({303}, {403}, {403}, {404}),
    ("GET", "/lang/{code}"): public({303}, query={"next": "/"}),
    ("GET", "/static/{path:path}"): public({404}),  # the literal path names no file
    ("GET", "/_aigc/favicon.svg"): public({200}),
}


def app_routes() -> Iterator[tuple[str, str]]:
    """(method, path) for every route the app actually serves, routers included."""

    def walk(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
        for route in routes:
            nested = getattr(route, "original_router", None)
            yield from walk(nested.routes) if nested is not None else [route]

    from aigc_gateway.settings import Settings

    for route in walk(create_app(Settings(dev=True)).routes):
        assert isinstance(route, APIRoute | Route), f"unexpected route type {route!r}"
        for method in sorted((route.methods or set()) - {"HEAD"}):
            yield method, route.path


def test_every_route_has_a_rule() -> None:
    served = set(app_routes())
    missing = served - RULES.keys()
    assert not missing, f"routes without an access rule: {sorted(missing)}"
    stale = RULES.keys() - served
    assert not stale, f"rules for routes that no longer exist: {sorted(stale)}"


class Fixtures:
    """Makes fresh objects for path parameters, owned by alice (the owner)."""

    def __init__(
        self, gw: RunningGateway, admin: httpx.AsyncClient, owner: httpx.AsyncClient
    ) -> None:
        self.gw, self.admin, self.owner = gw, admin, owner
        self.counter = itertools.count()

    async def instance(self) -> str:
        r = await self.owner.post("/api/instances", json={"template": "missing-binary"})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def user(self) -> str:
        r = await self.admin.post(
            "/api/users", json={"name": f"target{next(self.counter)}", "password": "long-enough"}
        )
        return str(r.json()["id"])

    async def team(self) -> str:
        r = await self.admin.post("/api/teams", json={"name": f"team{next(self.counter)}"})
        return str(r.json()["id"])

    async def token(self) -> str:
        return str((await self.owner.post("/api/tokens", json={"name": "t"})).json()["id"])

    async def session(self) -> str:
        async with httpx.AsyncClient(base_url=self.gw.url) as browser:
            await browser.post("/auth/login", data={"username": "alice", "password": "pw-alice"})
            sessions = (await browser.get("/api/me/sessions")).json()
        return str(sessions[0]["id"])

    async def path(self, template: str) -> str:
        values: dict[str, str] = {
            "{action}": "pause",
            "{template_id}": "tiny",
            "{scope}": "user",
            "{name}": "carol",
        }
        if "{instance_id}" in template:
            values["{instance_id}"] = await self.instance()
        if "{share_id}" in template:
            r = await self.owner.post(
                f"/api/instances/{values['{instance_id}']}/shares", json={"team": "matrix"}
            )
            assert r.status_code == 201, r.text
            values["{share_id}"] = r.json()["id"]
        if "{user_id}" in template:
            values["{user_id}"] = await self.user()
        if "{team_id}" in template:
            values["{team_id}"] = await self.team()
        if "{token_id}" in template:
            values["{token_id}"] = await self.token()
        if "{session_id}" in template:
            values["{session_id}"] = await self.session()
        for key, value in values.items():
            template = template.replace(key, value)
        return template


PASSWORDS = {"other": "pw-bob", "owner": "pw-alice", "admin": "pw-admin-matrix"}


class Credentials:
    """One client per (role, credential): anonymous; per signed-in role a browser session (its
    CSRF token sent with every request) and its tokens. The ``all`` tokens are the fixtures'
    (every scope; ``admin`` only counts for the admin); the narrower ones are minted by each
    role's session."""

    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw
        self.names = {"other": "bob", "owner": "alice"}
        full = {"other": gw.bob, "owner": gw.alice, "admin": gw.admin_token}
        self.clients = {"anon": {"none": httpx.AsyncClient(base_url=gw.url)}}
        for role, token in full.items():
            self.clients[role] = {"all": self._bearer(token)}

    def _bearer(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.gw.url, headers={"Authorization": f"Bearer {token}"})

    async def open(self) -> None:
        root = self.clients["admin"]["all"]
        me = (await root.get("/api/me")).json()
        self.names["admin"] = me["name"]
        reset = await root.post(
            f"/api/users/{me['id']}/password", json={"password": PASSWORDS["admin"]}
        )
        assert reset.status_code == 204, reset.text
        for role in PASSWORDS:
            session = self.clients[role]["session"] = httpx.AsyncClient(base_url=self.gw.url)
            await self.sign_in(role)
            for credential, scopes in TOKEN_SCOPES.items():
                made = await session.post(
                    "/api/tokens", json={"name": credential, "scopes": scopes}
                )
                assert made.status_code == 201, made.text
                self.clients[role][credential] = self._bearer(made.json()["token"])

    async def sign_in(self, role: str) -> None:
        browser = self.clients[role]["session"]
        form = {"username": self.names[role], "password": PASSWORDS[role]}
        assert (await browser.post("/auth/login", data=form)).status_code == 303
        browser.headers["X-CSRF-Token"] = (await browser.get("/api/me")).json()["csrf_token"]

    def each(self) -> Iterator[tuple[str, str, httpx.AsyncClient]]:
        for role in ROLES:
            for credential, client in self.clients[role].items():
                yield role, credential, client

    async def aclose(self) -> None:
        for _, _, client in self.each():
            await client.aclose()


# Every caller tries the wrong password once (POST /auth/login): no rate limit may lock alice out.
LIMITS = {
    "max_instances_per_user": 1000,
    "login_max_failures_per_account": 1000,
    "login_max_failures_per_address": 1000,
}


@pytest.mark.timeout(360)  # about 1,200 requests: a few seconds' CPU, minutes on a busy machine
@pytest.mark.parametrize("gateway_settings", [LIMITS], indirect=True)
async def test_route_role_credential_matrix(gateway: RunningGateway) -> None:
    creds = Credentials(gateway)
    try:
        await creds.open()
        admin, owner = creds.clients["admin"]["all"], creds.clients["owner"]["all"]
        await admin.post("/api/users", json={"name": "carol", "password": "long-enough"})
        await admin.post("/api/teams", json={"name": "matrix"})
        fx = Fixtures(gateway, admin, owner)
        failures = []
        for (method, template), rule in sorted(RULES.items()):
            ask = _read if method in READ_METHODS else _change
            for role, credential, status in await ask(creds, fx, method, template, rule):
                want = expected(rule, method, role, credential)
                if status not in want:
                    failures.append(
                        f"{method} {template} as {role} with {credential}: {status}, "
                        f"expected {sorted(want)}"
                    )
        assert not failures, "\n".join(failures)
    finally:
        await creds.aclose()


Answers = list[tuple[str, str, int]]


async def _read(
    creds: Credentials, fx: Fixtures, method: str, template: str, rule: Rule
) -> Answers:
    """Every caller reads the same objects, all at once (a read changes nothing)."""
    path = await fx.path(template)
    callers = list(creds.each())
    statuses = await asyncio.gather(
        *(_status(client, method, path, None, rule) for _, _, client in callers)
    )
    return [(role, cred, status) for (role, cred, _), status in zip(callers, statuses, strict=True)]


async def _change(
    creds: Credentials, fx: Fixtures, method: str, template: str, rule: Rule
) -> Answers:
    """Every caller in turn; after a change that went through, fresh objects for the next one, so
    that one caller's DELETE cannot hide another's answer."""
    answers = []
    path = await fx.path(template)
    for role, credential, client in creds.each():
        body = rule.body and {
            k: (f"x{next(fx.counter)}" if v == "{fresh}" else v) for k, v in rule.body.items()
        }
        status = await _status(client, method, path, body, rule)
        answers.append((role, credential, status))
        if status < 400:
            path = await fx.path(template)
        if rule.ends_session and credential == "session":
            await creds.sign_in(role)
    return answers


async def _status(client: httpx.AsyncClient, method: str, path: str, body: Any, rule: Rule) -> int:
    if path.endswith("/events/stream"):
        async with client.stream(method, path) as response:
            return response.status_code
    response = await client.request(method, path, json=body, data=rule.form, params=rule.query)
    return response.status_code
