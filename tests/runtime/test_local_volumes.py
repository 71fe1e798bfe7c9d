"""The local runtime's volumes: folders of this host, measured without following links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aigc_gateway.errors import UserError
from aigc_gateway.runtime.base import NotSupported
from aigc_gateway.runtime.volumes import LocalVolumes, VolumeRoot


async def test_a_link_the_engine_plants_is_not_counted(tmp_path: Path) -> None:
    volumes = LocalVolumes(tmp_path / "volumes")
    data = Path(await volumes.create("u1", "demo"))
    (data / "model.bin").write_bytes(b"x" * 1000)
    outside = tmp_path / "secret-and-large"
    outside.mkdir()
    (outside / "big").write_bytes(b"y" * 100_000)
    os.symlink(outside, data / "escape")
    os.symlink(outside / "big", data / "big-link")
    assert await volumes.size("u1", "demo") == 1000


async def test_a_volume_swapped_for_a_link_measures_nothing(tmp_path: Path) -> None:
    volumes = LocalVolumes(tmp_path / "volumes")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "big").write_bytes(b"y" * 5000)
    (tmp_path / "volumes" / "u1").mkdir(parents=True)
    os.symlink(outside, tmp_path / "volumes" / "u1" / "demo")
    assert await volumes.size("u1", "demo") == 0


def test_root_is_the_trusted_base_and_the_parts_beneath_it(tmp_path: Path) -> None:
    volumes = LocalVolumes(tmp_path / "volumes")
    assert volumes.root("u1", "demo") == VolumeRoot(tmp_path / "volumes", ("u1", "demo"))
    assert volumes.mount("u1", "demo") == str(tmp_path / "volumes" / "u1" / "demo")


@pytest.mark.parametrize("bad", ["..", "a/b", "", ".hidden", "x" * 200])
def test_names_that_would_leave_the_volume_folder_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UserError, match="invalid volume name"):
        LocalVolumes(tmp_path).mount("u1", bad)


async def test_snapshots_are_for_later(tmp_path: Path) -> None:
    with pytest.raises(NotSupported, match="snapshot"):
        await LocalVolumes(tmp_path).snapshot("u1", "demo", "s1")
