"""What one tenant may learn about others: the teams directory, the engine's internal address."""

from __future__ import annotations

from tests.support.gateway import Api


async def test_users_see_only_their_own_teams(alice: Api, bob: Api, admin: Api) -> None:
    users = {u["name"]: u["id"] for u in (await admin.client.get("/api/users")).json()}
    for name in ("studio", "secret-project"):
        assert (await admin.client.post("/api/teams", json={"name": name})).status_code == 201
    teams = {t["name"]: t["id"] for t in (await admin.client.get("/api/teams")).json()}
    put = await admin.client.put(f"/api/teams/{teams['studio']}/members/{users['alice']}")
    assert put.status_code == 204

    mine = (await alice.client.get("/api/teams")).json()
    assert [(t["name"], t["members"]) for t in mine] == [("studio", 1)]
    assert (await bob.client.get("/api/teams")).json() == []
    everyone = (await admin.client.get("/api/teams")).json()
    assert {t["name"] for t in everyone} == {"studio", "secret-project"}
