"""Bad input gets a clear error and loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RunningGateway
from tests.support.gateway import Api, engine_client


async def test_unknown_template_is_404_with_code(alice: Api) -> None:
    r = await alice.client.post("/api/instances", json={"template": "no-such-engine"})
    assert r.status_code == 404
    assert r.json()["code"] == "unknown_template"
    assert "no-such-engine" in r.json()["message"]


async def test_not_installed_engine_is_refused_clearly(alice: Api) -> None:
    listed = (await alice.client.get("/api/templates")).json()["templates"]
    sd = next(t for t in listed if t["id"] == "sd-webui")
    assert sd["installed"] is False
    r = await alice.client.post("/api/instances", json={"template": "sd-webui"})
    assert r.status_code == 409
    assert r.json()["code"] == "engine_not_installed"
    assert "not installed on this host" in r.json()["message"]


@pytest.mark.parametrize("bad_id", ["nope", "0" * 32, "../../etc/passwd", "A" * 32])
async def test_bad_instance_id_is_404_in_every_route(alice: Api, bad_id: str) -> None:
    for method, path in [
        ("GET", f"/api/instances/{bad_id}"),
        ("POST", f"/api/instances/{bad_id}/pause"),
        ("DELETE", f"/api/instances/{bad_id}"),
        ("GET", f"/api/instances/{bad_id}/events"),
        ("GET", f"/api/instances/{bad_id}/logs"),
    ]:
        r = await alice.client.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["code"] in ("instance_not_found", "not_found")


async def test_unknown_action_and_bad_body(alice: Api) -> None:
    inst = await alice.create("tiny")
    r = await alice.client.post(f"/api/instances/{inst['id']}/explode")
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_request"
    r = await alice.client.post("/api/instances", json={"template": "tiny", "colour": "red"})
    assert r.status_code == 422
    assert "colour" in r.json()["message"]
    r = await alice.client.post("/api/instances", json={"template": "tiny", "name": "Bad Name!"})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_name"


async def test_engine_that_never_becomes_ready_fails_with_reason(alice: Api) -> None:
    inst = await alice.create("never-ready")
    failed = await alice.wait_state(inst["id"], "failed", timeout=30)
    assert "did not become ready within" in failed["reason"]
    # The process was cleared away, and a resume tries again (and fails the same way).
    await alice.act(inst["id"], "resume")
    again = await alice.wait_state(inst["id"], "starting", timeout=10)
    assert again["state"] == "starting"


async def test_engine_binary_that_does_not_exist(alice: Api) -> None:
    inst = await alice.create("missing-binary")
    failed = await alice.wait_state(inst["id"], "failed", timeout=30)
    assert "/nonexistent/engine-binary" in failed["reason"]
    assert "not found" in failed["reason"]


async def test_engine_that_exits_at_start_reports_code_and_log(alice: Api) -> None:
    inst = await alice.create("crash")
    failed = await alice.wait_state(inst["id"], "failed", timeout=30)
    assert failed["exit_code"] == 3
    assert "code 3" in failed["reason"]
    events = (await alice.client.get(f"/api/instances/{inst['id']}/events")).json()
    exit_event = next(e for e in events if e["kind"] == "exit")
    assert "cannot load model weights" in exit_event["data"]["log_tail"]
    logs = (await alice.client.get(f"/api/instances/{inst['id']}/logs")).text
    assert "cannot load model weights" in logs


async def test_running_engine_crash_is_reported_failed(alice: Api, admin: Api) -> None:
    import httpx

    inst = await alice.wait_state((await alice.create("tiny"))["id"], "running")
    async with await engine_client(admin, inst["id"]) as engine:
        with pytest.raises(httpx.HTTPError):
            await engine.get("/crash", params={"code": "7"})
    failed = await alice.wait_state(inst["id"], "failed", timeout=30)
    assert failed["exit_code"] == 7
    events = (await alice.client.get(f"/api/instances/{inst['id']}/events")).json()
    exit_event = next(e for e in events if e["kind"] == "exit")
    assert "simulated crash" in exit_event["data"]["log_tail"]
    # Resume brings it back.
    await alice.act(inst["id"], "resume")
    back = await alice.wait_state(inst["id"], "running", timeout=30)
    assert back["exit_code"] is None


async def test_invalid_template_file_is_reported_and_others_keep_working(
    admin: Api, alice: Api, gateway: RunningGateway
) -> None:
    folder: Path = gateway.settings.templates_dir
    (folder / "broken.yaml").write_text("id: broken\nfamily: broken\nversion: '1'\nlaunch: {}\n")
    r = await admin.client.post("/api/templates/reload")
    assert r.status_code == 200
    problems = r.json()["problems"]
    broken = [p for p in problems if p["file"].endswith("broken.yaml")]
    assert broken
    assert {p["field"] for p in broken} >= {"display", "launch.command"}
    assert {t["id"] for t in r.json()["templates"]} >= {"tiny", "demo"}
    # Users do not see other files' problems; admins do.
    assert (await alice.client.get("/api/templates")).json()["problems"] == []
    # Non-admins cannot trigger a reload.
    assert (await alice.client.post("/api/templates/reload")).status_code == 403
    inst = await alice.create("tiny")
    assert (await alice.wait_state(inst["id"], "running"))["state"] == "running"


async def test_requests_without_a_valid_token_are_refused(gateway: RunningGateway) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=gateway.url) as anon:
        r = await anon.get("/api/instances")
        assert r.status_code == 401
        assert r.json()["code"] == "unauthorized"
        r = await anon.get("/api/instances", headers={"Authorization": "Bearer agw_forged"})
        assert r.status_code == 401
        assert (await anon.get("/healthz")).json()["ok"] is True


async def test_another_users_instance_is_invisible(alice: Api, bob: Api, admin: Api) -> None:
    inst = await alice.create("tiny")
    for method, path in [
        ("GET", f"/api/instances/{inst['id']}"),
        ("POST", f"/api/instances/{inst['id']}/pause"),
        ("DELETE", f"/api/instances/{inst['id']}"),
        ("GET", f"/api/instances/{inst['id']}/events"),
        ("GET", f"/api/instances/{inst['id']}/events/stream"),
        ("GET", f"/api/instances/{inst['id']}/logs"),
    ]:
        r = await bob.client.request(method, path)
        assert r.status_code == 404, (method, path)
    assert (await bob.client.get("/api/instances")).json() == []
    assert (await bob.client.get("/api/instances", params={"all": "true"})).json() == []
    everyone = (await admin.client.get("/api/instances", params={"all": "true"})).json()
    assert inst["id"] in {i["id"] for i in everyone}
