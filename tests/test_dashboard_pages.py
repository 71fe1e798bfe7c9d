"""The dashboard's pages, as a browser sees them (httpx with the session cookie): sign-in and
roles, both languages, the element contract the browser tests rely on, filters, batch actions
through the API, and one query per list (no N+1)."""

from __future__ import annotations

import csv
import html as htmllib
import io
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from aigc_gateway.accounting.core import format_money
from aigc_gateway.doctor import gpu_summary
from aigc_gateway.settings import Settings
from tests.conftest import RunningGateway
from tests.support.fake_mps import install_fake_mps
from tests.support.gateway import Api, add_user, make_settings

USER_PAGES = ["/", "/catalog", "/files", "/usage", "/account"]
ADMIN_PAGES = [
    "/admin/instances",
    "/admin/users",
    "/admin/audit",
    "/admin/templates",
    "/admin/health",
    "/admin/gpus",
    "/admin/costs",
]
ZH = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}


async def signed_in(url: str, user: str, password: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=url, timeout=30)
    r = await client.post("/auth/login", data={"username": user, "password": password})
    assert r.status_code == 303, r.text
    return client


async def csrf(client: httpx.AsyncClient) -> str:
    return str((await client.get("/api/me")).json()["csrf_token"])


@pytest.fixture
async def browser(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    client = await signed_in(gateway.url, "alice", "pw-alice")
    yield client
    await client.aclose()


@pytest.fixture
async def root(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    """An administrator's browser."""
    await add_user(gateway.settings, "root", admin=True)
    client = await signed_in(gateway.url, "root", "pw-root")
    yield client
    await client.aclose()


def has_testid(html: str, testid: str) -> bool:
    return f'data-testid="{testid}"' in html


def assert_frame(html: str, user: str) -> None:
    """What every dashboard page has: <main>, <nav>, the user, sign-out, language switch."""
    assert "<main" in html and "<nav" in html
    assert re.search(rf'data-testid="nav-user"[^>]*>{user}<', html)
    for testid in ("sign-out", "lang-en", "lang-zh-CN"):
        assert has_testid(html, testid), testid
    assert '<meta name="csrf-token" content="' in html
    assert 'src="/static/app.js' in html and 'href="/static/app.css' in html
    assert "https://" not in html.split("</head>")[0]  # nothing from a CDN


async def test_anonymous_visitors_are_sent_to_sign_in(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as anon:
        for path in [*USER_PAGES, *ADMIN_PAGES, "/files/demo", "/admin/audit?actor=x"]:
            r = await anon.get(path)
            assert r.status_code == 303, path
            location = r.headers["location"]
            assert location.startswith("/auth/login?next=")
            follow = await anon.get(location)
            assert follow.status_code == 200 and 'name="password"' in follow.text
        r = await anon.get("/admin/audit?actor=x")
        assert r.headers["location"] == "/auth/login?next=%2Fadmin%2Faudit%3Factor%3Dx"


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
async def test_user_pages_render_in_both_languages(browser: httpx.AsyncClient, lang: str) -> None:
    headers = ZH if lang == "zh-CN" else {"Accept-Language": "en-US,en;q=0.9"}
    for path in USER_PAGES:
        r = await browser.get(path, headers=headers)
        assert r.status_code == 200, (path, r.text[:300])
        assert f'<html lang="{lang}">' in r.text, path
        assert_frame(r.text, "alice")
        assert ("我的实例" in r.text) == (lang == "zh-CN"), path
        assert ("My instances" in r.text) == (lang == "en"), path
        assert "/admin/" not in r.text  # no admin links for users
        assert r.headers["content-security-policy"].startswith("default-src 'self'")


async def test_admin_pages_refuse_users_and_serve_admins(
    browser: httpx.AsyncClient, root: httpx.AsyncClient
) -> None:
    for path in ADMIN_PAGES:
        refused = await browser.get(path)
        assert refused.status_code == 403, path
        assert_frame(refused.text, "alice")
        assert "for administrators" in refused.text
        for headers, lang in ((ZH, "zh-CN"), ({}, "en")):
            r = await root.get(path, headers=headers)
            assert r.status_code == 200, (path, r.text[:300])
            assert f'<html lang="{lang}">' in r.text
            assert_frame(r.text, "root")
            assert 'href="/admin/users"' in r.text
    zh = await root.get("/admin/health", headers=ZH)
    assert "运行状况" in zh.text and "GPU 清单" in zh.text


async def test_language_switch_sets_a_cookie_and_returns_safely(
    browser: httpx.AsyncClient,
) -> None:
    r = await browser.get("/lang/zh-CN", params={"next": "/catalog?x=1"})
    assert r.status_code == 303 and r.headers["location"] == "/catalog?x=1"
    assert "lang=zh-CN" in r.headers["set-cookie"]
    page = await browser.get("/catalog", headers={"Accept-Language": "en"})
    assert '<html lang="zh-CN">' in page.text and "引擎目录" in page.text
    back = await browser.get("/lang/en", params={"next": "https://evil.example/"})
    assert back.headers["location"] == "/"
    assert '<html lang="en">' in (await browser.get("/", headers=ZH)).text
    unknown = await browser.get("/lang/xx", params={"next": "//evil.example"})
    assert unknown.status_code == 303 and unknown.headers["location"] == "/"
    assert "set-cookie" not in unknown.headers
    # The links on a page come back to the same page.
    assert 'href="/lang/zh-CN?next=%2F"' in (await browser.get("/")).text


async def test_sign_in_and_messages_are_translated(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as anon:
        zh = await anon.get("/auth/login", headers=ZH)
        assert '<html lang="zh-CN">' in zh.text and "用户名" in zh.text
        assert 'name="username"' in zh.text and 'name="password"' in zh.text
        assert 'name="next"' in zh.text
        en = await anon.post("/auth/login", data={"username": "alice", "password": "nope"})
        assert '<html lang="en">' in en.text and "wrong user name or password" in en.text
        out = await anon.get("/auth/logged-out", headers=ZH)
        assert "已退出登录" in out.text


async def test_sign_out_button_posts_the_csrf_token_as_a_form_field(
    browser: httpx.AsyncClient,
) -> None:
    html = (await browser.get("/")).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token and token.group(1) == await csrf(browser)
    assert re.search(r'<form method="post" action="/auth/logout"', html)
    out = await browser.post("/auth/logout", data={"csrf_token": token.group(1)})
    assert out.status_code == 303
    assert (await browser.get("/")).status_code == 303


async def test_catalog_has_a_card_and_a_create_button_per_template(
    gateway: RunningGateway, browser: httpx.AsyncClient
) -> None:
    templates = (await browser.get("/api/templates")).json()["templates"]
    html = (await browser.get("/catalog")).text
    for t in templates:
        assert has_testid(html, f"template-{t['id']}")
        assert has_testid(html, f"create-{t['id']}")
    assert "Demo engine" in html and "Needs no GPU" in html
    assert "not installed" in html.lower()  # sd-webui: not installed here, with the reason
    button = re.search(r'<button[^>]*data-testid="create-sd-webui"[^>]*>', html)
    assert button and "disabled" in button.group(0)
    zh = (await browser.get("/catalog", headers=ZH)).text
    assert "演示引擎" in zh and "无需 GPU" in zh
    # Icons are SVGs the gateway serves, not emoji (empty boxes without an emoji font).
    icons = re.findall(r'<img class="icon" src="([^"]+)"', html)
    assert "/static/icons/demo.svg" in icons
    assert len(icons) == html.count('data-testid="template-')
    for src in set(icons):
        served = await browser.get(src)
        assert served.status_code == 200
        assert served.headers["content-type"].startswith("image/svg+xml")
    assert not re.search("[\U0001f300-\U0001faff\u2728]", html)


async def test_my_instances_cards_follow_the_contract(
    gateway: RunningGateway, browser: httpx.AsyncClient, alice: Api, bob: Api
) -> None:
    token = await csrf(browser)
    created = await browser.post(
        "/api/instances",
        json={"template": "crash", "request_id": "click-1"},
        headers={"X-CSRF-Token": token},
    )
    assert created.status_code == 201
    again = await browser.post(  # a double click: same request id, same instance
        "/api/instances",
        json={"template": "crash", "request_id": "click-1"},
        headers={"X-CSRF-Token": token},
    )
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
    inst = created.json()
    failed = await alice.wait_state(inst["id"], "failed")
    theirs = await bob.create("tiny")
    shared = await bob.client.post(f"/api/instances/{theirs['id']}/shares", json={"user": "alice"})
    assert shared.status_code == 201
    html = (await browser.get("/")).text
    i = inst["id"]
    assert re.search(rf'data-testid="instance-{i}"[^>]*data-state="failed"', html)
    for testid in ("progress", "open", "pause", "resume", "restart", "delete", "share", "reason"):
        assert has_testid(html, f"{testid}-{i}"), testid
    assert f'href="{inst["url"]}"' in opening_tag(html, f"open-{i}")
    assert offered(html, i) == {"restart", "delete"}  # a failed card: no open, pause or resume
    reason = re.search(rf'data-testid="reason-{i}"[^>]*>\s*<p[^>]*>([^<]*)<', html)
    assert reason and failed["reason"] in reason.group(1) and "exit code" in reason.group(1)
    assert has_testid(html, "delete-data") and has_testid(html, "confirm-delete")
    assert re.search(r'<input type="checkbox" id="delete-data" data-testid="delete-data">', html)
    # An instance shared with alice: she may operate it, not delete or reshare it.
    s = theirs["id"]
    assert has_testid(html, f"instance-{s}") and "shared by bob" in html
    assert "pause" in offered(html, s) and not has_testid(html, f"delete-{s}")
    assert not has_testid(html, f"share-{s}")
    # Bob's page lists the share.
    bob_browser = await signed_in(gateway.url, "bob", "pw-bob")
    try:
        assert "user alice" in (await bob_browser.get("/")).text
    finally:
        await bob_browser.aclose()


async def test_home_streams_continue_after_the_newest_event(
    browser: httpx.AsyncClient, alice: Api
) -> None:
    inst = await alice.create("tiny")
    await alice.wait_state(inst["id"], "running")
    newest = await alice.last_event_id(inst["id"])
    html = (await browser.get("/")).text
    assert re.search(rf'data-id="{inst["id"]}"[^>]*data-after="{newest}"', html)
    assert re.search(rf'data-testid="progress-{inst["id"]}"[^>]*max="5" value="5"', html)


async def test_files_and_account_pages_follow_the_contract(
    gateway: RunningGateway, browser: httpx.AsyncClient
) -> None:
    token = await csrf(browser)
    r = await browser.put(
        "/api/files/demo/content",
        params={"path": "outputs/cat.png"},
        content=b"\x89PNG fake",
        headers={"X-CSRF-Token": token},
    )
    assert r.status_code == 201, r.text
    index = (await browser.get("/files")).text
    assert has_testid(index, "quota-demo") and 'href="/files/demo"' in index
    top = (await browser.get("/files/demo")).text
    assert (
        has_testid(top, "file-outputs") and has_testid(top, "upload") and has_testid(top, "quota")
    )
    assert "of 1.0 GiB used" in top  # the demo template's quota
    inner = (await browser.get("/files/demo", params={"path": "outputs"})).text
    assert has_testid(inner, "file-cat.png")
    assert 'src="/api/files/demo/content?path=outputs/cat.png"' in inner  # inline preview
    assert has_testid(inner, "confirm-delete")
    for bad in ("../x", "/etc", "nope"):
        assert (await browser.get("/files/demo", params={"path": bad})).status_code in (400, 404)
    assert (await browser.get("/files/no-such-family")).status_code == 404
    account = (await browser.get("/account")).text
    for testid in ("token-name", "token-create", "token-secret"):
        assert has_testid(account, testid)
    assert 'id="password-form"' in account


async def test_admin_instances_filters_and_batch_actions(
    gateway: RunningGateway, root: httpx.AsyncClient, alice: Api, bob: Api, admin: Api
) -> None:
    a1 = await alice.create("missing-binary", name="a1")
    a2 = await alice.create("missing-binary", name="a2")
    b1 = await bob.create("tiny-idle", name="b1")
    team = (await admin.client.post("/api/teams", json={"name": "designers"})).json()
    users = {u["name"]: u["id"] for u in (await admin.client.get("/api/users")).json()}
    await admin.client.put(f"/api/teams/{team['id']}/members/{users['bob']}")
    html = (await root.get("/admin/instances")).text
    for testid in ("batch-pause", "batch-resume", "batch-restart", "batch-delete", "batch-result"):
        assert has_testid(html, testid)
    for inst in (a1, a2, b1):
        assert has_testid(html, f"select-{inst['id']}")

    async def shown(**params: str) -> set[str]:
        page = (await root.get("/admin/instances", params=params)).text
        listed = re.findall(r'data-testid="select-([0-9a-f]{32})"', page)
        # The REST API's search is the page's: the same rows, in the same order.
        answer = await admin.client.get("/api/admin/instances", params=params)
        assert answer.status_code == 200, answer.text
        assert [i["id"] for i in answer.json()["items"]] == listed, params
        return set(listed)

    assert await shown(user="alice") == {a1["id"], a2["id"]}
    assert await shown(team="designers") == {b1["id"]}
    assert await shown(template="tiny-idle") == {b1["id"]}
    await alice.wait_state(a1["id"], "failed")
    await alice.wait_state(a2["id"], "failed")
    assert {a1["id"], a2["id"]} <= await shown(state="failed")
    assert b1["id"] not in await shown(state="failed", user="bob")
    assert await shown(user="nobody") == set()
    # Paged: one at a time, newest first, the same three as the page's first screen.
    seen, page_no = [], 0
    while True:
        body = (
            await admin.client.get("/api/admin/instances", params={"page": page_no, "page_size": 1})
        ).json()
        seen += [(i["id"], i["owner"]) for i in body["items"]]
        if not body["has_more"]:
            break
        page_no += 1
    assert seen == [(b1["id"], "bob"), (a2["id"], "alice"), (a1["id"], "alice")]
    assert (
        await admin.client.get("/api/admin/instances", params={"state": "nap"})
    ).status_code == 422
    assert (await alice.client.get("/api/admin/instances")).status_code == 403
    # Each row says what its state allows: the batch buttons act on those rows only.
    failed_rows = (await root.get("/admin/instances", params={"state": "failed"})).text
    assert 'data-actions="restart delete"' in opening_tag(failed_rows, f"row-{a1['id']}")
    # What the batch buttons do: the existing API, per id, with the session's CSRF token.
    token = {"X-CSRF-Token": await csrf(root)}
    results = {
        i: (await root.post(f"/api/instances/{i}/pause", headers=token)).status_code
        for i in (a1["id"], a2["id"], "0" * 32)
    }
    assert results == {a1["id"]: 202, a2["id"]: 202, "0" * 32: 404}
    for i in (a1["id"], a2["id"]):
        r = await root.delete(f"/api/instances/{i}", params={"delete_data": "false"}, headers=token)
        assert r.status_code == 202
    for i in (a1["id"], a2["id"]):
        await alice.wait_state(i, "deleted")
    assert await shown(user="alice") == set()


async def test_admin_users_audit_templates_and_health(
    gateway: RunningGateway, root: httpx.AsyncClient, admin: Api
) -> None:
    html = (await root.get("/admin/users")).text
    for name in ("alice", "bob", "root"):
        for testid in (f"user-{name}", f"admin-{name}", f"disable-{name}", f"enable-{name}"):
            assert has_testid(html, testid)
    bob_row = re.search(r'<tr data-testid="user-bob" data-id="([0-9a-f]+)"', html)
    assert bob_row
    token = {"X-CSRF-Token": await csrf(root)}
    r = await root.patch(f"/api/users/{bob_row.group(1)}", json={"disabled": True}, headers=token)
    assert r.status_code == 200 and r.json()["disabled"]
    html = (await root.get("/admin/users", params={"q": "bo"})).text
    assert re.search(r'data-testid="user-bob"[^>]*data-disabled="yes"', html)
    assert not has_testid(html, "user-alice")
    team = await root.post("/api/teams", json={"name": "render-farm"}, headers=token)
    assert team.status_code == 201
    await root.put(f"/api/teams/{team.json()['id']}/members/{bob_row.group(1)}", headers=token)
    html = (await root.get("/admin/users")).text
    assert "render-farm (1 members)" in html and f'data-team="{team.json()["id"]}"' in html
    # The REST API's user search is the page's: the same users, in the same order, with teams.
    for params in ({}, {"q": "bo"}, {"q": "o"}, {"q": "nobody"}):
        page = (await root.get("/admin/users", params=params)).text
        listed = re.findall(r'<tr data-testid="user-([^"]+)"', page)
        answer = (await admin.client.get("/api/admin/users", params=params)).json()
        assert [u["name"] for u in answer["items"]] == listed, params
    bob = (await admin.client.get("/api/admin/users", params={"q": "bob"})).json()["items"]
    assert [(u["name"], u["teams"], u["disabled"]) for u in bob] == [("bob", ["render-farm"], True)]
    first = (await admin.client.get("/api/admin/users", params={"page_size": 2})).json()
    second = (await admin.client.get("/api/admin/users", params={"page_size": 2, "page": 1})).json()
    assert (
        first["has_more"]
        and [u["name"] for u in first["items"] + second["items"]]
        == sorted(u["name"] for u in (await admin.client.get("/api/users")).json())[
            : 2 + len(second["items"])
        ]
    )
    # Audit: filters and paging with `before`.
    audit = (await root.get("/admin/audit", params={"action": "user."})).text
    assert "user.update" in audit and "auth.login" not in audit
    ids = [int(x) for x in re.findall(r'data-testid="audit-(\d+)"', audit)]
    older = (await root.get("/admin/audit", params={"before": str(min(ids))})).text
    assert all(int(x) < min(ids) for x in re.findall(r'data-testid="audit-(\d+)"', older))
    by_actor = (await root.get("/admin/audit", params={"actor": "root"})).text
    assert set(re.findall(r"<td>(alice|bob|root)</td><td class=\"mono\">", by_actor)) == {"root"}
    # Templates: the loaded ones, and a broken file with its field.
    (gateway.settings.templates_dir / "broken.yaml").write_text(
        "id: broken\nfamily: broken\nversion: '1'\ndisplay: {name: {en: B}}\nlaunch: {command: []}\n"
    )
    assert (await admin.client.post("/api/templates/reload")).status_code == 200
    templates = (await root.get("/admin/templates")).text
    assert has_testid(templates, "admin-template-demo") and "demo.yaml" in templates
    assert "broken.yaml" in templates and "launch.command" in templates
    health = (await root.get("/admin/health")).text
    gpus, detail = gpu_summary()
    assert ("GPU inventory: none (CPU only)" in health) == (not gpus)
    assert detail in health and "resync passes" in health


async def test_static_files_are_served_by_the_gateway(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as anon:
        js = await anon.get("/static/app.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert "X-CSRF-Token" in js.text
        css = await anon.get("/static/app.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        again = await anon.get("/static/app.css", headers={"If-None-Match": css.headers["etag"]})
        assert again.status_code == 304
        for bad in ("/static/../app.py", "/static/%2e%2e/pages.py", "/static/", "/static/nope.js"):
            assert (await anon.get(bad)).status_code == 404, bad


async def test_every_page_links_a_served_favicon(
    gateway: RunningGateway, browser: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as anon:
        pages = [(anon, "/auth/login"), (browser, "/"), (browser, "/catalog")]
        pages += [(browser, "/nope"), (anon, "/nope")]  # a browser's "Not found" page
        for client, path in pages:
            html = (await client.get(path, headers={"Accept": "text/html"})).text
            link = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', html)
            assert link, path
            icon = await anon.get(link.group(1))
            assert icon.status_code == 200, (path, link.group(1))
            assert icon.headers["content-type"].startswith("image/svg+xml")


@contextmanager
def counting_queries() -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", count)


@pytest.mark.parametrize(
    "gateway_settings",
    [{"max_instances_per_user": 50, "reconcile_interval_s": 3600}],  # no background queries
    indirect=True,
)
async def test_pages_make_one_query_per_list(
    gateway: RunningGateway, browser: httpx.AsyncClient, root: httpx.AsyncClient, alice: Api
) -> None:
    async def queries(client: httpx.AsyncClient, path: str) -> int:
        await client.get(path)  # warm: session touch and the like
        with counting_queries() as seen:
            assert (await client.get(path)).status_code == 200
        return len(seen)

    await alice.wait_state((await alice.create("missing-binary", name="first"))["id"], "failed")
    few = {p: await queries(browser, p) for p in ("/", "/account", "/usage")}
    admin_pages = ("/admin/instances", "/admin/users", "/admin/costs")
    admin_few = {p: await queries(root, p) for p in admin_pages}
    for n in range(12):
        more = await alice.create("missing-binary", name=f"more-{n}")
        await alice.wait_state(more["id"], "failed")
        await add_user(gateway.settings, f"user{n}")
    assert {p: await queries(browser, p) for p in few} == few
    assert {p: await queries(root, p) for p in admin_few} == admin_few


# -- GPUs ---------------------------------------------------------------------------------------

GPU_CARDS = [
    {"id": "GPU-aaaa", "type": "rtx4090", "memory_gib": 24, "pool": "onprem", "pool_rank": 1},
    {"id": "GPU-bbbb", "index": 1, "type": "a100-80g", "memory_gib": 80, "pool": "cloud"},
]


def text_of(html: str, testid: str) -> str:
    """The text inside the element with this test id (tags dropped, spaces collapsed)."""
    found = re.search(rf'data-testid="{re.escape(testid)}"[^>]*>(.*?)</(?:p|tr|li)>', html, re.S)
    assert found, testid
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", found.group(1))).split())


CARD_BUTTONS = ("open", "leave-queue", "pause", "resume", "restart", "delete")


def offered(html: str, instance_id: str) -> set[str]:
    """The buttons a card shows (the others are there, hidden, for the live updates)."""
    return {
        b
        for b in CARD_BUTTONS
        if has_testid(html, f"{b}-{instance_id}")
        and " hidden" not in opening_tag(html, f"{b}-{instance_id}")
    }


def opening_tag(html: str, testid: str) -> str:
    found = re.search(rf'<[a-z]+ [^>]*data-testid="{re.escape(testid)}"[^>]*>', html)
    assert found, testid
    return found.group(0)


def form_token(html: str, action: str) -> str:
    """The CSRF token in the form that posts to ``action``."""
    found = re.search(
        rf'<form method="post" action="{re.escape(action)}"[^>]*>\s*'
        r'<input type="hidden" name="csrf_token" value="([^"]+)">',
        html,
    )
    assert found, action
    return found.group(1)


class TestGpuPages:
    """Two declared cards (an on-prem RTX 4090, a cloud A100) and the fake MPS control program."""

    @pytest.fixture
    def gateway_settings(self, tmp_path: Path) -> Settings:
        program, _ = install_fake_mps(tmp_path / "mps-bin")
        return make_settings(tmp_path, gpus=GPU_CARDS, mps_control=str(program))

    async def test_admin_page_lists_cards_holders_and_queue_and_cards_show_the_wait(
        self,
        gateway: RunningGateway,
        browser: httpx.AsyncClient,
        root: httpx.AsyncClient,
        alice: Api,
        bob: Api,
    ) -> None:
        whole = await alice.wait_state((await alice.create("tiny-gpu"))["id"], "running")
        share = await bob.wait_state((await bob.create("tiny-share-8"))["id"], "running")
        waiter = await alice.wait_state(
            (await alice.create("tiny-gpu", name="waiter"))["id"], "queued"
        )
        page = (await root.get("/admin/gpus")).text
        assert 'href="/admin/gpus" aria-current="page"' in page
        assert "2 GPU(s): 2 declared in the settings" in text_of(page, "gpu-source")
        assert "yes" in text_of(page, "gpu-mps")  # the control program is there
        a = opening_tag(page, "gpu-GPU-aaaa")
        assert 'data-mode="whole"' in a and 'data-cordon=""' in a
        assert 'data-mode="shared"' in opening_tag(page, "gpu-GPU-bbbb")
        row_b = text_of(page, "gpu-GPU-bbbb")
        assert "a100-80g" in row_b and "cloud (1)" in row_b and "8 / 80 GiB" in row_b
        held = text_of(page, f"holder-{whole['id']}")
        assert whole["name"] in held and "alice" in held and "whole card" in held
        shared = text_of(page, f"holder-{share['id']}")
        assert "bob" in shared and "8 GiB share" in shared
        for testid in ("cordon-GPU-aaaa", "drain-GPU-aaaa", "cordon-GPU-bbbb"):
            assert has_testid(page, testid), testid
        assert not has_testid(page, "uncordon-GPU-aaaa")
        queued = text_of(page, f"queued-{waiter['id']}")
        assert queued.startswith("1 waiter") and "alice" in queued
        assert "1 whole GPU(s) (rtx4090)" in queued and queued.endswith("unknown")
        zh = (await root.get("/admin/gpus", headers=ZH)).text
        assert "GPU 排队" in zh and "1 块整卡" in text_of(zh, f"queued-{waiter['id']}")
        assert "整卡" in text_of(zh, f"holder-{whole['id']}")

        # Alice's cards: the queued one says where it waits and can leave; the other its GPU.
        home = (await browser.get("/")).text
        wait = "Waiting for a GPU: position 1 of 1, wait unknown"
        assert text_of(home, f"queue-{waiter['id']}") == wait
        assert "hidden" not in opening_tag(home, f"queue-{waiter['id']}")
        message = re.search(
            rf'data-testid="instance-{waiter["id"]}".*?data-role="message">([^<]*)<', home, re.S
        )
        assert message and message.group(1) == ""  # the scheduler's English is not repeated
        assert 'data-action="pause"' in opening_tag(home, f"leave-queue-{waiter['id']}")
        # Queued: leave the queue or delete; not open, pause, resume or restart.
        assert offered(home, waiter["id"]) == {"leave-queue", "delete"}
        assert offered(home, whole["id"]) == {"open", "pause", "restart", "delete"}
        assert re.search(r'data-state="queued"[^>]*>.*?>Queued<', home, re.S)
        gpu = text_of(home, f"gpu-{whole['id']}")
        assert gpu.startswith("GPU: 1 whole card(s), rtx4090")
        assert "Placement: placed on GPU-aaaa (onprem, rtx4090)" in gpu
        assert "hidden" in opening_tag(home, f"queue-{whole['id']}")
        assert "hidden" in opening_tag(home, f"gpu-{waiter['id']}")
        zh_home = (await browser.get("/", headers=ZH)).text
        zh_wait = text_of(zh_home, f"queue-{waiter['id']}")
        assert "正在等待 GPU" in zh_wait and "排第 1 位" in zh_wait and "共 1 位" in zh_wait
        assert "等待时间未知" in zh_wait
        assert "排队中" in zh_home and "退出排队" in zh_home
        bob_browser = await signed_in(gateway.url, "bob", "pw-bob")
        try:
            bob_gpu = text_of((await bob_browser.get("/")).text, f"gpu-{share['id']}")
        finally:
            await bob_browser.aclose()
        assert bob_gpu.startswith("GPU: a 8 GiB share of one card, a100-80g")

        # Once a release has been seen the wait has an estimate (the share was held seconds).
        await bob.act(share["id"], "pause")
        await bob.wait_state(share["id"], "paused")
        home = (await browser.get("/")).text
        assert text_of(home, f"queue-{waiter['id']}") == (
            "Waiting for a GPU: position 1 of 1, about 1 min"
        )
        assert text_of((await root.get("/admin/gpus")).text, f"queued-{waiter['id']}").endswith(
            "about 1 min"
        )
        # "Leave queue" is the pause action; a restart of a queued instance is refused.
        token = {"X-CSRF-Token": await csrf(browser)}
        assert (await alice.get(waiter["id"]))["actions"] == ["leave_queue", "delete"]
        refused = await browser.post(f"/api/instances/{waiter['id']}/restart", headers=token)
        assert refused.status_code == 409 and refused.json()["code"] == "action_not_allowed"
        assert "waiting for a GPU" in refused.json()["message"]
        assert (
            await browser.post(f"/api/instances/{waiter['id']}/pause", headers=token)
        ).is_success
        await alice.wait_state(waiter["id"], "paused")
        home = (await browser.get("/")).text
        assert "hidden" in opening_tag(home, f"queue-{waiter['id']}")
        assert has_testid((await root.get("/admin/gpus")).text, "queue-empty")

    async def test_cordon_drain_and_uncordon_buttons(
        self, browser: httpx.AsyncClient, root: httpx.AsyncClient, admin: Api, alice: Api
    ) -> None:
        inst = await alice.wait_state((await alice.create("tiny-gpu"))["id"], "running")
        page = (await root.get("/admin/gpus")).text
        action = "/admin/gpus/GPU-bbbb/cordon"
        token = form_token(page, action)
        assert token == await csrf(root)

        async def cordons() -> list[str | None]:
            return [g["cordon"] for g in (await admin.client.get("/api/gpus")).json()["gpus"]]

        # Without the session's CSRF token, or as a user, nothing changes.
        assert (await root.post(action, data={})).status_code == 403
        assert (await root.post(action, data={"csrf_token": "forged"})).status_code == 403
        refused = await browser.post(action, data={"csrf_token": await csrf(browser)})
        assert refused.status_code == 403 and "for administrators" in refused.text
        assert await cordons() == [None, None]

        done = await root.post(action, data={"csrf_token": token})
        assert done.status_code == 303
        assert done.headers["location"] == "/admin/gpus?done=cordon&gpu=GPU-bbbb"
        page = (await root.get(done.headers["location"])).text
        assert text_of(page, "gpu-notice") == "GPU-bbbb is cordoned: it takes no new engines."
        assert 'data-cordon="cordon"' in opening_tag(page, "gpu-GPU-bbbb")
        assert has_testid(page, "uncordon-GPU-bbbb") and not has_testid(page, "cordon-GPU-bbbb")
        assert await cordons() == [None, "cordon"]

        # Drain the card alice's engine holds: it restarts, and (no other RTX card) waits.
        drained = await root.post("/admin/gpus/GPU-aaaa/drain", data={"csrf_token": token})
        assert drained.headers["location"] == "/admin/gpus?done=drain&gpu=GPU-aaaa&moved=1"
        zh = (await root.get(drained.headers["location"], headers=ZH)).text
        notice = text_of(zh, "gpu-notice")
        assert "GPU-aaaa 已排空" in notice and "1 个引擎正在别处重启" in notice
        await alice.wait_state(inst["id"], "queued")
        assert await cordons() == ["drain", "cordon"]

        back = await root.post("/admin/gpus/GPU-aaaa/uncordon", data={"csrf_token": token})
        assert back.headers["location"] == "/admin/gpus?done=uncordon&gpu=GPU-aaaa"
        started = await alice.wait_state(inst["id"], "running")
        assert started["gpu"]["gpu_ids"] == ["GPU-aaaa"]
        assert await cordons() == [None, "cordon"]
        audit = (await admin.client.get("/api/audit", params={"action": "gpu."})).json()
        assert [(e["action"], e["actor"], e["target_id"]) for e in audit] == [
            ("gpu.uncordon", "root", "GPU-aaaa"),
            ("gpu.drain", "root", "GPU-aaaa"),
            ("gpu.cordon", "root", "GPU-bbbb"),
        ]
        # A card that does not exist: a 404 page; a notice naming one is not shown.
        missing = await root.post("/admin/gpus/GPU-nope/cordon", data={"csrf_token": token})
        assert missing.status_code == 404 and "GPU-nope" in missing.text
        fake = (await root.get("/admin/gpus", params={"done": "cordon", "gpu": "GPU-x"})).text
        assert not has_testid(fake, "gpu-notice")


@pytest.mark.parametrize("gateway_settings", [{"gpu_discovery": False}], indirect=True)
async def test_gpu_page_without_gpus_says_so(
    gateway: RunningGateway, root: httpx.AsyncClient
) -> None:
    page = (await root.get("/admin/gpus")).text
    assert "This gateway has no GPU" in text_of(page, "no-gpus")
    assert '<table id="gpus"' not in page and has_testid(page, "queue-empty")
    assert "GPU discovery is off" in text_of(page, "gpu-source")
    zh = (await root.get("/admin/gpus", headers=ZH)).text
    assert "此网关没有 GPU" in text_of(zh, "no-gpus")


# -- usage and costs ----------------------------------------------------------------------------

PRICES = """
currency: USD
prices:
  - effective_from: 2026-01-01
    gpu_hour: {rtx4090: 2.00}
    share_gib_hour_default: 0.10
    cpu_hour: 1.00
"""
RUN = timedelta(hours=2)
"""How long each test instance runs by the ledger's clock: 4.00 USD on the GPU, 2.00 on CPU."""


class LedgerClock:
    """The ledger's clock (the controller's): from 09:00 UTC on 15 November 2026, real time
    passing plus an offset the test moves on, so an instance runs for hours of ledger time
    without the test waiting, and every figure falls on one known day whenever the test runs."""

    START = datetime(2026, 11, 15, 9, tzinfo=UTC)
    DAY = "2026-11-15"

    def __init__(self) -> None:
        self.offset = timedelta()
        self._began = time.monotonic()

    def __call__(self) -> datetime:
        return self.START + timedelta(seconds=time.monotonic() - self._began) + self.offset


def figure(html: str, testid: str, role: str, attr: str = "data-seconds") -> int:
    """An integer a usage summary (``figures`` in _usage.html) carries for its figure."""
    block = html.split(f'data-testid="{testid}"', 1)[1].split("</dl>", 1)[0]
    found = re.search(rf'data-role="{role}" {attr}="(-?\d+)"', block)
    assert found, (testid, role)
    return int(found.group(1))


def chart_bars(html: str, testid: str) -> dict[str, tuple[float, float]]:
    """The bars of a chart: label → (value, drawn length: width or height)."""
    figure_html = html.split(f'data-testid="{testid}"', 1)[1].split("</figure>", 1)[0]
    assert "<svg" in figure_html and 'role="img"' in figure_html
    assert re.search(r"<title id=[^>]+>[^<]+</title>", figure_html)  # named for screen readers
    found = re.findall(
        r'<g class="bar" data-label="([^"]*)" data-value="([^"]+)">\s*<title>[^<]+</title>\s*'
        r'<rect x="[^"]+" y="[^"]+" width="([^"]+)" height="([^"]+)"',
        figure_html,
    )
    vertical = "chart-vertical" in html.split(f'data-testid="{testid}"', 1)[0][-80:]
    return {
        htmllib.unescape(label): (float(value), float(height if vertical else width))
        for label, value, width, height in found
    }


def link(html: str, testid: str) -> str:
    found = re.search(rf'<a href="([^"]+)" data-testid="{re.escape(testid)}"', html)
    assert found, testid
    return htmllib.unescape(found.group(1))


async def csv_rows(client: httpx.AsyncClient, url: str) -> list[list[str]]:
    r = await client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(r.text)))


class TestUsagePages:
    """A price book (a whole RTX 4090 at 2.00 USD an hour, CPU at 1.00) and a ledger clock the
    tests move on: alice runs an engine on the GPU for two hours, bob one on CPU."""

    @pytest.fixture
    def ledger_clock(self) -> LedgerClock:
        return LedgerClock()

    @pytest.fixture
    def clock(self, ledger_clock: LedgerClock) -> LedgerClock:
        return ledger_clock

    @pytest.fixture
    def gateway_settings(self, tmp_path: Path, clock: LedgerClock) -> Settings:
        prices = tmp_path / "prices.yaml"
        prices.write_text(PRICES)
        program, _ = install_fake_mps(tmp_path / "mps-bin")
        return make_settings(
            tmp_path, gpus=GPU_CARDS[:1], mps_control=str(program), pricebook=prices
        )

    @staticmethod
    async def run_for(api: Api, template: str, clock: LedgerClock) -> dict[str, Any]:
        """Start an instance, let :data:`RUN` pass on the ledger's clock, pause it: pausing
        closes its ledger rows."""
        inst = await api.wait_state((await api.create(template))["id"], "running")
        clock.offset += RUN
        await api.act(inst["id"], "pause")
        await api.wait_state(inst["id"], "paused")
        return inst

    @pytest.fixture
    async def used(
        self, admin: Api, alice: Api, bob: Api, clock: LedgerClock
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Alice (team design) ran ``tiny-gpu``, bob (no team) ``tiny``, each for two hours."""
        team = await admin.client.post("/api/teams", json={"name": "design"})
        alice_id = (await alice.client.get("/api/me")).json()["id"]
        member = await admin.client.put(f"/api/teams/{team.json()['id']}/members/{alice_id}")
        assert member.status_code == 204, member.text
        return await self.run_for(alice, "tiny-gpu", clock), await self.run_for(bob, "tiny", clock)

    async def test_my_usage_shows_my_instances_chart_budgets_and_a_csv_that_adds_up(
        self, browser: httpx.AsyncClient, used: tuple[dict[str, Any], dict[str, Any]]
    ) -> None:
        mine, bobs = used
        page = (await browser.get("/usage")).text
        assert 'href="/usage" aria-current="page"' in page
        name, hours, active, idle, gpu, amount, currency = text_of(
            page, f"usage-instance-{mine['id']}"
        ).split()
        assert name == mine["name"] and 2.0 <= float(hours) < 2.1 and active == "0.00"
        assert idle == gpu == hours and currency == "USD" and 4.0 <= float(amount) < 4.2
        assert not has_testid(page, f"usage-instance-{bobs['id']}")  # only my own
        seconds = figure(page, "usage-recent", "hours")
        assert RUN.total_seconds() <= seconds < RUN.total_seconds() + 300
        assert figure(page, "usage-recent", "idle") == seconds  # no request went through
        assert figure(page, "usage-recent", "gpu") == seconds  # one whole GPU
        micros = figure(page, "usage-recent", "cost", "data-micros")
        assert 4_000_000 <= micros < 4_200_000  # 2 h at 2.00 USD
        assert figure(page, "usage-month", "cost", "data-micros") == micros

        # Cost per day: 30 bars ending today; today's holds it all, at full height.
        bars = chart_bars(page, "chart-daily")
        days = list(bars)
        assert (days[0], days[-1]) == ("2026-10-17", LedgerClock.DAY)
        assert bars[LedgerClock.DAY][0] == micros and bars[LedgerClock.DAY][1] > 100
        assert sum(length for _, length in bars.values()) == bars[LedgerClock.DAY][1]
        assert text_of(page, f"usage-period-{LedgerClock.DAY}").endswith(
            f"{format_money(micros, 'USD')}"
        )

        # The CSV link downloads the same figures: the TOTAL line matches the page.
        rows = await csv_rows(browser, link(page, "csv-instance"))
        assert rows[0] == [
            "instance", "period", "hours", "active_hours", "idle_hours", "gpu_hours", "cost_USD"
        ]  # fmt: skip
        assert [r[0] for r in rows[1:-1]] == [mine["name"]]
        total = rows[-1]
        assert total[0] == "TOTAL" and float(total[2]) == round(seconds / 3600, 4)
        assert Decimal(total[6]) * 1_000_000 == micros
        by_day = await csv_rows(browser, link(page, "csv-periods"))
        assert by_day[-1] == total and all(r[1] for r in by_day[1:-1])
        weeks = (await browser.get("/usage", params={"per": "week"})).text
        assert re.search(r'data-testid="usage-period-\d{4}-W\d{2}"', weeks)
        assert "/api/usage/report?by=instance&amp;period=week" in weeks

        zh = (await browser.get("/usage", headers=ZH)).text
        assert '<html lang="zh-CN">' in zh
        for words in ("本月", "最近 30 天", "按实例", "下载 CSV", "您没有适用的预算"):
            assert words in zh, words
        assert mine["name"] in text_of(zh, f"usage-instance-{mine['id']}")

    async def test_admin_costs_charts_idle_waste_and_downloads(
        self,
        browser: httpx.AsyncClient,
        root: httpx.AsyncClient,
        used: tuple[dict[str, Any], dict[str, Any]],
    ) -> None:
        gpu_inst, cpu_inst = used
        refused = await browser.get("/admin/costs")
        assert refused.status_code == 403 and "for administrators" in refused.text
        page = (await root.get("/admin/costs")).text
        assert 'href="/admin/costs" aria-current="page"' in page
        assert 'data-testid="costs-month">2026-11<' in page and not has_testid(page, "next-month")
        assert link(page, "prev-month") == "/admin/costs?month=2026-10"
        total = figure(page, "costs-total", "cost", "data-micros")
        assert 6_000_000 <= total < 6_300_000  # 4.00 USD on the GPU and 2.00 on CPU

        teams = chart_bars(page, "chart-team")
        assert list(teams) == ["design", "No team"]  # highest first
        (design, design_len), (none, none_len) = teams["design"], teams["No team"]
        assert design + none == total and design > none > 0
        assert design_len > none_len > 0
        assert abs(none_len / design_len - none / design) < 0.01  # lengths are proportional
        gpus = chart_bars(page, "chart-gpu-type")
        assert list(gpus) == ["rtx4090", "No GPU (CPU only)"]
        assert gpus["rtx4090"][0] == design
        assert "4.0" in text_of(page, "costs-user-alice") and "costs-user-bob" in page
        days = chart_bars(page, "chart-daily")
        assert len(days) == 30 and days[LedgerClock.DAY][0] == total

        # Idle waste: both engines were held with no request, the GPU one first.
        ranked = re.findall(r'data-testid="idle-instances-([^"]+)"', page)
        assert ranked == [gpu_inst["id"], cpu_inst["id"]]
        assert re.findall(r'data-testid="idle-users-[^"]+"', page) != []
        idle = text_of(page, f"idle-instances-{gpu_inst['id']}")
        assert idle.startswith(f"{gpu_inst['name']} alice") and " 100% " in idle

        # Each grouping downloads as CSV; the team one adds up to the page's total.
        downloads = re.findall(r'<li><a href="([^"]+)" download>', page)
        assert len(downloads) == 8
        team_csv = await csv_rows(root, htmllib.unescape(downloads[0]))
        assert sorted(r[0] for r in team_csv[1:-1]) == ["(none)", "design"]
        assert Decimal(team_csv[-1][6]) * 1_000_000 == total
        assert (await browser.get(htmllib.unescape(downloads[0]))).status_code == 403

        # Another month: nothing used; a malformed one is a 400 page.
        empty = (await root.get("/admin/costs", params={"month": "2026-02"})).text
        assert has_testid(empty, "chart-team-empty") and has_testid(empty, "next-month")
        assert link(empty, "prev-month") == "/admin/costs?month=2026-01"
        feb = chart_bars(empty, "chart-daily")
        assert len(feb) == 28 and {v for v, _ in feb.values()} == {0}
        bad = await root.get("/admin/costs", params={"month": "2026-13"})
        assert bad.status_code == 400

        zh = (await root.get("/admin/costs", headers=ZH)).text
        for words in ("按团队的费用", "按 GPU 型号的费用", "闲置浪费", "无团队", "下载 CSV"):
            assert words in zh, words
        assert "无团队" in chart_bars(zh, "chart-team")


async def test_budget_banner_warns_past_the_soft_limit_and_refuses_past_the_hard_one(
    browser: httpx.AsyncClient, root: httpx.AsyncClient, admin: Api, alice: Api
) -> None:
    assert not has_testid((await browser.get("/")).text, "budget-banner")
    assert has_testid((await browser.get("/usage")).text, "no-budgets")
    assert has_testid((await root.get("/admin/costs")).text, "no-budgets")

    set_soft = await admin.client.put("/api/budgets/user/alice", json={"soft": "0"})
    assert set_soft.status_code == 200, set_soft.text  # soft 0: any spending is past it
    home = (await browser.get("/")).text
    banner = opening_tag(home, "budget-banner")
    assert 'data-level="warning"' in banner and 'role="status"' in banner
    words = text_of(home, "budget-banner")
    assert words.startswith("Your budget is past its warning limit: 0.00 USD spent of 0.00 USD")
    zh = text_of((await browser.get("/", headers=ZH)).text, "budget-banner")
    assert "您的预算已超过提醒额度" in zh and "0.00 USD" in zh
    mine = (await browser.get("/usage")).text
    assert 'data-level="warning"' in opening_tag(mine, "budget-user-alice")
    assert "Past the warning limit" in text_of(mine, "budget-user-alice")
    bobs = await signed_in(str(browser.base_url), "bob", "pw-bob")
    try:
        assert not has_testid((await bobs.get("/")).text, "budget-banner")  # not bob's budget
    finally:
        await bobs.aclose()

    both = {"soft": "0", "hard": "0", "pause_when_over": True}
    assert (await admin.client.put("/api/budgets/user/alice", json=both)).status_code == 200
    home = (await browser.get("/")).text
    assert home.count('data-testid="budget-banner"') == 1
    banner = opening_tag(home, "budget-banner")
    assert 'data-level="error"' in banner and 'role="alert"' in banner
    words = text_of(home, "budget-banner")
    assert "is used up" in words and "New starts are refused" in words
    assert "Running instances are paused" in words
    zh = text_of((await browser.get("/", headers=ZH)).text, "budget-banner")
    assert "新的启动将被拒绝" in zh
    refused = await alice.client.post("/api/instances", json={"template": "tiny"})
    assert refused.status_code == 409 and "budget" in refused.text

    costs_page = (await root.get("/admin/costs")).text
    row = text_of(costs_page, "budget-user-alice")
    assert row.startswith("User alice 0.00 USD") and "Limit reached" in row and "yes" in row


async def test_a_path_nothing_serves_is_a_not_found_page_for_browsers_only(
    gateway: RunningGateway, browser: httpx.AsyncClient
) -> None:
    html = {"Accept": "text/html,application/xhtml+xml"}
    signed_in = await browser.get("/no/such/page", headers=html)
    assert signed_in.status_code == 404 and signed_in.headers["content-type"].startswith("text/")
    assert has_testid(signed_in.text, "nav-user")  # the dashboard's page, with its navigation
    async with httpx.AsyncClient(base_url=gateway.url) as anon:
        plain = await anon.get("/no/such/page", headers={**html, "Accept-Language": "zh-CN"})
        assert plain.status_code == 404 and "未找到" in plain.text
        for path, headers in [("/no/such/page", {}), ("/api/nope", html), ("/nope", {})]:
            answer = await anon.get(path, headers=headers)
            assert answer.status_code == 404 and answer.json()["code"] == "not_found", path
        posted = await anon.post("/no/such/page", headers=html)
        assert posted.status_code == 404 and posted.json()["code"] == "not_found"
