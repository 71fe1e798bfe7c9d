"""What a client gets when something fails: the error vocabulary decides, bugs are a logged
500 that leaks nothing, invalid report dates a 422 naming the parameter, and the connection stays
usable after each. The real gateway on a real socket; the store's failures come from a hook in
the real database driver path (a failure mode the real store cannot produce on demand)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from aigc_gateway.api.errors import retry_after
from aigc_gateway.app import create_app
from aigc_gateway.bootstrap import bootstrap
from aigc_gateway.errors import TemporaryError
from aigc_gateway.gateway import Gateway
from aigc_gateway.settings import Settings
from tests.support.faults import StoreFault
from tests.support.gateway import add_user, stop_engines
from tests.support.server import bound_socket, serve_in_thread


@dataclass
class Served:
    url: str
    token: str
    fault: StoreFault


@pytest.fixture
def served(gateway_settings: Settings) -> Iterator[Served]:
    sock = bound_socket()
    # No periodic job meanwhile: the store's faults are for the requests of the test.
    settings = gateway_settings.model_copy(
        update={
            "public_url": f"http://127.0.0.1:{sock.getsockname()[1]}",
            "reconcile_interval_s": 3600,
        }
    )
    assert asyncio.run(bootstrap(settings)) is not None
    token = asyncio.run(add_user(settings, "alice"))
    app: FastAPI = create_app(settings)
    try:
        with serve_in_thread(app, sock) as url:
            gw: Gateway = app.state.gateway
            yield Served(url, token, StoreFault(gw.db.engine, only="SELECT"))
    finally:
        stop_engines(settings)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive HTTP/1.1 connection, by hand: it shows whether the gateway closed it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        parsed = httpx.URL(url)
        return cls(*await asyncio.open_connection(parsed.host, parsed.port))

    async def get(self, target: str, token: str) -> Answer:
        self.writer.write(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        async with asyncio.timeout(30):
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status_line, *lines = head.strip().split("\r\n")
            headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
            body = await self.reader.readexactly(int(headers["content-length"]))
        return Answer(int(status_line.split()[1]), headers, body)

    async def aclose(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def test_retry_after_is_the_delay_in_whole_seconds_rounded_up() -> None:
    assert retry_after(TemporaryError("busy", delay=2.5)) == "3"
    assert retry_after(TemporaryError("busy", delay=0.2)) == "1"
    assert retry_after(TemporaryError("busy", delay=30)) == "30"


async def test_store_errors_are_temporary_only_when_they_pass(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await Connection.open(served.url)
    try:
        assert (await conn.get("/api/instances", served.token)).status == 200
        served.fault.queued.append(sqlite3.OperationalError("database is locked"))
        busy = await conn.get("/api/instances", served.token)
        assert busy.status == 503
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["code"] == "temporarily_unavailable"
        # A bug in a statement: a 500 that names nothing, with the traceback in the log.
        for bug in (
            sqlite3.ProgrammingError("secret-detail: no such column"),
            sqlite3.OperationalError("no such table: secret-detail"),
            sqlite3.IntegrityError("UNIQUE constraint failed: secret-detail"),
        ):
            served.fault.queued.append(bug)
            broken = await conn.get("/api/instances", served.token)
            assert broken.status == 500, (bug, broken)
            assert broken.json()["code"] == "internal_error"
            assert b"secret-detail" not in broken.body
            assert "retry-after" not in broken.headers
        # Same connection, still open.
        assert (await conn.get("/api/instances", served.token)).status == 200
    finally:
        await conn.aclose()
    bugs = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(bugs) == 3
    assert all("secret-detail" in str(r.exc_info[1]) for r in bugs if r.exc_info)


@pytest.mark.parametrize(
    ("target", "parameter"),
    [
        ("/api/usage/report?since=2026-13-45", "since"),
        ("/api/usage/report?until=2026-02-30", "until"),
        ("/api/usage/report?since=yesterday", "since"),
        ("/api/usage/report?until=2026-1-5", "until"),
        ("/api/usage/report?by=colour", "by"),
        ("/api/usage/report?period=year", "period"),
        ("/api/usage/report?since=2026-11-01&until=2026-11-31&format=csv", "until"),
        ("/usage?per=year", "per"),
    ],
)
async def test_invalid_usage_parameters_are_a_422_naming_them(
    served: Served, target: str, parameter: str
) -> None:
    conn = await Connection.open(served.url)
    try:
        bad = await conn.get(target, served.token)
        assert bad.status == 422, bad
        assert bad.json()["code"] == "invalid_request"
        assert bad.json()["message"].startswith(f"query.{parameter}:")
        assert [e["field"] for e in bad.json()["errors"]] == [f"query.{parameter}"]
        # The connection is still open, and a valid report is answered on it.
        ok = await conn.get("/api/usage/report?since=2026-11-01&until=2026-11-30", served.token)
        assert ok.status == 200
    finally:
        await conn.aclose()
