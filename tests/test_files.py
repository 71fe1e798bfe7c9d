"""My files: a user's data folders through the API: list, upload, download, delete, quotas,
and no way out of the folder (``..``, encoded dots, absolute paths, NUL bytes, links)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from aigc_gateway.storage import files as file_service
from tests.conftest import RunningGateway
from tests.support.gateway import Api, add_user, tiny_template

SMALL_QUOTA = 0.000001  # GiB: 1073 bytes


async def folder(gateway: RunningGateway, api: Api, family: str) -> Path:
    me = (await api.client.get("/api/me")).json()
    return gateway.settings.volumes_dir / me["id"] / family


async def put(api: Api, family: str, path: str, data: bytes) -> httpx.Response:
    return await api.client.put(f"/api/files/{family}/content", params={"path": path}, content=data)


@pytest.fixture
async def small(gateway: RunningGateway, admin: Api) -> str:
    """A family whose quota is about 1 KiB."""
    (gateway.settings.templates_dir / "small.yaml").write_text(
        tiny_template("small") + f"storage: {{quota_gib: {SMALL_QUOTA}}}\n"
    )
    assert (await admin.client.post("/api/templates/reload")).status_code == 200
    return "small"


async def test_upload_list_download_delete(gateway: RunningGateway, alice: Api) -> None:
    families = {f["family"]: f for f in (await alice.client.get("/api/files")).json()}
    assert families["demo"] == {"family": "demo", "used_bytes": 0, "quota_bytes": 1024**3}
    assert families["tiny"]["quota_bytes"] == 20 * 1024**3  # the schema's default
    r = await put(alice, "demo", "outputs/2024/cat.png", b"\x89PNG" + b"x" * 96)
    assert r.status_code == 201, r.text
    assert r.json()["path"] == "outputs/2024/cat.png" and r.json()["size"] == 100
    assert r.json()["image"] is True
    assert (await put(alice, "demo", "notes.txt", b"hello")).status_code == 201
    top = (await alice.client.get("/api/files/demo")).json()
    assert [(e["name"], e["type"]) for e in top["entries"]] == [
        ("outputs", "folder"),
        ("notes.txt", "file"),
    ]
    assert top["used_bytes"] == 105 and top["quota_bytes"] == 1024**3
    inner = await alice.client.get("/api/files/demo", params={"path": "outputs/2024"})
    assert [e["name"] for e in inner.json()["entries"]] == ["cat.png"]
    image = await alice.client.get(
        "/api/files/demo/content", params={"path": "outputs/2024/cat.png"}
    )
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert image.headers["content-type"] == "image/png"
    assert image.headers["content-disposition"].startswith("inline")
    text = await alice.client.get("/api/files/demo/content", params={"path": "notes.txt"})
    assert text.content == b"hello" and text.headers["content-type"] == "application/octet-stream"
    assert text.headers["content-disposition"].startswith("attachment")
    # Replacing a file keeps one copy.
    assert (await put(alice, "demo", "notes.txt", b"hello again")).status_code == 201
    used = (await alice.client.get("/api/files")).json()
    assert next(f for f in used if f["family"] == "demo")["used_bytes"] == 111
    assert (
        await alice.client.delete("/api/files/demo/content", params={"path": "notes.txt"})
    ).status_code == 204
    assert (
        await alice.client.delete("/api/files/demo/content", params={"path": "outputs"})
    ).status_code == 204
    assert (await alice.client.get("/api/files/demo")).json()["entries"] == []
    missing = await alice.client.delete("/api/files/demo/content", params={"path": "outputs"})
    assert missing.status_code == 404
    root = await alice.client.delete("/api/files/demo/content", params={"path": ""})
    assert root.status_code == 400
    leftovers = [p.name for p in (await folder(gateway, alice, "demo")).iterdir()]
    assert leftovers == []


async def test_html_and_svg_are_never_rendered_on_the_gateway(alice: Api) -> None:
    for name in ("page.html", "logo.svg"):
        assert (await put(alice, "demo", name, b"<script>alert(1)</script>")).status_code == 201
        r = await alice.client.get("/api/files/demo/content", params={"path": name})
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["content-disposition"].startswith("attachment")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in r.headers["content-security-policy"]


async def test_quota_refuses_uploads_that_do_not_fit(
    gateway: RunningGateway, alice: Api, small: str
) -> None:
    assert (await put(alice, small, "a.bin", b"a" * 1000)).status_code == 201
    refused = await put(alice, small, "b.bin", b"b" * 500)
    assert refused.status_code == 413
    assert refused.json()["code"] == "over_quota" and "quota" in refused.json()["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused while streaming
        for _ in range(10):
            yield b"c" * 100

    streamed = await alice.client.put(
        f"/api/files/{small}/content", params={"path": "c.bin"}, content=chunks()
    )
    assert streamed.status_code == 413
    # Replacing a file counts only the difference.
    assert (await put(alice, small, "a.bin", b"A" * 1050)).status_code == 201
    names = sorted(p.name for p in (await folder(gateway, alice, small)).iterdir())
    assert names == ["a.bin"]  # nothing half-written left behind


@pytest.mark.parametrize(
    "query",
    [
        "path=../x",
        "path=%2e%2e/x",
        "path=%2E%2E%2F%2E%2E%2Fgateway.db",
        "path=outputs/../../x",
        "path=/etc/passwd",
        "path=%2Fetc%2Fpasswd",
        "path=a%00b",
        "path=..%5C..%5Cx",
    ],
)
async def test_paths_cannot_leave_the_folder(alice: Api, query: str) -> None:
    assert (await put(alice, "demo", "outputs/ok.txt", b"ok")).status_code == 201
    for method, url in [
        ("GET", f"/api/files/demo?{query}"),
        ("GET", f"/api/files/demo/content?{query}"),
        ("PUT", f"/api/files/demo/content?{query}"),
        ("DELETE", f"/api/files/demo/content?{query}"),
    ]:
        r = await alice.client.request(method, url, content=b"x" if method == "PUT" else None)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_path"), (method, url)
    assert (await alice.client.get("/api/files/demo/content?path=outputs/ok.txt")).content == b"ok"


async def test_families_are_names_not_paths(alice: Api) -> None:
    # The same requests for a real family reach the files routes (a missing route is 404 too).
    assert (
        await alice.client.put("/api/files/demo/content?path=x", content=b"x")
    ).status_code == 201
    assert (await alice.client.get("/api/files/demo/content?path=x")).content == b"x"
    for family in ("%2e%2e", "DEMO", "demo%0A", "no-such-family", "demo.", "%2e"):
        for method in ("GET", "PUT", "DELETE"):
            r = await alice.client.request(method, f"/api/files/{family}/content?path=x")
            assert (r.status_code, r.json()["code"]) == (404, "family_not_found"), (method, family)
        r = await alice.client.get(f"/api/files/{family}")
        assert (r.status_code, r.json()["code"]) == (404, "family_not_found"), family
    for family in ("..", "%2Fetc"):  # normalised away by the client or the router
        assert (await alice.client.get(f"/api/files/{family}/content?path=x")).status_code == 404


async def test_links_are_listed_and_never_followed(
    gateway: RunningGateway, alice: Api, bob: Api, tmp_path: Path
) -> None:
    assert (await put(bob, "demo", "secret.txt", b"bob's")).status_code == 201
    assert (await put(alice, "demo", "mine.txt", b"alice's")).status_code == 201
    mine = await folder(gateway, alice, "demo")
    theirs = await folder(gateway, bob, "demo")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_text("outside")
    os.symlink(theirs / "secret.txt", mine / "stolen.txt")
    os.symlink(theirs, mine / "bobs")
    os.symlink(outside, mine / "out")
    os.symlink(mine / "mine.txt", mine / "alias.txt")  # even a link inside is not followed
    listed = {
        e["name"]: (e["type"], e["size"], e["image"])
        for e in (await alice.client.get("/api/files/demo")).json()["entries"]
    }
    links = {name: ("link", 0, False) for name in ("stolen.txt", "bobs", "out", "alias.txt")}
    assert listed == {"mine.txt": ("file", 7, False), **links}
    for path in ("stolen.txt", "bobs/secret.txt", "out/x.txt", "alias.txt"):
        r = await alice.client.get("/api/files/demo/content", params={"path": path})
        assert (r.status_code, r.json()["code"]) == (404, "is_a_link"), path
    for path in ("bobs", "out"):
        r = await alice.client.get("/api/files/demo", params={"path": path})
        assert (r.status_code, r.json()["code"]) == (404, "is_a_link"), path
    assert (await put(alice, "demo", "out/new.txt", b"x")).status_code == 404
    assert (await put(alice, "demo", "bobs/secret.txt", b"x")).status_code == 404
    assert (
        await alice.client.delete("/api/files/demo/content?path=bobs/secret.txt")
    ).status_code == 404
    assert not (outside / "new.txt").exists() and (theirs / "secret.txt").read_bytes() == b"bob's"
    # Uploading over a link replaces the link, never what it points to.
    assert (await put(alice, "demo", "stolen.txt", b"mine now")).status_code == 201
    assert (theirs / "secret.txt").read_bytes() == b"bob's"
    assert not (mine / "stolen.txt").is_symlink()
    # Deleting a link removes the link, never what it points to.
    for path in ("bobs", "out", "alias.txt"):
        r = await alice.client.delete("/api/files/demo/content", params={"path": path})
        assert r.status_code == 204, path
    assert (theirs / "secret.txt").exists() and (outside / "x.txt").exists()
    assert (mine / "mine.txt").read_bytes() == b"alice's"
    assert sorted(p.name for p in mine.iterdir()) == ["mine.txt", "stolen.txt"]


async def test_the_files_page_shows_a_link_without_offering_its_content(
    gateway: RunningGateway, alice: Api
) -> None:
    assert (await put(alice, "demo", "real.txt", b"r")).status_code == 201
    (await folder(gateway, alice, "demo") / "lnk").symlink_to("real.txt")
    async with httpx.AsyncClient(base_url=gateway.url) as browser:
        await browser.post("/auth/login", data={"username": "alice", "password": "pw-alice"})
        html = (await browser.get("/files/demo")).text
    row = html[html.index('data-testid="file-lnk"') :].split("</tr>")[0]
    assert "link (not followed)" in row and "/content?path=" not in row
    assert 'data-testid="delete-file-lnk"' in row
    assert "/api/files/demo/content?path=real.txt" in html


async def test_another_users_files_cannot_be_reached(
    gateway: RunningGateway, alice: Api, bob: Api
) -> None:
    assert (await put(alice, "demo", "private.png", b"\x89PNG")).status_code == 201
    alice_id = (await alice.client.get("/api/me")).json()["id"]
    assert (await bob.client.get("/api/files/demo")).json()["entries"] == []
    for path in (
        "private.png",
        f"../../{alice_id}/demo/private.png",
        f"/{alice_id}/demo/private.png",
    ):
        want = (404, "file_not_found") if path == "private.png" else (400, "invalid_path")
        r = await bob.client.get("/api/files/demo/content", params={"path": path})
        assert (r.status_code, r.json()["code"]) == want, path
        r = await bob.client.delete("/api/files/demo/content", params={"path": path})
        assert (r.status_code, r.json()["code"]) == want, path
    assert (await alice.client.get("/api/files/demo/content?path=private.png")).status_code == 200


async def test_writes_need_manage_scope_and_csrf(gateway: RunningGateway) -> None:
    reader = Api(gateway.url, await add_user(gateway.settings, "reader", scopes="read"))
    try:
        assert (await reader.client.get("/api/files")).status_code == 200
        assert (await put(reader, "demo", "x.txt", b"x")).status_code == 403
        r = await reader.client.delete("/api/files/demo/content", params={"path": "x.txt"})
        assert r.status_code == 403
    finally:
        await reader.aclose()
    async with httpx.AsyncClient(base_url=gateway.url) as browser:
        await browser.post("/auth/login", data={"username": "alice", "password": "pw-alice"})
        url = "/api/files/demo/content?path=x.txt"
        assert (await browser.put(url, content=b"x")).status_code == 403
        token = (await browser.get("/api/me")).json()["csrf_token"]
        assert (
            await browser.put(url, content=b"x", headers={"X-CSRF-Token": token})
        ).status_code == 201
        assert (await browser.get(url)).content == b"x"
    async with httpx.AsyncClient(base_url=gateway.url) as anon:
        assert (await anon.get("/api/files")).status_code == 401
        assert (await anon.put(url, content=b"x")).status_code == 401


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (".aigc-upload-0123", "reserved for uploads in progress"),
        ("x" * 300, "300 bytes long"),
        ("é" * 128, "256 bytes long"),  # 128 characters, 256 bytes in UTF-8
        ("outputs/" + "y" * 256 + "/cat.png", "256 bytes long"),
    ],
)
async def test_names_no_file_system_takes_are_refused_clearly(
    gateway: RunningGateway, alice: Api, name: str, why: str
) -> None:
    r = await put(alice, "demo", name, b"x")
    assert (r.status_code, r.json()["code"]) == (400, "invalid_name"), r.text
    assert why in r.json()["message"]
    if "reserved" not in why:  # a name too long for any file system is refused everywhere
        for method in ("GET", "DELETE"):
            r = await alice.client.request(method, "/api/files/demo/content", params={"path": name})
            assert (r.status_code, r.json()["code"]) == (400, "invalid_name"), method
        r = await alice.client.get("/api/files/demo", params={"path": name})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_name")
    assert not (await folder(gateway, alice, "demo")).exists()  # nothing made on the way


async def test_names_close_to_the_limits_are_fine(gateway: RunningGateway, alice: Api) -> None:
    names = [".upload-1", "z" * 255, "é" * 127, "a.aigc-upload-b", ".hidden"]
    for name in names:
        r = await put(alice, "demo", name, name.encode())
        assert r.status_code == 201, (name, r.text)
        got = await alice.client.get("/api/files/demo/content", params={"path": name})
        assert got.content == name.encode()
    listed = {e["name"] for e in (await alice.client.get("/api/files/demo")).json()["entries"]}
    assert listed == set(names)


@pytest.fixture
def full_disk(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[Path], None]]:
    """Makes a folder's disk hold about 64 KiB: a real tmpfs mounted on it where the tests may
    mount (root), else the one fake for this failure mode: a file's writes past 64 KiB fail with
    ENOSPC (the part that fits written first, as a real disk does)."""
    mounted: list[Path] = []

    def fill(where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)]
        if os.geteuid() == 0 and subprocess.run(mount, capture_output=True).returncode == 0:
            mounted.append(where)
            return
        real = file_service.write_all

        def write_all(fd: int, data: bytes) -> None:
            room = max(64 * 1024 - os.fstat(fd).st_size, 0)
            real(fd, data[:room])
            if len(data) > room:
                raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(file_service, "write_all", write_all)

    yield fill
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


async def test_an_upload_to_a_full_disk_is_507_and_changes_nothing(
    gateway: RunningGateway, alice: Api, full_disk: Callable[[Path], None]
) -> None:
    mine = await folder(gateway, alice, "demo")
    full_disk(mine)
    assert (await put(alice, "demo", "keep.bin", b"k" * 1000)).status_code == 201
    big = b"x" * (256 * 1024)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: fails while streaming
        for _ in range(4):
            yield big

    for body in (big, chunks()):
        r = await alice.client.put(
            "/api/files/demo/content", params={"path": "keep.bin"}, content=body
        )
        assert (r.status_code, r.json()["code"]) == (507, "disk_full"), r.text
        assert "disk is full" in r.json()["message"]
        assert sorted(p.name for p in mine.iterdir()) == ["keep.bin"]  # no partial file left
        assert (mine / "keep.bin").read_bytes() == b"k" * 1000  # the old file intact
    # Room again: the next upload works.
    assert (await put(alice, "demo", "keep.bin", b"new")).status_code == 201
