"""A stand-in for ``nvidia-cuda-mps-control`` on hosts without an NVIDIA driver.

The real daemon cannot run here, so this one fake records how the gateway drives it: ``-d``
(start a card's daemon) creates the control pipe file the gateway looks for, and ``quit`` on
stdin removes it. Each call is appended to ``calls.log`` beside the script as
``<command> <CUDA_VISIBLE_DEVICES>``. The real daemon is exercised by ``bench/gpu/check.sh``.
"""

from __future__ import annotations

import stat
from pathlib import Path

SCRIPT = """#!/bin/sh
log="{log}"
if [ "$1" = "-d" ]; then
  echo "start $CUDA_VISIBLE_DEVICES" >> "$log"
  : > "$CUDA_MPS_PIPE_DIRECTORY/control"
  exit 0
fi
read cmd
echo "$cmd $CUDA_VISIBLE_DEVICES" >> "$log"
if [ "$cmd" = quit ]; then rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"; fi
"""


def install_fake_mps(folder: Path) -> tuple[Path, Path]:
    """Write the fake control program; return (program, calls log)."""
    folder.mkdir(parents=True, exist_ok=True)
    program, log = folder / "nvidia-cuda-mps-control", folder / "calls.log"
    program.write_text(SCRIPT.format(log=log))
    program.chmod(program.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return program, log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []
