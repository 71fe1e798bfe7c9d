"""Opening engines on their own hosts: hand-over, forward-auth (exact host match, instance-scoped
cookies), sharing, and a real nginx in front of instances (HTTP and WebSocket)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import websockets.sync.client
from websockets.exceptions import InvalidStatus, InvalidURI

from tests.conftest import RunningGateway
from tests.support.gateway import Api
from tests.support.nginx import NginxFront, nginx_in_front, require_nginx

# Both proxies serve instance traffic (proxy/front.py, and the ASGI one it hands over to):
# each behaviour here must hold on either.
pytestmark = pytest.mark.parametrize("proxy_fast_path", [True, False], ids=["front", "asgi"])


def host_of(inst: dict[str, object]) -> str:
    return f"{inst['slug']}.localhost"


async def forward(gw: RunningGateway, host: str, cookie: str | None = None) -> httpx.Response:
    headers = {"X-Original-URL": f"http://{host}/", "X-Original-Method": "GET"}
    if cookie:
        headers["Cookie"] = f"aigc_instance={cookie}"
    async with httpx.AsyncClient(base_url=gw.url) as client:
        return await client.get("/auth/forward", headers=headers)


async def open_instance(
    gw: RunningGateway, user: str, password: str, host: str
) -> httpx.AsyncClient:
    """Sign in on the gateway, hand over to ``host``; return the browser (its cookie jar holds the
    instance cookie). The caller closes it."""
    browser = httpx.AsyncClient(base_url=gw.url)
    r = await browser.post("/auth/login", data={"username": user, "password": password})
    assert r.status_code == 303
    r = await browser.get("/auth/instance-login", params={"rd": f"http://{host}/app?x=1"})
    assert r.status_code == 303, r.text
    handover = httpx.URL(r.headers["location"])
    assert handover.host == host and handover.path == "/_aigc/handover"
    # The instance host is served by the gateway itself here (nginx would pass /_aigc/ on).
    r = await browser.get(f"/_aigc/handover?{handover.query.decode()}", headers={"Host": host})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/app?x=1"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("aigc_instance=") and "HttpOnly" in cookie and "Domain" not in cookie
    browser.cookies.set("aigc_instance", cookie.split(";")[0].split("=", 1)[1], domain=host)
    # A hand-over token works once.
    again = await browser.get(f"/_aigc/handover?{handover.query.decode()}", headers={"Host": host})
    assert again.status_code == 403
    return browser


def instance_cookie(browser: httpx.AsyncClient, host: str) -> str:
    return next(
        c.value for c in browser.cookies.jar if c.name == "aigc_instance" and c.domain == host
    )


async def test_forward_auth_decisions(gateway: RunningGateway, alice: Api, bob: Api) -> None:
    a = await alice.create("missing-binary")
    b = await bob.create("missing-binary")
    host_a, host_b = host_of(a), host_of(b)
    assert (await forward(gateway, host_a)).status_code == 401  # not signed in there
    alice_browser = await open_instance(gateway, "alice", "pw-alice", host_a)
    bob_browser = await open_instance(gateway, "bob", "pw-bob", host_b)
    try:
        ca, cb = instance_cookie(alice_browser, host_a), instance_cookie(bob_browser, host_b)
        ok = await forward(gateway, host_a, ca)
        assert ok.status_code == 200
        assert ok.headers["X-Aigc-User"] == "alice" and ok.headers["X-Aigc-Instance"] == a["id"]
        # Bob's cookie for his own instance does not open Alice's (stolen or replayed).
        assert (await forward(gateway, host_a, cb)).status_code == 401
        # Hosts are matched exactly, never by substring or suffix.
        slug = a["slug"]
        for fake in (
            f"{slug}x.localhost",
            f"x{slug}.localhost",
            f"{slug}.localhost.evil.example",
            f"{slug}.evil.localhost",
            f"{slug[:-1]}.localhost",
            "localhost",
            "127.0.0.1",
        ):
            assert (await forward(gateway, fake, ca)).status_code == 403, fake
        # Bob cannot even start a hand-over to Alice's instance.
        r = await bob_browser.get("/auth/instance-login", params={"rd": f"http://{host_a}/"})
        assert r.status_code == 404 and "/_aigc/handover" not in r.headers.get("location", "")
        # rd must be an instance address: no open redirect through the hand-over.
        for rd in ("https://evil.example/", f"http://{host_a}@evil.example/", "/relative"):
            r = await alice_browser.get("/auth/instance-login", params={"rd": rd})
            assert r.status_code == 400, rd
        # Signing out ends every instance cookie the session handed out.
        csrf = (await alice_browser.get("/api/me")).json()["csrf_token"]
        await alice_browser.post("/auth/logout", headers={"X-CSRF-Token": csrf})
        assert (await forward(gateway, host_a, ca)).status_code == 401
    finally:
        await alice_browser.aclose()
        await bob_browser.aclose()


async def test_sharing_grants_use_but_not_delete_or_reshare(
    gateway: RunningGateway, alice: Api, bob: Api
) -> None:
    inst = await alice.create("missing-binary")
    await alice.wait_state(inst["id"], "failed")
    r = await alice.client.post(f"/api/instances/{inst['id']}/shares", json={"user": "bob"})
    assert r.status_code == 201
    share_id = r.json()["id"]
    assert (
        await alice.client.post(f"/api/instances/{inst['id']}/shares", json={"user": "bob"})
    ).status_code == 201
    assert (
        len((await alice.client.get(f"/api/instances/{inst['id']}/shares")).json()) == 1
    )  # idempotent
    listed = {i["id"] for i in (await bob.client.get("/api/instances")).json()}
    assert inst["id"] in listed
    assert (await bob.client.get(f"/api/instances/{inst['id']}")).status_code == 200
    assert (await bob.client.post(f"/api/instances/{inst['id']}/pause")).status_code == 202
    assert (await bob.client.delete(f"/api/instances/{inst['id']}")).status_code == 403
    r = await bob.client.post(f"/api/instances/{inst['id']}/shares", json={"user": "admin"})
    assert r.status_code == 403
    bob_browser = await open_instance(gateway, "bob", "pw-bob", host_of(inst))
    try:
        cookie = instance_cookie(bob_browser, host_of(inst))
        ok = await forward(gateway, host_of(inst), cookie)
        assert ok.status_code == 200 and ok.headers["X-Aigc-User"] == "bob"
        assert (
            await alice.client.delete(f"/api/instances/{inst['id']}/shares/{share_id}")
        ).status_code == 204
        # Revoked: at once, on the API and on the instance host.
        assert (await forward(gateway, host_of(inst), cookie)).status_code == 403
        assert (await bob.client.get(f"/api/instances/{inst['id']}")).status_code == 404
    finally:
        await bob_browser.aclose()


async def test_sharing_with_a_team(
    gateway: RunningGateway, alice: Api, bob: Api, admin: Api
) -> None:
    team = (await admin.client.post("/api/teams", json={"name": "studio"})).json()
    users = {u["name"]: u["id"] for u in (await admin.client.get("/api/users")).json()}
    assert (
        await admin.client.put(f"/api/teams/{team['id']}/members/{users['bob']}")
    ).status_code == 204
    inst = await alice.create("missing-binary")
    assert (
        await alice.client.post(f"/api/instances/{inst['id']}/shares", json={"team": "studio"})
    ).status_code == 201
    assert (await bob.client.get(f"/api/instances/{inst['id']}")).status_code == 200
    assert (
        await admin.client.delete(f"/api/teams/{team['id']}/members/{users['bob']}")
    ).status_code == 204
    assert (await bob.client.get(f"/api/instances/{inst['id']}")).status_code == 404


# -- through a real nginx ------------------------------------------------------------------------


@pytest.fixture
def front(gateway: RunningGateway) -> Iterator[NginxFront]:
    require_nginx()
    with nginx_in_front(gateway_url=gateway.url) as running:
        yield running


async def browse(
    front: NginxFront, gateway: RunningGateway, user: str, password: str, host: str
) -> httpx.AsyncClient:
    """A browser that opens ``host`` through nginx: redirected to sign in, signs in with the form,
    and is handed over back to the instance."""
    browser = httpx.AsyncClient(
        transport=front.async_transport(), follow_redirects=True, timeout=30
    )
    page = await browser.get(f"{front.url_for_host(host)}/")
    assert page.url.path == "/auth/login", page.url
    next_path = page.url.params["next"]
    await browser.post(
        f"{gateway.url}/auth/login",
        data={"username": user, "password": password, "next": next_path},
    )
    return browser


async def test_engine_through_nginx_sees_the_user_but_no_gateway_secrets(
    front: NginxFront, gateway: RunningGateway, alice: Api, bob: Api
) -> None:
    inst = await alice.wait_state((await alice.create("demo"))["id"], "running", "failed")
    assert inst["state"] == "running", inst["reason"]
    host = host_of(inst)
    browser = await browse(front, gateway, "alice", "pw-alice", host)
    try:
        page = await browser.get(f"{front.url_for_host(host)}/")
        assert page.status_code == 200 and "Demo engine" in page.text
        browser.cookies.set("theme", "dark", domain=host)
        echo = (
            await browser.get(
                f"{front.url_for_host(host)}/api/echo",
                headers={"Authorization": "Bearer agw_not_for_engines"},
            )
        ).json()
        headers = {k.lower(): v for k, v in echo["headers"].items()}
        assert headers["x-aigc-user"] == "alice"
        assert "authorization" not in headers
        assert set(echo["cookies"]) == {"theme"}  # neither aigc_instance nor aigc_session
        # WebSocket through nginx, with the instance cookie.
        cookie = instance_cookie(browser, host)
        with websockets.sync.client.connect(
            f"ws://{host}:{front.port}/ws",
            sock=front.connect(),
            additional_headers={"Cookie": f"aigc_instance={cookie}"},
        ) as ws:
            ws.send(json.dumps({"type": "ping"}))
            assert json.loads(ws.recv(timeout=10))["type"] == "pong"
    finally:
        await browser.aclose()

    # Bob, signed in, cannot open Alice's engine, over HTTP or WebSocket.
    intruder = await browse(front, gateway, "bob", "pw-bob", host)
    try:
        r = await intruder.get(f"{front.url_for_host(host)}/")
        assert r.status_code == 404 and "Demo engine" not in r.text
        assert not [c for c in intruder.cookies.jar if c.name == "aigc_instance"]
    finally:
        await intruder.aclose()
    # Without an instance cookie the handshake is answered with the sign-in redirect, which
    # the WebSocket client refuses to follow to an http:// URL.
    with pytest.raises((InvalidStatus, InvalidURI)) as refused:
        websockets.sync.client.connect(f"ws://{host}:{front.port}/ws", sock=front.connect())
    assert "/auth/instance-login" in str(refused.value) or "302" in str(refused.value)
    bob_inst = await bob.create("missing-binary")
    bob_browser = await open_instance(gateway, "bob", "pw-bob", host_of(bob_inst))
    try:
        bobs_cookie = instance_cookie(bob_browser, host_of(bob_inst))
        with pytest.raises((InvalidStatus, InvalidURI)):
            websockets.sync.client.connect(
                f"ws://{host}:{front.port}/ws",
                sock=front.connect(),
                additional_headers={"Cookie": f"aigc_instance={bobs_cookie}"},
            )
    finally:
        await bob_browser.aclose()
