"""JupyterLab, a real third-party engine, through the whole lifecycle."""

from __future__ import annotations

import pytest

from tests.support.gateway import Api, engine_client

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("jupyterlab"),
]


async def test_jupyterlab_keeps_files_across_pause_and_resume(alice: Api, admin: Api) -> None:
    created = await alice.create("jupyterlab")
    inst = await alice.wait_state(created["id"], "running", "failed", timeout=90)
    assert inst["state"] == "running", inst["reason"]
    async with await engine_client(admin, inst["id"], timeout=30) as lab:
        status = (await lab.get("/api/status")).json()
        assert "started" in status
        # As a browser does: the page sets the _xsrf cookie, writes echo it in a header.
        assert (await lab.get("/lab")).status_code == 200
        r = await lab.put(
            "/api/contents/notes.txt",
            json={"type": "file", "format": "text", "content": "saved before pause"},
            headers={"X-XSRFToken": lab.cookies["_xsrf"]},
        )
        assert r.status_code in (200, 201), r.text
    await alice.act(inst["id"], "pause")
    await alice.wait_state(inst["id"], "paused")
    await alice.act(inst["id"], "resume")
    inst = await alice.wait_state(inst["id"], "running", "failed", timeout=90)
    assert inst["state"] == "running", inst["reason"]
    async with await engine_client(admin, inst["id"], timeout=30) as lab:
        r = await lab.get("/api/contents/notes.txt", params={"content": "1"})
        assert r.status_code == 200
        assert r.json()["content"] == "saved before pause"
    await alice.client.delete(f"/api/instances/{inst['id']}")
    await alice.wait_state(inst["id"], "deleted")
