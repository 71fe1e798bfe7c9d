"""Template reloads never stop for good and never fail unseen: the folder watch keeps going
through failures (with back-off, catching up on what it missed), and a SIGHUP reload is a tracked
task whose failure is logged. The real registry, store and watcher; fake time for the back-off."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from aigc_gateway.app import create_app, lifespan
from aigc_gateway.store.db import Database
from aigc_gateway.templates.loader import Catalog
from aigc_gateway.templates.registry import TemplateRegistry
from tests.support.faketime import FakeTime
from tests.support.faults import StoreFault
from tests.support.gateway import make_settings, stop_engines_async, tiny_template


class Registry(TemplateRegistry):
    """The real registry; says when a reload went through."""

    def __init__(self, directory: Path, db: Database) -> None:
        super().__init__(directory, db)
        self.reloaded = asyncio.Event()

    async def reload(self) -> Catalog:
        catalog = await super().reload()
        self.reloaded.set()
        return catalog


async def test_the_template_watch_survives_failures_and_catches_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await db.migrate()
    folder = tmp_path / "templates"  # missing at first: the watch itself fails
    registry = Registry(folder, db)
    time = FakeTime({})  # every back-off is held until released
    watch = asyncio.create_task(registry.watch(sleep=time.sleep), name="template-watch")
    try:
        await time.until(lambda: len(time.waits["template-watch"]) == 1)
        folder.mkdir()
        (folder / "tiny.yaml").write_text(tiny_template("tiny"))
        StoreFault(db.write_engine).queued.append(sqlite3.OperationalError("database is locked"))
        time.release("template-watch")  # catches up with a reload: the store is locked
        await time.until(lambda: len(time.waits["template-watch"]) == 2)
        assert registry.get("tiny") is None and not registry.reloaded.is_set()
        time.release("template-watch")  # the store is back: the reload goes through
        async with asyncio.timeout(30):
            await registry.reloaded.wait()
        assert registry.get("tiny") is not None
        assert time.waits["template-watch"] == [1.0, 2.0]
        assert not watch.done()
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await db.close()
    failures = [r for r in caplog.records if r.getMessage().startswith("template watch failed")]
    assert [type(r.exc_info[1]).__name__ for r in failures if r.exc_info] == [
        "FileNotFoundError",
        "TemporaryError",
    ]


async def test_a_failed_sighup_reload_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, watch_templates=False)
    app = create_app(settings)
    tried = asyncio.Event()

    async def broken() -> Catalog:
        tried.set()
        raise RuntimeError("the template folder is on a lost mount")

    # If the handler were missing, SIGHUP must not end the test run.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        async with lifespan(app):
            monkeypatch.setattr(app.state.gateway.registry, "reload", broken)
            os.kill(os.getpid(), signal.SIGHUP)
            async with asyncio.timeout(30):
                await tried.wait()
    finally:
        signal.signal(signal.SIGHUP, previous)
        await stop_engines_async(settings)
    failures = [r for r in caplog.records if r.getMessage() == "template-reload failed"]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR and failures[0].exc_info
    assert "lost mount" in str(failures[0].exc_info[1])
