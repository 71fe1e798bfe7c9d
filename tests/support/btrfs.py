"""A real btrfs filesystem for the volume-quota tests: a loop-mounted image (root only)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def btrfs_problem() -> str | None:
    """Why a btrfs filesystem cannot be made here, or None."""
    import os

    if os.geteuid() != 0:
        return "mounting a filesystem image needs root"
    if shutil.which("mkfs.btrfs") is None or shutil.which("btrfs") is None:
        return "btrfs-progs is not installed: run scripts/system-deps.sh"
    if "btrfs" not in Path("/proc/filesystems").read_text():
        return "this kernel has no btrfs"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control)"
    return None


@contextmanager
def btrfs_mount(folder: Path, *, quotas: bool = True, size_mib: int = 256) -> Iterator[Path]:
    """A fresh btrfs mounted at ``folder/mnt`` (quotas enabled unless told), removed after."""
    image, mount = folder / "btrfs.img", folder / "mnt"
    mount.mkdir(parents=True)
    with image.open("wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        if quotas:
            subprocess.run(["btrfs", "quota", "enable", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        image.unlink(missing_ok=True)
