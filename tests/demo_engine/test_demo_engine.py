"""Tests of the demo engine: HTTP API, SSE, WebSocket, files on disk and the real process."""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning

from aigc_gateway.demo_engine import create_app
from aigc_gateway.demo_engine.__main__ import parse_options
from aigc_gateway.demo_engine.images import PNG_SIGNATURE, encode_png, render_png
from aigc_gateway.demo_engine.store import OutputStore, is_safe_name, slugify

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 package for its TestClient; httpx works the same here.
    warnings.filterwarnings("ignore", "Using `httpx`", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

STEPS = 4
MIB = 1024 * 1024


# --- helpers -----------------------------------------------------------------------------


def parse_sse(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Events of an SSE stream as ``{"event", "data", "id"}`` dicts (data JSON-decoded)."""
    events: list[dict[str, Any]] = []
    fields: dict[str, str] = {}
    for raw in [*lines, ""]:
        line = raw.rstrip("\r")
        if line == "":
            if "data" in fields:
                events.append(
                    {
                        "event": fields.get("event", "message"),
                        "data": json.loads(fields["data"]),
                        "id": fields.get("id"),
                    }
                )
            fields = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        fields[key] = value.removeprefix(" ")
    return events


def png_info(data: bytes) -> tuple[int, int, bytes]:
    """``(width, height, raw scanlines)`` of an 8-bit RGB PNG, checking every chunk's CRC."""
    assert data.startswith(PNG_SIGNATURE)
    pos = len(PNG_SIGNATURE)
    width = height = 0
    idat = b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 2)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert kind == b"IEND"
    return width, height, zlib.decompress(idat)


async def generate_and_wait(
    client: httpx.AsyncClient, prompt: str, seed: int | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """POST a job, read its whole SSE stream; returns ``(job id, events)``."""
    payload: dict[str, Any] = {"prompt": prompt}
    if seed is not None:
        payload["seed"] = seed
    response = await client.post("/api/generate", json=payload)
    assert response.status_code == 202
    job_id = response.json()["job"]
    events_response = await client.get(f"/api/jobs/{job_id}/events")
    assert events_response.status_code == 200
    assert events_response.headers["content-type"].startswith("text/event-stream")
    return job_id, parse_sse(events_response.text.splitlines())


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Starlette]:
    application = create_app(tmp_path, steps=STEPS, step_delay=0.001)
    yield application
    await application.state.engine.aclose()


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as http:
        yield http


# --- page and health ---------------------------------------------------------------------


async def test_healthz_and_page(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"ok": True}

    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<title>Demo engine</title>" in html
    assert "Generate" in html
    assert 'name="viewport"' in html
    assert "EventSource" in html
    assert "WebSocket" in html
    # Self-contained: no CDN, and only relative URLs so a path-prefix proxy works.
    assert "<script src" not in html
    assert "https://" not in html
    assert 'fetch("/' not in html


# --- generation over HTTP + SSE ----------------------------------------------------------


async def test_generate_streams_progress_then_done(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    job_id, events = await generate_and_wait(client, "A red fox, at dawn!", seed=7)

    names = [event["event"] for event in events]
    assert names == ["progress"] * (STEPS + 1) + ["done"]
    assert [event["data"] for event in events[:-1]] == [
        {"step": step, "steps": STEPS} for step in range(STEPS + 1)
    ]
    assert [event["id"] for event in events] == [str(i) for i in range(len(events))]
    output = events[-1]["data"]["output"]
    assert output.endswith("-a-red-fox-at-dawn.png")

    status = (await client.get(f"/api/jobs/{job_id}")).json()
    assert status["state"] == "done"
    assert (status["step"], status["steps"], status["output"]) == (STEPS, STEPS, output)

    # The image is on disk, a valid PNG, deterministic for prompt + seed.
    path = tmp_path / "outputs" / output
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height, raw = png_info(data)
    assert (width, height) == (256, 256)
    assert len(raw) == height * (1 + width * 3)
    assert data == render_png("A red fox, at dawn!", 7)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["prompt"] == "A red fox, at dawn!"
    assert sidecar["seed"] == 7
    assert not [p for p in (tmp_path / "outputs").iterdir() if p.name.startswith(".")]

    listing = (await client.get("/api/outputs")).json()
    assert listing == [
        {
            "name": output,
            "size": len(data),
            "prompt": "A red fox, at dawn!",
            "created": listing[0]["created"],
        }
    ]

    served = await client.get(f"/outputs/{output}")
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    assert served.content == data

    state = (await client.get("/api/state")).json()
    assert state["generations"] == 1
    assert state["last_output"] == output


async def test_outputs_newest_first_and_unique_names(client: httpx.AsyncClient) -> None:
    outputs = []
    for _ in range(3):
        _, events = await generate_and_wait(client, "same prompt")
        outputs.append(events[-1]["data"]["output"])
    assert len(set(outputs)) == 3
    listing = (await client.get("/api/outputs")).json()
    assert [item["name"] for item in listing] == outputs[::-1]


async def test_sse_resumes_after_last_event_id(client: httpx.AsyncClient) -> None:
    job_id, events = await generate_and_wait(client, "resume me", seed=1)
    resumed = await client.get(f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": "2"})
    assert parse_sse(resumed.text.splitlines()) == events[3:]


async def test_jobs_queue_one_at_a_time(tmp_path: Path) -> None:
    application = create_app(tmp_path, steps=3, step_delay=0.02)
    transport = httpx.ASGITransport(app=application)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as http:
            first = (await http.post("/api/generate", json={"prompt": "one"})).json()["job"]
            second = (await http.post("/api/generate", json={"prompt": "two"})).json()["job"]
            assert (await http.get(f"/api/jobs/{second}")).json()["state"] == "queued"
            await http.get(f"/api/jobs/{first}/events")
            first_status = (await http.get(f"/api/jobs/{first}")).json()
            assert first_status["state"] == "done"
            assert (await http.get(f"/api/jobs/{second}")).json()["state"] in ("queued", "running")
            await http.get(f"/api/jobs/{second}/events")
            assert (await http.get(f"/api/jobs/{second}")).json()["state"] == "done"
    finally:
        await application.state.engine.aclose()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"prompt": 5}',
        b'{"prompt": "x", "seed": -1}',
        b'{"prompt": "x", "seed": true}',
        b'{"prompt": "x", "seed": "7"}',
        b'{"prompt": "x", "seed": 4294967296}',
    ],
)
async def test_generate_rejects_bad_requests(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/api/generate", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "error" in response.json()


async def test_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/jobs/nope")).status_code == 404
    assert (await client.get("/api/jobs/nope/events")).status_code == 404


# --- files: traversal, upload, download ----------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/outputs/..%2Fstate.json",
        "/outputs/%2E%2E%2Fstate.json",
        "/outputs/%2e%2e",
        "/outputs/.hidden",
        "/outputs/state.json",
        "/outputs/%2Fetc%2Fpasswd",
        "/outputs/..%5Cstate.json",
        "/outputs/link.png",
        "/outputs/missing.png",
        "/outputs/",
    ],
)
async def test_output_traversal_is_404(
    client: httpx.AsyncClient, tmp_path: Path, path: str
) -> None:
    (tmp_path / "outputs" / ".hidden").write_text("secret")
    (tmp_path / "outputs" / "link.png").symlink_to(tmp_path / "state.json")
    (tmp_path / "state.json").write_text('{"generations": 0}')
    response = await client.get(path)
    assert response.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/outputs/..",
        "/outputs/../state.json",
        "/outputs/../../../etc/passwd",
        "/outputs/..\\state.json",
        "/outputs//etc/passwd",
        "/outputs/./link.png",
    ],
)
async def test_output_traversal_with_raw_paths_is_404(
    app: Starlette, tmp_path: Path, path: str
) -> None:
    """Paths exactly as a careless proxy might forward them (httpx would normalise them)."""
    (tmp_path / "outputs" / "link.png").symlink_to(tmp_path / "state.json")
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"demo")],
        "client": ("127.0.0.1", 1234),
        "server": ("demo", 80),
    }
    await app(scope, receive, send)
    assert messages[0]["type"] == "http.response.start"
    assert messages[0]["status"] == 404


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "/etc/passwd", "x" * 129, "é.png"]
)
def test_unsafe_names(tmp_path: Path, name: str) -> None:
    assert not is_safe_name(name)
    store = OutputStore(tmp_path)
    store.open()
    assert store.output_path(name) is None
    assert store.input_path(name) is None


def test_slugify() -> None:
    assert slugify("A Red Fox, at Dawn!") == "a-red-fox-at-dawn"
    assert slugify("***") == "image"
    assert len(slugify("word " * 50)) <= 40
    assert is_safe_name(slugify("Ünïcödé ✨ prompt") + ".png")


async def test_upload_is_streamed_to_disk(client: httpx.AsyncClient, tmp_path: Path) -> None:
    chunk_size = 64 * 1024
    chunks = [random.Random(i).randbytes(chunk_size) for i in range(48)]  # 3 MiB
    expected = b"".join(chunks)
    inputs = tmp_path / "inputs"
    seen_partial: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for index, chunk in enumerate(chunks):
            if index == 40:
                # The engine asked for more data: what it got so far is already on disk.
                seen_partial.extend(p.stat().st_size for p in inputs.glob(".upload*.part"))
            yield chunk

    response = await client.post("/api/upload", params={"name": "big.bin"}, content=body())
    assert response.status_code == 200
    assert response.json() == {
        "name": "big.bin",
        "size": len(expected),
        "sha256": hashlib.sha256(expected).hexdigest(),
    }
    assert seen_partial
    assert seen_partial[0] >= MIB
    assert seen_partial[0] < len(expected)
    assert (inputs / "big.bin").read_bytes() == expected
    assert sorted(p.name for p in inputs.iterdir()) == ["big.bin"]


@pytest.mark.parametrize("name", [None, "", "../escape", ".hidden", "a/b"])
async def test_upload_rejects_unsafe_names(
    client: httpx.AsyncClient, tmp_path: Path, name: str | None
) -> None:
    params = {} if name is None else {"name": name}
    response = await client.post("/api/upload", params=params, content=b"data")
    assert response.status_code == 400
    assert list((tmp_path / "inputs").iterdir()) == []
    assert not (tmp_path / "escape").exists()


async def test_download_streams_deterministic_bytes(client: httpx.AsyncClient) -> None:
    first = await client.get("/api/download/2")
    assert first.status_code == 200
    assert first.headers["content-length"] == str(2 * MIB)
    assert len(first.content) == 2 * MIB
    second = await client.get("/api/download/2")
    assert second.content == first.content
    assert len(set(first.content[:4096])) > 200  # not trivially compressible
    assert (await client.get("/api/download/0")).content == b""
    assert (await client.get("/api/download/999999")).status_code == 400
    assert (await client.get("/api/download/-1")).status_code == 404


async def test_echo_shows_what_the_engine_received(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/api/echo",
        params={"q": "1"},
        headers={"X-Test": "yes", "Cookie": "session=abc; theme=dark"},
    )
    echoed = response.json()
    assert echoed["method"] == "GET"
    assert echoed["path"] == "/api/echo"
    assert echoed["query"] == {"q": "1"}
    assert echoed["query_string"] == "q=1"
    assert echoed["headers"]["x-test"] == "yes"
    assert echoed["cookies"] == {"session": "abc", "theme": "dark"}
    assert ["x-test", "yes"] in echoed["raw_headers"]

    posted = await client.post("/api/echo/some/path", content=b"hello")
    echoed = posted.json()
    assert (echoed["method"], echoed["path"]) == ("POST", "/api/echo/some/path")
    assert (echoed["body"], echoed["body_size"]) == ("hello", 5)


# --- persistence -------------------------------------------------------------------------


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    for expected_count in (1, 2):
        application = create_app(tmp_path, steps=2, step_delay=0.001)
        transport = httpx.ASGITransport(app=application)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://demo") as http:
                before = (await http.get("/api/state")).json()["generations"]
                assert before == expected_count - 1
                assert len((await http.get("/api/outputs")).json()) == expected_count - 1
                await generate_and_wait(http, f"picture {expected_count}")
                assert (await http.get("/api/state")).json()["generations"] == expected_count
        finally:
            await application.state.engine.aclose()
    assert json.loads((tmp_path / "state.json").read_text())["generations"] == 2


def test_broken_state_file_counts_as_empty(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    store = OutputStore(tmp_path)
    store.open()
    assert store.generations == 0


# --- WebSocket ---------------------------------------------------------------------------


def test_websocket_generate_ping_and_binary_echo(tmp_path: Path) -> None:
    application = create_app(tmp_path, steps=STEPS, step_delay=0.001)
    with TestClient(application) as http, http.websocket_connect("/ws") as ws:
        ws.send_text(json.dumps({"type": "ping", "t": 1}))
        assert ws.receive_json() == {"type": "ping", "t": 1} | {"type": "pong"}

        payload = bytes(range(256)) * 4
        ws.send_bytes(payload)
        assert ws.receive_bytes() == payload

        ws.send_text(json.dumps({"type": "generate", "prompt": "over the socket", "seed": 3}))
        queued = ws.receive_json()
        assert queued["type"] == "queued"
        messages = []
        while True:
            message = ws.receive_json()
            messages.append(message)
            if message["type"] != "progress":
                break
        assert [m["step"] for m in messages[:-1]] == list(range(STEPS + 1))
        assert all(m["job"] == queued["job"] for m in messages)
        done = messages[-1]
        assert done["type"] == "done"
        assert (tmp_path / "outputs" / done["output"]).read_bytes() == render_png(
            "over the socket", 3
        )

        ws.send_text("not json")
        assert ws.receive_json()["type"] == "error"
        ws.send_text(json.dumps({"type": "generate", "prompt": 1}))
        assert ws.receive_json()["type"] == "error"
        ws.send_text(json.dumps({"type": "bogus"}))
        assert ws.receive_json()["type"] == "error"

        ws.send_text(json.dumps({"type": "subscribe", "job": queued["job"]}))
        replay = [ws.receive_json() for _ in range(STEPS + 2)]
        assert replay == messages

        ws.send_text(json.dumps({"type": "echo"}))
        echoed = ws.receive_json()
        assert echoed["type"] == "echo"
        assert echoed["path"] == "/ws"
        assert "sec-websocket-key" in echoed["headers"]


# --- images ------------------------------------------------------------------------------


def test_png_encoder() -> None:
    data = encode_png(2, 1, b"\xff\x00\x00\x00\xff\x00")
    assert png_info(data) == (2, 1, b"\x00\xff\x00\x00\x00\xff\x00")
    with pytest.raises(ValueError, match="expected"):
        encode_png(2, 2, b"\x00")
    assert render_png("x", 1, 16, 16) == render_png("x", 1, 16, 16)
    assert render_png("x", 1, 16, 16) != render_png("x", 2, 16, 16)
    assert render_png("x", 1, 16, 16) != render_png("y", 1, 16, 16)


# --- the real process --------------------------------------------------------------------


def test_cli_needs_a_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PORT", raising=False)
    with pytest.raises(SystemExit) as exited:
        parse_options(["--data-dir", str(tmp_path)])
    assert exited.value.code == 2


def test_cli_defaults_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.setenv("AIGC_DEMO_DATA_DIR", str(tmp_path))
    options = parse_options([])
    assert (options.host, options.port, options.data_dir) == ("127.0.0.1", 8123, str(tmp_path))
    assert (options.steps, options.step_delay) == (8, 0.05)

    monkeypatch.delenv("AIGC_DEMO_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    options = parse_options(["--port", "9000", "--steps", "3", "--step-delay", "0"])
    assert (options.port, options.data_dir, options.steps) == (9000, str(tmp_path), 3)


def _unused_port() -> int:
    """A port free at this moment; the engine binds it itself (see :func:`_start_engine`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _healthy(process: subprocess.Popen[bytes], base: str, log: Path) -> bool:
    """Whether the engine became healthy; False if it exited because its port was taken."""
    with httpx.Client(base_url=base, timeout=1.0) as http:
        for _ in range(200):  # 200 x 50 ms: generous for a slow CI machine
            if process.poll() is not None:
                if "address already in use" in log.read_text().lower():
                    return False
                pytest.fail(f"demo engine exited early:\n{log.read_text()}")
            try:
                if http.get("/healthz").json() == {"ok": True}:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    pytest.fail(f"demo engine never became healthy:\n{log.read_text()}")


def _start_engine(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The demo engine as a real process on a free port; started again on another port if the
    one picked was taken before the engine bound it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PORT", None)
    for _ in range(5):
        port = _unused_port()
        command = [sys.executable, "-m", "aigc_gateway.demo_engine", "--port", str(port)]
        command += ["--data-dir", str(data_dir), "--steps", "5", "--step-delay", "0.01"]
        with log.open("wb") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        if _healthy(process, f"http://127.0.0.1:{port}", log):
            return process, port
    pytest.fail(f"demo engine found no free port:\n{log.read_text()}")


def test_real_process(tmp_path: Path) -> None:
    from websockets.sync.client import connect

    data_dir = tmp_path / "data"
    process, port = _start_engine(data_dir, tmp_path / "engine.log")
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10.0) as http:
            job = http.post("/api/generate", json={"prompt": "from a real process", "seed": 9})
            assert job.status_code == 202
            with http.stream("GET", f"/api/jobs/{job.json()['job']}/events") as stream:
                events = parse_sse(stream.iter_lines())
            assert [e["event"] for e in events] == ["progress"] * 6 + ["done"]
            output = events[-1]["data"]["output"]
            image = http.get(f"/outputs/{output}")
            assert image.content.startswith(PNG_SIGNATURE)
            assert (data_dir / "outputs" / output).read_bytes() == image.content
            assert http.get("/api/outputs").json()[0]["name"] == output

        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
            ws.send(json.dumps({"type": "ping"}))
            assert json.loads(ws.recv(timeout=5)) == {"type": "pong"}
            ws.send(b"\x00\x01binary")
            assert ws.recv(timeout=5) == b"\x00\x01binary"

        process.terminate()
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
