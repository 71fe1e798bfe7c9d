"""The gateway as a real process (``python -m aigc_gateway serve``), for restart tests and the
benchmarks that must measure it apart from the client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def gateway_process(
    data: Path, templates: Path, port: int, **env_extra: str
) -> Iterator[subprocess.Popen[str]]:
    """``aigc-gateway serve`` as a real process; returns once it accepts requests."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_")}
    env = {**base, "AIGC_RECONCILE_INTERVAL_S": "0.3", "AIGC_STOP_GRACE_S": "3", **env_extra}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aigc_gateway",
            "serve",
            "--dev",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--templates-dir",
            str(templates),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # uvicorn says so once the app's startup has completed
        seen.append(line)
        if "Application startup complete" in line:
            break
    else:
        raise AssertionError("gateway did not start:\n" + "".join(seen))
    # Keep reading its log so a full pipe never blocks the gateway.
    drain = threading.Thread(target=proc.stderr.read, daemon=True)
    drain.start()
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        drain.join(10)
        proc.stderr.close()
