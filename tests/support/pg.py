"""A real PostgreSQL server for the tests, from Debian's `postgresql` package.

Started once per session in a temporary folder on a free port (as the `postgres` user when the
tests run as root, since PostgreSQL refuses to run as root). Each test gets a fresh database.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


START_ATTEMPTS = 5
"""PostgreSQL binds its port itself: one picked free may be taken before it starts (another
program, another test process), then it is started again on another."""


def _unused_port() -> int:
    """A port free at this moment (PostgreSQL binds it itself: see :data:`START_ATTEMPTS`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(run: Callable[..., object], bindir: Path, root: Path) -> int:
    """Start the server in ``root``; return its port, retrying on a port taken meanwhile."""
    for attempt in range(1, START_ATTEMPTS + 1):
        port = _unused_port()
        (root / "log").unlink(missing_ok=True)  # its text tells this attempt's failure
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
        )
        try:
            run(
                str(bindir / "pg_ctl"),
                "-D",
                str(root / "data"),
                "-o",
                options,
                "-l",
                str(root / "log"),
                "-w",
                "start",
            )
            return port
        except subprocess.CalledProcessError:
            log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
            if "Address already in use" not in log or attempt == START_ATTEMPTS:
                raise RuntimeError(f"PostgreSQL did not start:\n{log}") from None
    raise AssertionError("unreachable")


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a base URL ``postgresql+asyncpg://postgres@127.0.0.1:PORT`` (no database part)."""
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL is not installed: run scripts/system-deps.sh (make test does)"
        )
    root = Path(tempfile.mkdtemp(prefix="aigc-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    run = lambda *args: subprocess.run(  # noqa: E731
        [*as_user, *args], check=True, capture_output=True, text=True, timeout=120
    )
    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    port = _start(run, bindir, root)
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


async def create_database(base_url: str) -> str:
    """A fresh, empty database on the server at ``base_url``; its SQLAlchemy URL."""
    import asyncpg

    name = "t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(base_url.replace("postgresql+asyncpg", "postgresql") + "/postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{base_url}/{name}"
