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

from tests.support.gateway import TEST_SANDBOX


@contextmanager
def gateway_process(
    data: Path, templates: Path, listener: socket.socket, **env_extra: str
) -> Iterator[subprocess.Popen[str]]:
    """``aigc-gateway serve`` as a real process on ``listener`` (a bound socket, e.g.
    :func:`tests.support.server.bound_socket`, handed over as ``--fd``: no other program can take
    its port between choosing and serving, and a restarted gateway gets the same port); returns
    once it accepts requests. The caller keeps and closes ``listener``."""
    listener.listen(128)  # connections wait for the gateway's accept, never refused
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIGC_")}
    env = {
        **base,
        "AIGC_RECONCILE_INTERVAL_S": "0.3",
        "AIGC_STOP_GRACE_S": "3",
        "AIGC_SANDBOX": TEST_SANDBOX,
        **env_extra,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aigc_gateway",
            "serve",
            "--dev",
            "--fd",
            str(listener.fileno()),
            "--data-dir",
            str(data),
            "--templates-dir",
            str(templates),
        ],
        env=env,
        pass_fds=(listener.fileno(),),
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
