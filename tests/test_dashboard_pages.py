"""The dashboard's pages, as a browser sees them (httpx with the session cookie): sign-in and
roles, both languages, the element contract the browser tests rely on, filters, batch actions
through the API, and one query per list (no N+1)."""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

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
    assert f'data-testid="open-{i}" href="{inst["url"]}"' in html
    reason = re.search(rf'data-testid="reason-{i}"[^>]*>\s*<p[^>]*>([^<]*)<', html)
    assert reason and failed["reason"] in reason.group(1) and "exit code" in reason.group(1)
    assert has_testid(html, "delete-data") and has_testid(html, "confirm-delete")
    assert re.search(r'<input type="checkbox" id="delete-data" data-testid="delete-data">', html)
    # An instance shared with alice: she may operate it, not delete or reshare it.
    s = theirs["id"]
    assert has_testid(html, f"instance-{s}") and "shared by bob" in html
    assert has_testid(html, f"pause-{s}") and not has_testid(html, f"delete-{s}")
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
        return set(re.findall(r'data-testid="select-([0-9a-f]{32})"', page))

    assert await shown(user="alice") == {a1["id"], a2["id"]}
    assert await shown(team="designers") == {b1["id"]}
    assert await shown(template="tiny-idle") == {b1["id"]}
    await alice.wait_state(a1["id"], "failed")
    await alice.wait_state(a2["id"], "failed")
    assert {a1["id"], a2["id"]} <= await shown(state="failed")
    assert b1["id"] not in await shown(state="failed", user="bob")
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
    few = {p: await queries(browser, p) for p in ("/", "/account")}
    admin_few = {p: await queries(root, p) for p in ("/admin/instances", "/admin/users")}
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
        assert "2 GPU(s) declared in the settings" in text_of(page, "gpu-source")
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
        assert "hidden" not in opening_tag(home, f"leave-queue-{waiter['id']}")
        assert 'data-action="pause"' in opening_tag(home, f"leave-queue-{waiter['id']}")
        assert re.search(r'data-state="queued"[^>]*>.*?>Queued<', home, re.S)
        gpu = text_of(home, f"gpu-{whole['id']}")
        assert gpu.startswith("GPU: 1 whole card(s), rtx4090")
        assert "Placement: placed on GPU-aaaa (onprem, rtx4090)" in gpu
        assert "hidden" in opening_tag(home, f"leave-queue-{whole['id']}")
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
        # "Leave queue" is the pause action.
        token = {"X-CSRF-Token": await csrf(browser)}
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
