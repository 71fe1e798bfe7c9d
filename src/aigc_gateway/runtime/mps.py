"""NVIDIA MPS control daemons, one per shared card, for GPU memory shares on the local runtime.

MPS (Multi-Process Service) lets several processes share one GPU with a per-client limit on the
device memory they may pin (``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``): the driver refuses an
allocation past it, which time-slicing alone cannot do. One control daemon serves one card here:
it is started with only that card visible and its own pipe directory, so shares on different cards
never meet, and whole-GPU engines (which never get the pipe directory) are not affected.

The daemon is started when the first share lands on a card and asked to quit when the last share
leaves. It outlives the gateway process, like the engines do; a restarted gateway finds it by its
pipe directory. Where the control program is missing (no driver, a CPU test host) shares still run
with the same environment, unenforced, and :attr:`MpsControl.program` is None.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from aigc_gateway.errors import PermanentError

log = logging.getLogger(__name__)

QUIT_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0


def mps_root_for(state_dir: Path) -> Path:
    """A short folder for one gateway's MPS pipes: MPS talks over UNIX sockets in it, whose paths
    must stay under about 100 bytes, which a deep data folder would exceed."""
    tag = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"aigc-mps-{tag}"


class MpsError(PermanentError):
    code = "mps_failed"


class MpsControl:
    def __init__(
        self,
        root: Path,
        *,
        command: str = "nvidia-cuda-mps-control",
        nvidia_smi: str = "nvidia-smi",
    ) -> None:
        self._root = Path(root)
        self._command = command
        self._nvidia_smi = nvidia_smi
        self._lock = asyncio.Lock()

    @property
    def program(self) -> str | None:
        """The control program's path, or None where it is not installed."""
        return shutil.which(self._command)

    def _dir(self, device: str) -> Path:
        return self._root / hashlib.sha256(device.encode()).hexdigest()[:12]

    def client_env(self, device: str, memory_mib: int) -> dict[str, str]:
        """What an engine holding a ``memory_mib`` share of ``device`` is started with. The
        engine sees only its card, so the limit names CUDA device 0."""
        d = self._dir(device)
        return {
            "CUDA_MPS_PIPE_DIRECTORY": str(d / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(d / "log"),
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={memory_mib}M",
        }

    def _daemon_pid(self, device: str) -> int | None:
        """The control daemon's pid from the file it writes in its pipe folder, if it lives."""
        try:
            pid = int((self._dir(device) / "pipe" / "nvidia-cuda-mps-control.pid").read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def running(self, device: str) -> bool:
        pipe = self._dir(device) / "pipe"
        if (pipe / "nvidia-cuda-mps-control.pid").exists():
            return self._daemon_pid(device) is not None
        return (pipe / "control").exists()  # a daemon that writes no pid file

    def _daemon_env(self, device: str) -> dict[str, str]:
        d = self._dir(device)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_")}
        env.update(
            CUDA_VISIBLE_DEVICES=device,
            CUDA_MPS_PIPE_DIRECTORY=str(d / "pipe"),
            CUDA_MPS_LOG_DIRECTORY=str(d / "log"),
        )
        return env

    async def ensure(self, device: str) -> bool:
        """Start the card's daemon unless it runs; False where MPS is not installed."""
        program = self.program
        if program is None:
            return False
        async with self._lock:
            if self.running(device):
                return True
            d = self._dir(device)
            (d / "pipe").mkdir(parents=True, exist_ok=True)
            (d / "log").mkdir(parents=True, exist_ok=True)
            await self._exclusive(device)
            out_path = d / "log" / "start.out"
            # The daemon forks and keeps whatever output it was given: a file, never a pipe we
            # would wait on for an end that does not come.
            with open(out_path, "wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    program,
                    "-d",
                    env=self._daemon_env(device),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
            try:
                code = await asyncio.wait_for(proc.wait(), START_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                raise MpsError(
                    f"the MPS control daemon for GPU {device} did not start in "
                    f"{START_TIMEOUT_S:g} s ({program} -d)"
                ) from None
            said = out_path.read_text(errors="replace").strip()
            if code != 0 and "already" not in said.lower():
                raise MpsError(
                    f"could not start the MPS control daemon for GPU {device} "
                    f"({program} -d exited with {code}): {said}"
                )
            log.info("MPS control daemon started", extra={"gpu": device})
            return True

    async def stop(self, device: str) -> None:
        """Ask the card's daemon to quit (nothing when none runs)."""
        program = self.program
        if program is None or not self.running(device):
            return
        async with self._lock:
            proc = await asyncio.create_subprocess_exec(
                program,
                env=self._daemon_env(device),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(b"quit\n"), QUIT_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                log.warning("MPS control did not answer 'quit' in time", extra={"gpu": device})
                return
            if proc.returncode != 0:
                log.warning("MPS control 'quit' failed: %s", out.decode(errors="replace").strip())
                return
            # The daemon leaves its pipe files behind; wait for the process itself to end so a
            # new share on this card never talks to a daemon on its way out.
            pid = self._daemon_pid(device)
            for _ in range(int(QUIT_TIMEOUT_S / 0.05)):
                if pid is None or self._daemon_pid(device) is None:
                    break
                await asyncio.sleep(0.05)
            else:
                log.warning("MPS control daemon did not exit after 'quit'", extra={"gpu": device})
            pipe = self._dir(device) / "pipe"
            for name in ("control", "nvidia-cuda-mps-control.pid"):
                (pipe / name).unlink(missing_ok=True)
            await self._restore_mode(device)
            log.info("MPS control daemon stopped", extra={"gpu": device})

    # -- compute mode: only the MPS daemon may create contexts on a shared card ----------------

    async def _smi(self, *args: str) -> tuple[int, str]:
        program = shutil.which(self._nvidia_smi)
        if program is None:
            return 127, f"{self._nvidia_smi} not found"
        proc = await asyncio.create_subprocess_exec(
            program,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace").strip()

    async def _exclusive(self, device: str) -> None:
        """Set the card to ``EXCLUSIVE_PROCESS`` while its MPS daemon runs (the daemon is then
        the only process that can hold a context, so a client that ignores the pipe directory
        cannot bypass its memory limit); the mode it had is kept for :meth:`_restore_mode`."""
        saved = self._dir(device) / "compute_mode"
        code, mode = await self._smi(
            "-i", device, "--query-gpu=compute_mode", "--format=csv,noheader"
        )
        if code != 0:
            log.warning("GPU share: compute mode not set (%s)", mode, extra={"gpu": device})
            return
        if not saved.exists():
            saved.write_text(mode)
        code, said = await self._smi("-i", device, "-c", "EXCLUSIVE_PROCESS")
        if code != 0:
            log.warning("GPU share: EXCLUSIVE_PROCESS refused: %s", said, extra={"gpu": device})

    async def _restore_mode(self, device: str) -> None:
        saved = self._dir(device) / "compute_mode"
        try:
            mode = saved.read_text().strip()
        except FileNotFoundError:
            return
        code, said = await self._smi("-i", device, "-c", mode.upper().replace(" ", "_"))
        if code != 0:
            log.warning("GPU compute mode not restored: %s", said, extra={"gpu": device})
            return
        saved.unlink(missing_ok=True)
