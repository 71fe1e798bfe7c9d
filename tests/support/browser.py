"""A real browser for the dashboard tests: Debian's Chromium driven by Playwright.

Playwright's own browser download is never used (it cannot work here); it launches
``/usr/bin/chromium`` headless with no background networking. Screenshots go to
``test-artifacts/`` (kept by CI as artifacts).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, Page, async_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


def chromium_available() -> bool:
    return os.path.exists(CHROMIUM)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def context(
    browser: Browser, *, locale: str = "en-US", width: int = 1280
) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(
        locale=locale,
        extra_http_headers={"Accept-Language": locale},
        viewport={"width": width, "height": 900},
    )
    ctx.set_default_timeout(30_000)
    try:
        yield ctx
    finally:
        await ctx.close()


async def shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
