"""Storage quotas enforced by the filesystem: volumes on btrfs (with quotas enabled) are
subvolumes capped at their family's quota, for every writer, the sandboxed engine included.
Elsewhere volumes are folders and the quota is measured only (storage/quota.py). On the
old main no volume was ever capped: an engine filled the disk."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.btrfs import btrfs_mount
from tests.support.sandbox import hostile_spec, sandboxed_runtime

from aigc_gateway.runtime.base import Phase
from aigc_gateway.runtime.volumes import LocalVolumes

pytestmark = pytest.mark.needs("btrfs")

MIB = 1 << 20


@pytest.fixture
def btrfs(tmp_path: Path) -> Iterator[Path]:
    with btrfs_mount(tmp_path / "fs") as mount:
        yield mount


async def test_a_sandboxed_engine_cannot_write_past_its_quota(tmp_path: Path, btrfs: Path) -> None:
    """The engine's writes fail with "Disk quota exceeded" at its quota; what it wrote stays;
    a larger quota at the next start lets it write more."""
    volumes = LocalVolumes(btrfs / "volumes")
    data = await volumes.create("alice", "hostile", 8 * MIB)
    assert volumes.enforced("alice", "hostile")
    assert os.stat(data).st_ino == 256  # a subvolume
    runtime = sandboxed_runtime(tmp_path / "state")
    spec = dataclasses.replace(
        hostile_spec(tmp_path, "--mode", "idle", instance_id="q-1", owner="alice"),
        data_dir=data,
    )
    try:
        await runtime.start(spec)
        ready = await runtime.wait_ready("q-1", timeout=30)
        assert ready.phase is Phase.READY and ready.endpoint and ready.endpoint.unix_path
        transport = httpx.AsyncHTTPTransport(uds=ready.endpoint.unix_path)
        async with httpx.AsyncClient(transport=transport, timeout=60) as client:
            first = (await client.get("http://engine/fill/32")).json()
            assert "Disk quota exceeded" in first["error"]
            assert 4 <= first["written_mib"] <= 8
            assert (Path(data) / "fill.bin").stat().st_size >= first["written_mib"] * MIB
            await volumes.create("alice", "hostile", 24 * MIB)  # the quota was raised
            second = (await client.get("http://engine/fill/8")).json()
            assert second == {"written_mib": 8, "error": ""}
    finally:
        await runtime.stop("q-1", grace=0.5)
        await runtime.forget("q-1")
        await runtime.close()


async def test_volumes_elsewhere_are_folders_measured_only(tmp_path: Path) -> None:
    volumes = LocalVolumes(tmp_path / "volumes")
    data = await volumes.create("u1", "demo", 8 * MIB)
    assert os.path.isdir(data) and not volumes.enforced("u1", "demo")
    (Path(data) / "big").write_bytes(b"x" * (9 * MIB))  # nothing stops it
    assert await volumes.size("u1", "demo") == 9 * MIB


async def test_btrfs_without_quotas_falls_back_to_measuring(tmp_path: Path) -> None:
    with btrfs_mount(tmp_path / "fs", quotas=False) as mount:
        volumes = LocalVolumes(mount / "volumes")
        data = await volumes.create("u1", "demo", 8 * MIB)
        assert os.path.isdir(data) and not volumes.enforced("u1", "demo")
        (Path(data) / "big").write_bytes(b"x" * (9 * MIB))
        assert await volumes.size("u1", "demo") == 9 * MIB
        await volumes.delete("u1", "demo")
        assert not os.path.exists(data)


async def test_a_capped_volume_is_deleted_whole(btrfs: Path) -> None:
    volumes = LocalVolumes(btrfs / "volumes")
    data = await volumes.create("u1", "demo", 8 * MIB)
    (Path(data) / "sub").mkdir()
    (Path(data) / "sub" / "f").write_bytes(b"x" * MIB)
    await volumes.delete("u1", "demo")
    assert not os.path.exists(data)
    again = await volumes.create("u1", "demo", 8 * MIB)  # and made again, capped
    assert volumes.enforced("u1", "demo") and os.listdir(again) == []
