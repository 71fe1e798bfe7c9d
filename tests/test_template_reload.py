"""Template reloads never stop for good and never fail unseen: the folder watch keeps going
through failures (with back-off, catching up on what it missed), and a SIGHUP reload is a guarded
duty whose failure is logged and retried. The real registry, store and watcher; fake time for the back-off."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
from collections import Counter as Tally
from pathlib import Path

import pytest

from aigc_gateway.app import create_app, lifespan, template_duties
from aigc_gateway.catalog.loader import Catalog
from aigc_gateway.catalog.registry import TemplateRegistry
from aigc_gateway.metrics import Metrics
from aigc_gateway.store.db import STORE_RETRY_S, Database
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


class Steps(Metrics):
    """Records the duties' steps and failures."""

    def __init__(self) -> None:
        self.steps: Tally[str] = Tally()
        self.failures: Tally[str] = Tally()

    def job_step(self, job: str, seconds: float) -> None:
        assert seconds >= 0
        self.steps[job] += 1

    def job_failed(self, job: str) -> None:
        self.failures[job] += 1


async def test_the_template_watch_survives_failures_and_catches_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await db.migrate()
    folder = tmp_path / "templates"  # missing at first: the watch itself fails
    registry = Registry(folder, db)
    time = FakeTime({})  # every back-off is held until released
    metrics = Steps()
    duties, _ = template_duties(registry, metrics, watch=True, sleep=time.sleep)
    watch = duties.tasks["template-watch"]
    try:
        await time.until(lambda: len(time.waits["template-watch"]) == 1)
        # A failed watch took no step (nothing was reloaded), but it is counted.
        assert metrics.failures["template-watch"] == 1 and metrics.steps["template-watch"] == 0
        folder.mkdir()
        (folder / "tiny.yaml").write_text(tiny_template("tiny"))
        StoreFault(db.write_engine).queued.append(sqlite3.OperationalError("database is locked"))
        time.release("template-watch")  # catches up with a reload: the store is locked
        await time.until(lambda: len(time.waits["template-watch"]) == 2)
        assert registry.get("tiny") is None and not registry.reloaded.is_set()
        assert metrics.failures["template-watch"] == 2 and metrics.steps["template-watch"] == 1
        time.release("template-watch")  # the store is back: the reload goes through
        async with asyncio.timeout(30):
            await registry.reloaded.wait()
        assert registry.get("tiny") is not None
        # A bug's back-off, then the temporary error's own delay.
        assert time.waits["template-watch"] == [1.0, STORE_RETRY_S]
        assert not watch.done()
    finally:
        await duties.close()
        await db.close()
    assert watch.cancelled()
    failures = [r for r in caplog.records if r.getMessage().startswith("duty template-watch")]
    assert [
        (r.levelno, type(r.exc_info[1]).__name__ if r.exc_info else None) for r in failures
    ] == [
        (logging.ERROR, "FileNotFoundError"),  # a bug (here: a missing folder): its traceback
        (logging.WARNING, None),  # the store is busy: one line
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
            exposed = (await app.state.gateway.metrics.exposition()).decode()
            assert 'aigc_duty_failures_total{duty="template-reload"} 1.0' in exposed
            assert 'aigc_duty_steps_total{duty="template-reload"} 1.0' in exposed
            assert app.state.gateway.controller.alive  # the app goes on
    finally:
        signal.signal(signal.SIGHUP, previous)
        await stop_engines_async(settings)
    failures = [
        r for r in caplog.records if r.getMessage().startswith("duty template-reload failed")
    ]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR and failures[0].exc_info
    assert "lost mount" in str(failures[0].exc_info[1])
