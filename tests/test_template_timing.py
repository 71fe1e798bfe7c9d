"""A template's own times are the ones applied and reported: its stop grace (not the gateway's),
and its readiness time-out in the failure reason (not what was left of it when the controller was
woken meanwhile). Real engines through the real gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

from aigc_gateway.settings import Settings
from tests.support.gateway import REPO, Api, make_settings, tiny_template

STUBBORN = REPO / "tests" / "runtime" / "engines" / "engine.py"
"""Serves HTTP, and ignores SIGTERM (``--ignore-term``): only the kill after the grace ends it."""


@pytest.fixture
def gateway_settings(tmp_path: Path) -> Settings:
    # The gateway-wide grace is long; the template's own is short.
    settings = make_settings(tmp_path, stop_grace_s=30)
    (settings.templates_dir / "stubborn.yaml").write_text(
        f"""
id: stubborn
family: stubborn
version: "1"
display: {{name: {{en: Stubborn engine, zh-CN: 固执的引擎}}}}
launch:
  command: ["{{python}}", "{STUBBORN}", "--data-dir", "{{data_dir}}", "--ignore-term"]
  stop_grace_s: 0.5
readiness: {{http: /, timeout_s: 20}}
"""
    )
    (settings.templates_dir / "slow-ready.yaml").write_text(
        tiny_template("slow-ready", "--no-listen", timeout_s=2)
    )
    return settings


async def test_a_pause_kills_after_the_templates_grace(
    alice: Api, caplog: pytest.LogCaptureFixture
) -> None:
    inst = await alice.wait_state((await alice.create("stubborn"))["id"], "running", "failed")
    assert inst["state"] == "running", inst["reason"]
    await alice.act(inst["id"], "pause")
    # With the gateway's 30 s grace this wait would give up first.
    assert (await alice.wait_state(inst["id"], "paused", timeout=20))["state"] == "paused"
    kills = [r.getMessage() for r in caplog.records if "killing it" in r.getMessage()]
    assert kills == ["engine still running after 0.5 s, killing it"]


async def test_a_readiness_time_out_reports_the_templates_time_out(alice: Api) -> None:
    # The resync wakes the controller every 0.3 s while it waits for readiness.
    inst = await alice.create("slow-ready")
    failed = await alice.wait_state(inst["id"], "failed", timeout=30)
    assert failed["reason"].startswith("engine did not become ready within 2 s (readiness: GET /")
