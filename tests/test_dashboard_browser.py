"""The dashboard in a real browser (Debian Chromium + Playwright): the user journey and the
admin journey, in English and Chinese, and sign-in through the test OIDC provider."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, expect

from tests.conftest import RunningGateway
from tests.support.browser import chromium, context, shot

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("chromium"),
]

LOCALES = {"en": "en-US", "zh-CN": "zh-CN"}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as running:
        yield running


async def sign_in(page: Page, gw: RunningGateway, user: str, password: str) -> None:
    await page.goto(f"{gw.url}/")
    await expect(page).to_have_url(re.compile(r"/auth/login"))
    await page.get_by_label(re.compile("user name|用户名", re.I)).fill(user)
    await page.locator("input[name=password]").fill(password)
    await page.locator("form[action='/auth/login'] button[type=submit]").click()
    await expect(page.get_by_test_id("nav-user")).to_contain_text(user)


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
async def test_user_journey(browser: Browser, gateway: RunningGateway, lang: str) -> None:
    async with context(browser, locale=LOCALES[lang]) as ctx:
        page = await ctx.new_page()
        await sign_in(page, gateway, "alice", "pw-alice")
        assert await page.locator("html").get_attribute("lang") == lang
        await shot(page, f"user-{lang}-1-instances-empty")

        # Install the demo engine from the catalog (a double click makes one instance).
        await page.goto(f"{gateway.url}/catalog")
        await expect(page.get_by_test_id("template-demo")).to_be_visible()
        await shot(page, f"user-{lang}-2-catalog")
        await page.get_by_test_id("create-demo").dblclick()
        await page.goto(f"{gateway.url}/")
        cards = page.locator("[data-testid^=instance-]")
        await expect(cards).to_have_count(1)
        card = cards.first
        instance_id = (await card.get_attribute("data-testid") or "").removeprefix("instance-")
        await expect(page.get_by_test_id(f"progress-{instance_id}")).to_be_attached()
        await expect(card).to_have_attribute("data-state", "running", timeout=60_000)
        await shot(page, f"user-{lang}-3-running")

        # Open it: the gateway hands the browser over to the instance's own host.
        async with ctx.expect_page() as opened:
            await page.get_by_test_id(f"open-{instance_id}").click(modifiers=["Control"])
        engine = await opened.value
        if engine.url == "about:blank":
            await engine.wait_for_load_state()
        await expect(engine.locator("#generate")).to_be_visible(timeout=30_000)
        await engine.locator("#prompt").fill("a red fox in snow")
        await engine.locator("#generate").click()
        await expect(engine.locator("#gallery img")).to_have_count(1, timeout=30_000)
        await shot(engine, f"user-{lang}-4-engine-output")
        await engine.close()

        # Pause, resume: the output is still in My files. The card offers only what the state
        # allows, live: a running one no Resume, a paused one no Pause, Open or Restart.
        pause, resume = (
            page.get_by_test_id(f"pause-{instance_id}"),
            page.get_by_test_id(f"resume-{instance_id}"),
        )
        await expect(resume).to_be_hidden()
        await pause.click()
        await expect(card).to_have_attribute("data-state", "paused", timeout=30_000)
        await expect(resume).to_be_visible()
        for hidden in ("pause", "open", "restart", "leave-queue"):
            await expect(page.get_by_test_id(f"{hidden}-{instance_id}")).to_be_hidden()
        await resume.click()
        await expect(card).to_have_attribute("data-state", "running", timeout=60_000)
        await expect(pause).to_be_visible()
        await expect(resume).to_be_hidden()
        await page.goto(f"{gateway.url}/files/demo?path=outputs")
        await expect(page.locator("[data-testid^=file-][data-testid$='.png']")).to_have_count(1)
        await expect(page.get_by_test_id("quota")).to_be_visible()
        await shot(page, f"user-{lang}-5-files")

        await page.get_by_test_id("sign-out").click()
        await page.goto(f"{gateway.url}/")
        await expect(page).to_have_url(re.compile(r"/auth/login"))


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
async def test_admin_journey(browser: Browser, gateway: RunningGateway, lang: str) -> None:
    from tests.support.gateway import Api

    alice, bob = Api(gateway.url, gateway.alice), Api(gateway.url, gateway.bob)
    try:
        ids = [(await alice.create("tiny"))["id"], (await bob.create("tiny"))["id"]]
        for api, iid in zip((alice, bob), ids, strict=True):
            await api.wait_state(iid, "running")
        async with context(browser, locale=LOCALES[lang]) as admin_ctx, context(browser) as bob_ctx:
            bob_page = await bob_ctx.new_page()
            await sign_in(bob_page, gateway, "bob", "pw-bob")
            page = await admin_ctx.new_page()
            admin_password = "admin-pass-123"
            await _set_password(gateway, "admin", admin_password)
            await sign_in(page, gateway, "admin", admin_password)
            await page.goto(f"{gateway.url}/admin/instances")
            for iid in ids:
                await page.get_by_test_id(f"select-{iid}").check()
            await shot(page, f"admin-{lang}-1-instances")
            # Running instances allow no resume: the batch skips them and says so.
            await page.get_by_test_id("batch-resume").click()
            await expect(page.locator("[data-testid=batch-result] li.skipped")).to_have_count(2)
            await page.get_by_test_id("batch-pause").click()
            await expect(page.get_by_test_id("batch-result")).to_be_visible()
            await expect(page.locator("[data-testid=batch-result] li.ok")).to_have_count(2)
            for api, iid in zip((alice, bob), ids, strict=True):
                assert (await api.wait_state(iid, "paused"))["state"] == "paused"
            await page.goto(f"{gateway.url}/admin/users")
            await page.get_by_test_id("disable-bob").click()
            await expect(page.get_by_test_id("enable-bob")).to_be_visible()
            await shot(page, f"admin-{lang}-2-users")
            # Bob is signed out at once.
            await bob_page.goto(f"{gateway.url}/")
            await expect(bob_page).to_have_url(re.compile(r"/auth/login"))
    finally:
        await alice.aclose()
        await bob.aclose()


async def _set_password(gw: RunningGateway, name: str, password: str) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {gw.admin_token}"}
    async with httpx.AsyncClient(base_url=gw.url, headers=headers) as api:
        users = {u["name"]: u["id"] for u in (await api.get("/api/users")).json()}
        r = await api.post(f"/api/users/{users[name]}/password", json={"password": password})
        assert r.status_code == 204


UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
               && !e.getAttribute('aria-labelledby'))
  .map(e => e.outerHTML)"""


async def test_accessibility_basics_and_phone_width(
    browser: Browser, gateway: RunningGateway
) -> None:
    async with context(browser, width=375) as ctx:
        page = await ctx.new_page()
        await sign_in(page, gateway, "alice", "pw-alice")
        for path in ("/", "/catalog", "/files", "/account", "/usage"):
            await page.goto(f"{gateway.url}{path}")
            assert await page.evaluate(UNLABELLED) == [], path
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 1, (path, overflow)
        await shot(page, "phone-account")
        # Keyboard: tabbing from the top reaches the sign-out button.
        await page.goto(f"{gateway.url}/")
        for _ in range(40):
            await page.keyboard.press("Tab")
            if await page.evaluate("document.activeElement.dataset.testid") == "sign-out":
                break
        else:
            raise AssertionError("sign-out is not reachable with the keyboard")


ONE_GPU = [{"id": "GPU-aaaa", "type": "rtx4090", "memory_gib": 24}]


@pytest.mark.parametrize("gateway_settings", [{"gpus": ONE_GPU}], indirect=True)
async def test_gpu_queue_live_and_the_admin_gpu_page(
    browser: Browser, gateway: RunningGateway
) -> None:
    from tests.support.gateway import Api

    alice, bob = Api(gateway.url, gateway.alice), Api(gateway.url, gateway.bob)
    try:
        holder = await alice.wait_state((await alice.create("tiny-gpu"))["id"], "running")
        waiter = await bob.wait_state((await bob.create("tiny-gpu-any"))["id"], "queued")
        wid = waiter["id"]
        async with context(browser, locale="zh-CN") as bob_ctx, context(browser) as admin_ctx:
            page = await bob_ctx.new_page()
            await sign_in(page, gateway, "bob", "pw-bob")
            card = page.get_by_test_id(f"instance-{wid}")
            await expect(card.locator("[data-role=state]")).to_have_text("排队中")
            await expect(page.get_by_test_id(f"queue-{wid}")).to_contain_text("排第 1 位")
            await expect(page.get_by_test_id(f"leave-queue-{wid}")).to_be_visible()
            for hidden in ("open", "pause", "resume", "restart"):
                await expect(page.get_by_test_id(f"{hidden}-{wid}")).to_be_hidden()
            await shot(page, "gpu-zh-CN-1-queued")
            # The GPU frees: the card starts live, and the next refresh shows its GPU.
            await alice.act(holder["id"], "pause")
            await expect(card).to_have_attribute("data-state", "running", timeout=60_000)
            await expect(card.locator("[data-role=state]")).to_have_text("运行中")
            await expect(page.get_by_test_id(f"queue-{wid}")).to_be_hidden()
            await expect(page.get_by_test_id(f"leave-queue-{wid}")).to_be_hidden()
            for shown in ("open", "pause", "restart"):
                await expect(page.get_by_test_id(f"{shown}-{wid}")).to_be_visible()
            await expect(page.get_by_test_id(f"resume-{wid}")).to_be_hidden()
            await expect(page.get_by_test_id(f"gpu-{wid}")).to_contain_text("1 块整卡")

            admin = await admin_ctx.new_page()
            await _set_password(gateway, "admin", "admin-pass-123")
            await sign_in(admin, gateway, "admin", "admin-pass-123")
            await admin.goto(f"{gateway.url}/admin/gpus")
            row = admin.get_by_test_id("gpu-GPU-aaaa")
            await expect(row).to_contain_text("bob")
            await admin.get_by_test_id("cordon-GPU-aaaa").click()
            await expect(admin.get_by_test_id("gpu-notice")).to_contain_text("cordoned")
            # Drain asks first; then bob's engine goes back to the queue, live on his page.
            admin.once("dialog", lambda dialog: dialog.accept())
            await admin.get_by_test_id("drain-GPU-aaaa").click()
            await expect(admin.get_by_test_id("gpu-notice")).to_contain_text("drained")
            await expect(card).to_have_attribute("data-state", "queued", timeout=60_000)
            await expect(page.get_by_test_id(f"queue-{wid}")).to_contain_text("排第 1 位")
            await expect(page.get_by_test_id(f"leave-queue-{wid}")).to_be_visible()
            await expect(page.get_by_test_id(f"pause-{wid}")).to_be_hidden()
            await admin.reload()
            await expect(admin.get_by_test_id(f"queued-{wid}")).to_contain_text("bob")
            await shot(admin, "gpu-en-2-admin")
            await admin.get_by_test_id("uncordon-GPU-aaaa").click()
            await expect(admin.get_by_test_id("gpu-notice")).to_contain_text("back in placement")
            await expect(card).to_have_attribute("data-state", "running", timeout=60_000)
    finally:
        await alice.aclose()
        await bob.aclose()
