"""A stand-in for ``nvidia-cuda-mps-control`` on hosts without an NVIDIA driver.

The real daemon cannot run here, so this one fake behaves as the real one was seen to on an
H200 (bench/gpu/results): ``-d`` leaves a daemon process running and writes its pid to
``nvidia-cuda-mps-control.pid`` beside the ``control`` pipe; ``quit`` on stdin ends that process
and leaves the pipe files behind. Each call is appended to ``calls.log`` beside the script as
``<command> <CUDA_VISIBLE_DEVICES>``. The real daemon is exercised by ``bench/gpu/check.sh``.
"""

from __future__ import annotations

import stat
from pathlib import Path

SCRIPT = """#!/bin/sh
log="{log}"
pipe="$CUDA_MPS_PIPE_DIRECTORY"
if [ "$1" = "-d" ]; then
  echo "start $CUDA_VISIBLE_DEVICES" >> "$log"
  setsid sleep 3600 </dev/null >/dev/null 2>&1 &
  echo $! > "$pipe/nvidia-cuda-mps-control.pid"
  : > "$pipe/control"
  exit 0
fi
read cmd
echo "$cmd $CUDA_VISIBLE_DEVICES" >> "$log"
if [ "$cmd" = quit ]; then kill "$(cat "$pipe/nvidia-cuda-mps-control.pid")"; fi
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
