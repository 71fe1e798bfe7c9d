"""The usage ledger, reports and budgets, end to end with real engines and a fake clock.

The gateway runs for real (app, controller, local runtime, tiny engine processes); only the
clock the ledger reads is replaced, so the test decides how long each instance held what and
checks the ledger and the reports to the second and to the micro-unit.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from aigc_gateway.settings import Settings
from tests.conftest import RunningGateway
from tests.support.fake_mps import install_fake_mps
from tests.support.gateway import (
    Api,
    FakeClock,
    add_user,
    make_settings,
    stop_engines_async,
    write_templates,
)
from tests.support.process import gateway_process

PRICES = """
currency: EUR
prices:
  - effective_from: 2026-01-01
    gpu_hour: {rtx4090: 2.00}
    share_gib_hour_default: 0.05
    cpu_hour: 0.60
  - effective_from: 2026-03-11
    cpu_hour: 1.20
"""
GPUS = [
    {"id": "GPU-aaaa", "type": "rtx4090", "memory_gib": 24, "pool": "onprem"},
    {"id": "GPU-bbbb", "index": 1, "type": "rtx4090", "memory_gib": 24, "pool": "onprem"},
]
T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


@dataclass
class Ledger:
    url: str
    clock: FakeClock
    alice: Api
    bob: Api
    admin: Api


@pytest.fixture
def ledger_clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def gateway_settings(tmp_path: Path) -> Settings:
    (tmp_path / "prices.yaml").write_text(PRICES)
    program, _ = install_fake_mps(tmp_path / "mps-bin")
    return make_settings(
        tmp_path,
        pricebook=tmp_path / "prices.yaml",
        gpus=GPUS,
        mps_control=str(program),
        max_instances_per_user=10,
    )


@pytest.fixture
def ledger(
    gateway: RunningGateway, ledger_clock: FakeClock, alice: Api, bob: Api, admin: Api
) -> Ledger:
    return Ledger(gateway.url, ledger_clock, alice, bob, admin)


async def rows(api: Api, instance_id: str) -> list[dict[str, Any]]:
    r = await api.client.get(f"/api/instances/{instance_id}/usage")
    assert r.status_code == 200, r.text
    return list(r.json())


async def report(api: Api, **params: str) -> dict[str, Any]:
    r = await api.client.get("/api/usage/report", params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def run_for(api: Api, clock: FakeClock, instance_id: str, **held: float) -> None:
    """Resume (or wait for the first start), hold for ``held`` of fake time, then pause."""
    await api.wait_state(instance_id, "running")
    clock.advance(**held)
    await api.act(instance_id, "pause")
    await api.wait_state(instance_id, "paused")


async def test_the_ledger_matches_what_happened_to_the_second(ledger: Ledger) -> None:
    alice, clock = ledger.alice, ledger.clock
    cpu = (await alice.create("tiny"))["id"]
    await run_for(alice, clock, cpu, hours=1)
    clock.advance(minutes=30)  # paused: nothing is held, nothing is billed
    await alice.act(cpu, "resume")
    await run_for(alice, clock, cpu, minutes=20)
    gpu = (await alice.create("tiny-gpu"))["id"]
    await run_for(alice, clock, gpu, hours=2)
    share = (await alice.create("tiny-share-8"))["id"]
    await run_for(alice, clock, share, minutes=90)

    cpu_rows = await rows(alice, cpu)
    assert [(r["seconds"], r["cost_micros"], r["resource"]) for r in cpu_rows] == [
        (3600, 600_000, "cpu"),
        (1200, 200_000, "cpu"),
    ]
    assert cpu_rows[0]["start_at"] == T0.isoformat().replace("+00:00", "Z")
    assert cpu_rows[0]["closed_by"] == "stop" and cpu_rows[0]["currency"] == "EUR"
    (gpu_row,) = await rows(alice, gpu)
    assert (gpu_row["resource"], gpu_row["gpu_type"], gpu_row["gpu_pool"]) == (
        "gpu",
        "rtx4090",
        "onprem",
    )
    assert (gpu_row["gpu_count"], gpu_row["seconds"], gpu_row["cost_micros"]) == (
        1,
        7200,
        4_000_000,
    )
    (share_row,) = await rows(alice, share)
    assert (share_row["resource"], share_row["share_gib"], share_row["cost_micros"]) == (
        "gpu_share",
        8.0,
        600_000,  # 8 GiB x 0.05 x 1.5 h
    )

    # The report adds up, by every grouping, to the same total.
    totals = set()
    for by in ("instance", "template", "resource", "gpu_type", "pool", "user", "team"):
        rep = await report(ledger.admin, by=by, period="day")
        assert sum(r["cost_micros"] for r in rep["rows"]) == rep["total"]["cost_micros"]
        assert sum(r["seconds"] for r in rep["rows"]) == rep["total"]["seconds"]
        totals.add((rep["total"]["seconds"], rep["total"]["cost_micros"]))
    assert totals == {(3600 + 1200 + 7200 + 5400, 600_000 + 200_000 + 4_000_000 + 600_000)}
    by_resource = await report(ledger.admin, by="resource", period="none")
    # (A day of stored data may be billed too, at 0 here: this price book has no storage price.)
    assert {r["key"]: r["gpu_hours"] for r in by_resource["rows"] if r["key"] != "storage"} == {
        "cpu": 0.0,
        "gpu": 2.0,
        "gpu_share": 0.0,
    }
    assert by_resource["total"]["cost"] == "5.40 EUR"
    # No proxy traffic reached these engines: all of it was idle.
    assert by_resource["total"]["idle_seconds"] == by_resource["total"]["seconds"]

    # CSV: the same lines, and the TOTAL line matches.
    r = await ledger.admin.client.get(
        "/api/usage/report", params={"by": "instance", "period": "none", "format": "csv"}
    )
    assert r.headers["content-type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(r.text)))
    assert lines[0][0] == "instance" and lines[-1][0] == "TOTAL"
    assert lines[-1][-1] == "5.4"
    # Bob sees none of it; a user cannot ask for everyone's.
    assert (await report(ledger.bob))["rows"] == []
    assert (await ledger.bob.client.get(f"/api/instances/{cpu}/usage")).status_code == 404
    r = await ledger.bob.client.get("/api/usage/report", params={"scope": "all"})
    assert r.status_code == 403


async def test_many_short_runs_are_billed_to_the_millisecond(ledger: Ledger) -> None:
    """Short pause/resume cycles: each row keeps its exact milliseconds, and the report rounds
    once (rows rounded to whole seconds each billed these 0.385 s runs as nothing)."""
    alice, clock = ledger.alice, ledger.clock
    cpu = (await alice.create("tiny"))["id"]
    for n in range(6):
        if n:
            await alice.act(cpu, "resume")
        await run_for(alice, clock, cpu, milliseconds=385)
        clock.advance(seconds=2)  # paused: nothing is held
    assert [r["milliseconds"] for r in await rows(alice, cpu)] == [385] * 6
    rep = await report(ledger.admin, by="instance", period="none")
    (line,) = [r for r in rep["rows"] if r["key"] == cpu]
    assert (line["milliseconds"], line["seconds"]) == (2310, 2)
    assert line["cost_micros"] == 6 * 64  # 0.60 EUR an hour: 64.17 micro-units a row
    assert rep["total"]["seconds"] == sum(r["seconds"] for r in rep["rows"])
    assert rep["total"]["milliseconds"] == sum(r["milliseconds"] for r in rep["rows"])


async def test_midnight_and_a_price_change_cut_the_interval(ledger: Ledger) -> None:
    alice, clock = ledger.alice, ledger.clock
    clock.at = datetime(2026, 3, 10, 23, 30, tzinfo=UTC)
    cpu = (await alice.create("tiny"))["id"]
    await run_for(alice, clock, cpu, hours=1)  # 23:30 .. 00:30, across the 11 March price change
    first, second = await rows(alice, cpu)
    assert (first["seconds"], first["cost_micros"], first["closed_by"]) == (1800, 300_000, "day")
    assert (second["seconds"], second["cost_micros"], second["closed_by"]) == (
        1800,
        600_000,  # the new price from its date on; the old day keeps the old price
        "stop",
    )
    days = await report(ledger.admin, by="user", period="day")
    # (Days with only stored data, billed at 0 here, have no engine seconds.)
    assert [(r["period"], r["seconds"]) for r in days["rows"] if r["seconds"]] == [
        ("2026-03-10", 1800),
        ("2026-03-11", 1800),
    ]
    month = await report(ledger.admin, by="user", period="month")
    assert [(r["period"], r["seconds"]) for r in month["rows"]] == [("2026-03", 3600)]


async def test_budgets_warn_once_then_refuse_new_starts(ledger: Ledger) -> None:
    alice, admin, clock = ledger.alice, ledger.admin, ledger.clock
    r = await admin.client.put("/api/budgets/user/alice", json={"soft": "0.5", "hard": "1"})
    assert r.status_code == 200 and r.json()["hard_micros"] == 1_000_000
    cpu = (await alice.create("tiny"))["id"]
    await run_for(alice, clock, cpu, minutes=55)  # 0.55 EUR: past the soft limit
    await alice.act(cpu, "resume")
    await run_for(alice, clock, cpu, minutes=5)  # 0.60
    await alice.act(cpu, "resume")
    events = (await alice.client.get(f"/api/instances/{cpu}/events")).json()
    warnings = [e for e in events if e["kind"] == "budget"]
    assert len(warnings) == 1  # warned once, not at each start
    assert "user alice spent 0.55 EUR of 0.50 EUR this month (2026-03)" in warnings[0]["message"]
    mine = (await alice.client.get("/api/me/budgets")).json()
    assert mine[0]["over_soft"] and not mine[0]["over_hard"]
    await run_for(alice, clock, cpu, minutes=45)  # 1.05 EUR: past the hard limit
    r = await alice.client.post(f"/api/instances/{cpu}/resume")
    assert r.status_code == 409 and r.json()["code"] == "budget_exceeded"
    assert "user alice spent 1.05 EUR of 1.00 EUR this month" in r.json()["message"]
    r = await alice.client.post("/api/instances", json={"template": "tiny", "name": "another"})
    assert r.status_code == 409 and r.json()["code"] == "budget_exceeded"
    # Bob has no budget and is not affected; next month alice may start again.
    await ledger.bob.wait_state((await ledger.bob.create("tiny"))["id"], "running")
    clock.at = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
    assert (await alice.client.post(f"/api/instances/{cpu}/resume")).status_code == 202


async def test_pause_when_over_budget_and_team_gpu_limit(ledger: Ledger) -> None:
    alice, admin, clock = ledger.alice, ledger.admin, ledger.clock
    team = (await admin.client.post("/api/teams", json={"name": "design"})).json()
    users = {u["name"]: u["id"] for u in (await admin.client.get("/api/users")).json()}
    await admin.client.put(f"/api/teams/{team['id']}/members/{users['alice']}")
    r = await admin.client.put("/api/budgets/team/design", json={"max_gpus": 1})
    assert r.status_code == 200
    gpu = await alice.wait_state((await alice.create("tiny-gpu"))["id"], "running")
    r = await alice.client.post("/api/instances", json={"template": "tiny-gpu-any"})
    assert r.status_code == 409 and r.json()["code"] == "team_gpu_limit"
    assert "team design may hold 1 GPU(s) at once and holds 1" in r.json()["message"]
    # A running engine past a hard limit with "pause when over" is paused by the gateway.
    await admin.client.put(
        "/api/budgets/team/design", json={"hard": "3", "pause_when_over": True, "max_gpus": 1}
    )
    clock.advance(hours=2)  # 4.00 EUR accrued on the open interval
    paused = await alice.wait_state(gpu["id"], "paused")
    assert paused["desired_state"] == "paused"
    (row,) = await rows(alice, gpu["id"])
    assert row["seconds"] == 7200 and row["cost_micros"] == 4_000_000
    team_report = await report(admin, by="team", period="none")
    assert [(r["label"], r["cost_micros"]) for r in team_report["rows"]] == [("design", 4_000_000)]


async def test_a_killed_gateway_leaves_no_gap_and_no_double_count(
    tmp_path: Path, listener: socket.socket
) -> None:
    """SIGKILL the gateway with two engines running; one engine dies while no gateway runs.
    After a restart the survivor's interval continues (one row, no gap), and the dead one's
    closes when it really ended (its exit time), not when the gateway came back."""
    data, templates = tmp_path / "data", write_templates(tmp_path / "templates")
    settings = Settings(dev=True, data_dir=data, templates_dir=templates)
    token = await add_user(settings, "alice")
    port = listener.getsockname()[1]
    try:
        with gateway_process(data, templates, listener) as gw:
            api = Api(f"http://127.0.0.1:{port}", token)
            survivor = await api.wait_state((await api.create("tiny", name="a"))["id"], "running")
            victim = await api.wait_state((await api.create("tiny", name="b"))["id"], "running")
            await api.aclose()
            gw.kill()
            gw.wait(10)
        wrapper = psutil.Process(await engine_pid(data, victim["id"]))
        for child in wrapper.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):  # gone with its parent already
                child.kill()
        wrapper.wait(10)
        died = datetime.fromtimestamp(
            (data / "runtime" / "local" / victim["id"] / "exit_code").stat().st_mtime, UTC
        )
        with gateway_process(data, templates, listener):
            restarted = datetime.now(UTC)
            api = Api(f"http://127.0.0.1:{port}", token)
            try:
                assert (await api.wait_state(victim["id"], "failed"))["exit_code"] == 137
                (row,) = await rows(api, victim["id"])
                assert datetime.fromisoformat(row["end_at"]) == died < restarted
                assert row["milliseconds"] == round(
                    (died - datetime.fromisoformat(row["start_at"])) / timedelta(milliseconds=1)
                )
                assert (await api.get(survivor["id"]))["state"] == "running"
                await api.act(survivor["id"], "pause")
                await api.wait_state(survivor["id"], "paused")
                (kept,) = await rows(api, survivor["id"])  # one row across the crash
                start = datetime.fromisoformat(kept["start_at"])
                end = datetime.fromisoformat(kept["end_at"])
                assert start < died < restarted < end
                assert kept["milliseconds"] == round((end - start) / timedelta(milliseconds=1))
            finally:
                await api.aclose()
    finally:
        await stop_engines_async(settings)


async def engine_pid(data: Path, instance_id: str) -> int:
    record = json.loads((data / "runtime" / "local" / instance_id / "workload.json").read_text())
    return int(record["pid"])
