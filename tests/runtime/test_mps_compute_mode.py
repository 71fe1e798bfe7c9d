"""A shared card is set to EXCLUSIVE_PROCESS while its MPS daemon runs and restored on release,
with a fake ``nvidia-smi`` (the real card: bench/gpu/check.sh). On today's main the mode is never
touched, so a client that ignores the MPS pipe directory can bypass its memory limit."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.support.fake_mps import install_fake_mps

from aigc_gateway.runtime.mps import MpsControl

SMI = """#!/bin/sh
echo "$*" >> "{log}"
case "$*" in *--query-gpu=compute_mode*) echo Default ;; esac
"""


def fake_smi(folder: Path) -> tuple[Path, Path]:
    program, log = folder / "nvidia-smi", folder / "smi.log"
    program.write_text(SMI.format(log=log))
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program, log


async def test_exclusive_while_shared_then_restored(tmp_path: Path) -> None:
    mps, _ = install_fake_mps(tmp_path / "mps")
    smi, log = fake_smi(tmp_path)
    control = MpsControl(tmp_path / "root", command=str(mps), nvidia_smi=str(smi))
    assert await control.ensure("GPU-a")
    assert log.read_text().splitlines()[-1] == "-i GPU-a -c EXCLUSIVE_PROCESS"
    await control.stop("GPU-a")
    assert log.read_text().splitlines()[-1] == "-i GPU-a -c DEFAULT"


async def test_without_nvidia_smi_shares_still_run(tmp_path: Path) -> None:
    mps, _ = install_fake_mps(tmp_path / "mps")
    control = MpsControl(tmp_path / "root", command=str(mps), nvidia_smi="no-such-smi")
    assert await control.ensure("GPU-a")
    await control.stop("GPU-a")
