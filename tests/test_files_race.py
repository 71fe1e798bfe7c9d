"""My files under attack by the user's own engine: a process that keeps swapping a folder of
alice's volume for a link to bob's folder (atomically, with ``renameat2(RENAME_EXCHANGE)``) while
alice lists, downloads, uploads, deletes and measures through the real gateway. Whatever the
timing, alice never sees bob's bytes or names, never writes or deletes in bob's folder, and her
folder's size never includes his."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningGateway
from tests.support.gateway import Api

ROUNDS = 150
SWAPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b, stop = (os.fsencode(p) for p in sys.argv[1:4])
swaps = 0
print("ready", flush=True)
while swaps % 64 or not os.path.exists(stop):
    if libc.renameat2(-100, a, -100, b, 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
        raise OSError(ctypes.get_errno(), "renameat2")
    swaps += 1
print(swaps, flush=True)
"""
BOBS_BIG = b"B" * 50_000
"""In bob's swapped-in folder: a size that includes it is off by at least this much."""


async def folder(gateway: RunningGateway, api: Api) -> Path:
    me = (await api.client.get("/api/me")).json()
    return gateway.settings.volumes_dir / me["id"] / "demo"


async def put(api: Api, path: str, data: bytes) -> httpx.Response:
    return await api.client.put("/api/files/demo/content", params={"path": path}, content=data)


@asynccontextmanager
async def swapping(real: Path, link: Path, tmp: Path) -> AsyncIterator[None]:
    """Swap ``real`` and ``link`` as fast as possible until the block ends; fails the test
    unless some swaps happened."""
    stop = tmp / "stop-swapping"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SWAPPER, str(real), str(link), str(stop),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"
    try:
        yield
    finally:
        stop.touch()
        out, _ = await proc.communicate()
    assert proc.returncode == 0 and int(out) > 0


@pytest.fixture
async def arena(
    gateway: RunningGateway, alice: Api, bob: Api, tmp_path: Path
) -> AsyncIterator[tuple[Path, Path]]:
    """alice's ``d/f.txt`` ("alice") and bob's ``d/`` (``f.txt`` "bob", a big file, victims);
    while the block runs, alice's ``d`` keeps being swapped with a link to bob's ``d``."""
    for i in range(ROUNDS):
        for api in (alice, bob):
            assert (await put(api, f"d/victim-{i}", b"v")).status_code == 201
    assert (await put(alice, "d/f.txt", b"alice")).status_code == 201
    assert (await put(bob, "d/f.txt", b"bob")).status_code == 201
    assert (await put(bob, "d/bobs-only.bin", BOBS_BIG)).status_code == 201
    mine, theirs = await folder(gateway, alice), await folder(gateway, bob)
    (mine / "x").symlink_to(theirs / "d")
    async with swapping(mine / "d", mine / "x", tmp_path):
        yield mine, theirs / "d"


Check = Callable[[Api, int], Awaitable[bool]]


async def download(alice: Api, _i: int) -> bool:
    r = await alice.client.get("/api/files/demo/content", params={"path": "d/f.txt"})
    assert r.status_code in (200, 404) and r.content != b"bob", r.content
    return r.status_code == 200 and r.content == b"alice"


async def listing(alice: Api, _i: int) -> bool:
    r = await alice.client.get("/api/files/demo", params={"path": "d"})
    assert r.status_code in (200, 404), r.text
    names = {e["name"] for e in r.json().get("entries", [])}
    assert "bobs-only.bin" not in names
    return "f.txt" in names


async def upload(alice: Api, i: int) -> bool:
    r = await put(alice, f"d/new-{i}", b"n")
    assert r.status_code in (201, 404), r.text
    return r.status_code == 201


async def delete(alice: Api, i: int) -> bool:
    r = await alice.client.delete("/api/files/demo/content", params={"path": f"d/victim-{i}"})
    assert r.status_code in (204, 404), r.text
    return r.status_code == 204


async def size(alice: Api, _i: int) -> bool:
    r = await alice.client.get("/api/files")
    used = next(f["used_bytes"] for f in r.json() if f["family"] == "demo")
    # Her victims and f.txt, under whichever name d has now; while a folder turns into a link
    # mid-count it is skipped (her own bytes, under-counted), never bob's bytes counted.
    assert used <= ROUNDS + len(b"alice")
    return used == ROUNDS + len(b"alice")


@pytest.mark.parametrize("check", [download, listing, upload, delete, size])
async def test_a_folder_swapped_for_a_link_never_leads_to_another_user(
    arena: tuple[Path, Path], alice: Api, check: Check
) -> None:
    _mine, theirs = arena
    before = sorted(p.name for p in theirs.iterdir())
    successes = [await check(alice, i) for i in range(ROUNDS)]
    assert any(successes)  # the operation really ran against alice's folder
    assert sorted(p.name for p in theirs.iterdir()) == before  # nothing written or deleted
    assert all(p.read_bytes() == b"v" for p in theirs.glob("victim-*"))
    assert (theirs / "f.txt").read_bytes() == b"bob"
