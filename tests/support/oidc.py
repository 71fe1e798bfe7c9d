"""A real OpenID Connect provider for the tests: panva's ``oidc-provider`` (Node.js).

``tests/oidc/provider.mjs`` runs it on 127.0.0.1 with the clients and users given here, a plain
HTML login form (``/interaction/<uid>``), automatic consent and RP-initiated logout. Its node
modules come from ``npm ci --prefix tests/oidc`` (``scripts/system-deps.sh`` runs it).

    with oidc_provider(clients=[...], users=[...], groups_in="userinfo") as op:
        op.issuer, op.discovery_url, op.port

Clients are oidc-provider client metadata (``client_id``, ``client_secret``, ``redirect_uris``,
``post_logout_redirect_uris``, ``grant_types``, ``response_types``,
``token_endpoint_auth_method``); users are ``{sub, username, password, email, name, groups}``.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PROVIDER_DIR = REPO_ROOT / "tests" / "oidc"
PROVIDER_SCRIPT = PROVIDER_DIR / "provider.mjs"
GROUPS_IN = ("id_token", "userinfo", "both")
START_TIMEOUT = 30.0
"""A bound, not a wait: READY ends it at once (about 0.4 s here)."""
START_ATTEMPTS = 3
"""Rarely (about once per full suite on a 2-core CI machine) a provider process never prints
READY; it is stopped and started afresh rather than failing a test that never reached it."""
INSTALL_HINT = "run `npm ci --prefix tests/oidc` (scripts/system-deps.sh does)"


@dataclass(frozen=True)
class OidcProvider:
    issuer: str
    discovery_url: str
    port: int


def provider_available() -> bool:
    """Node is on PATH and the provider's node modules are installed."""
    return (
        shutil.which("node") is not None
        and (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir()
    )


def _pump(stream: IO[str], sink: queue.Queue[str | None] | None, tail: deque[str]) -> None:
    """Read ``stream`` to its end (so the pipe never fills), keeping the last lines in ``tail``."""
    for line in stream:
        tail.append(line.rstrip("\n"))
        if sink is not None:
            sink.put(line)
    if sink is not None:
        sink.put(None)


@contextmanager
def oidc_provider(
    *,
    clients: list[dict[str, Any]],
    users: list[dict[str, Any]],
    groups_in: str = "both",
    port: int | None = None,
) -> Iterator[OidcProvider]:
    """Run the provider until the block ends.

    ``port=None`` lets the provider listen on a free port of its own choosing (no race between
    picking and binding); the issuer is ``http://127.0.0.1:<port>`` either way.
    """
    if groups_in not in GROUPS_IN:
        raise ValueError(f"groups_in must be one of {GROUPS_IN}, not {groups_in!r}")
    node = shutil.which("node")
    if node is None:
        raise RuntimeError(f"node is not on PATH: install Node.js (>= 20.18), then {INSTALL_HINT}")
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        raise RuntimeError(f"the OIDC provider's node modules are missing: {INSTALL_HINT}")

    config: dict[str, Any] = {"clients": clients, "users": users, "groups_in": groups_in}
    if port is not None:
        config["port"] = port
        config["issuer"] = f"http://127.0.0.1:{port}"

    with tempfile.TemporaryDirectory(prefix="aigc-oidc-") as tmp:
        config_path = Path(tmp) / "provider.json"
        config_path.write_text(json.dumps(config), encoding="utf-8")
        for attempt in range(1, START_ATTEMPTS + 1):
            proc, pumps, lines, err_tail = _start(node, config_path)
            try:
                issuer = _wait_ready(lines)
                break
            except _NotReady as exc:
                _stop(proc, pumps)
                if attempt < START_ATTEMPTS and "did not print READY" in str(exc):
                    continue
                raise RuntimeError(
                    f"the OIDC provider {exc} (exit status {proc.returncode}); stderr:\n"
                    + "\n".join(err_tail)
                ) from None
            except BaseException:
                _stop(proc, pumps)
                raise
        try:
            yield OidcProvider(
                issuer=issuer,
                discovery_url=f"{issuer}/.well-known/openid-configuration",
                port=int(issuer.rsplit(":", 1)[1]),
            )
        finally:
            _stop(proc, pumps)


def _start(
    node: str, config_path: Path
) -> tuple[subprocess.Popen[str], list[threading.Thread], queue.Queue[str | None], deque[str]]:
    proc = subprocess.Popen(
        [node, str(PROVIDER_SCRIPT), str(config_path)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    out_tail: deque[str] = deque(maxlen=50)
    err_tail: deque[str] = deque(maxlen=200)
    pumps = [
        threading.Thread(
            target=_pump, args=(proc.stdout, lines, out_tail), name="oidc-stdout", daemon=True
        ),
        threading.Thread(
            target=_pump, args=(proc.stderr, None, err_tail), name="oidc-stderr", daemon=True
        ),
    ]
    for pump in pumps:
        pump.start()
    return proc, pumps, lines, err_tail


class _NotReady(Exception):
    pass


def _stop(proc: subprocess.Popen[str], pumps: list[threading.Thread]) -> None:
    """Terminate the provider (SIGTERM; it exits 0), drain and close its pipes."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    for pump in pumps:
        pump.join(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _wait_ready(lines: queue.Queue[str | None]) -> str:
    """The issuer from the provider's ``READY <issuer>`` line, within ``START_TIMEOUT``."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            raise _NotReady(f"did not print READY within {START_TIMEOUT:.0f} s") from None
        if line is None:
            raise _NotReady("exited before it was ready")
        if line.startswith("READY "):
            return line.split(" ", 1)[1].strip()
