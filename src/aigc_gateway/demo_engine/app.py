"""The demo engine's Starlette application: HTML page, JSON API, SSE and WebSocket.

Endpoints (all paths are relative, so the app also works behind a path prefix):

* ``GET /`` the web page; ``GET /healthz`` → ``{"ok": true}``
* ``GET /api/state`` counters (generations survive restarts, via ``state.json``)
* ``POST /api/generate`` ``{"prompt", "seed"?}`` → 202 ``{"job": id}``
* ``GET /api/jobs/{id}`` status; ``GET /api/jobs/{id}/events`` Server-Sent Events
* ``WebSocket /ws`` generate / ping / echo / close (with a code) over JSON text frames; binary
  frames echoed; subprotocol ``demo.v1`` when offered
* ``GET /api/outputs`` list, newest first; ``GET /outputs/{name}`` one file
* ``POST /api/upload?name=`` streamed upload; ``GET /api/download/{size_mib}`` streamed bytes
* ``GET|POST|... /api/echo[/{path}]`` what the engine received (headers, cookies, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .engine import MAX_SEED, Engine, Job
from .store import OutputStore, create_temp

__all__ = ["create_app"]

MIB = 1024 * 1024
MAX_DOWNLOAD_MIB = 16 * 1024
MAX_PROMPT_LENGTH = 2000
_UPLOAD_FLUSH_BYTES = MIB
_ECHO_BODY_LIMIT = 64 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _parse_generate(payload: Any) -> tuple[str, int | None] | str:
    """``(prompt, seed)`` from a generate request, or an error message."""
    if not isinstance(payload, Mapping):
        return "expected a JSON object"
    prompt = payload.get("prompt")
    if not isinstance(prompt, str):
        return "'prompt' must be a string"
    if len(prompt) > MAX_PROMPT_LENGTH:
        return f"'prompt' is longer than {MAX_PROMPT_LENGTH} characters"
    seed = payload.get("seed")
    if seed is None:
        return prompt, None
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        return f"'seed' must be an integer from 0 to {MAX_SEED}"
    return prompt, seed


def _describe_connection(
    headers: Headers,
    cookies: Mapping[str, str],
    query: QueryParams,
    scope: Mapping[str, Any],
) -> dict[str, Any]:
    joined: dict[str, str] = {}
    for key, value in headers.items():
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    client = scope.get("client")
    return {
        "path": scope.get("path", ""),
        "root_path": scope.get("root_path", ""),
        "scheme": scope.get("scheme", ""),
        "query": dict(query),
        "query_string": scope.get("query_string", b"").decode("latin-1"),
        "headers": joined,
        "raw_headers": [[key, value] for key, value in headers.items()],
        "cookies": dict(cookies),
        "client": list(client) if client else None,
    }


class _DemoEngine:
    """Request handlers, sharing one :class:`Engine` and :class:`OutputStore`."""

    def __init__(self, engine: Engine, store: OutputStore, index_html: str) -> None:
        self.engine = engine
        self.store = store
        self.index_html = index_html
        self._download_block: bytes | None = None

    # --- page and health -------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.index_html, headers={"Cache-Control": "no-cache"})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def state(self, request: Request) -> Response:
        persisted = self.store.state()
        return JSONResponse(
            {
                "generations": persisted["generations"],
                "last_output": persisted["last_output"],
                "steps": self.engine.steps,
                "busy": self.engine.busy,
                "queued": self.engine.queued,
            }
        )

    # --- jobs ------------------------------------------------------------------------

    async def generate(self, request: Request) -> Response:
        try:
            payload = await request.json()
        except ValueError:
            return _error(400, "request body must be JSON")
        parsed = _parse_generate(payload)
        if isinstance(parsed, str):
            return _error(400, parsed)
        job = self.engine.submit(*parsed)
        return JSONResponse({"job": job.id}, status_code=202)

    def _job(self, request: Request) -> Job | None:
        return self.engine.get(str(request.path_params["job_id"]))

    async def job_status(self, request: Request) -> Response:
        job = self._job(request)
        if job is None:
            return _error(404, "no such job")
        return JSONResponse(job.to_json())

    async def job_events(self, request: Request) -> Response:
        job = self._job(request)
        if job is None:
            return _error(404, "no such job")
        try:
            after = int(request.headers.get("last-event-id", "-1"))
        except ValueError:
            after = -1

        # Set by sse-starlette when the server shuts down: end the stream cleanly
        # (the browser reconnects with Last-Event-ID) instead of being cut off.
        shutdown = anyio.Event()

        async def events() -> AsyncIterator[ServerSentEvent]:
            async for event in job.follow(after, stop=shutdown):
                yield ServerSentEvent(
                    data=json.dumps(event.data), event=event.name, id=str(event.index)
                )

        response: Response = EventSourceResponse(
            events(),
            headers={"Cache-Control": "no-cache"},
            shutdown_event=shutdown,
            shutdown_grace_period=2.0,
        )
        return response

    # --- WebSocket -------------------------------------------------------------------

    async def websocket(self, websocket: WebSocket) -> None:
        # The demo speaks one subprotocol, chosen if the client offers it.
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="demo.v1" if "demo.v1" in offered else None)
        send_lock = asyncio.Lock()
        followers: set[asyncio.Task[None]] = set()

        async def send_json(message: dict[str, Any]) -> None:
            async with send_lock:
                await websocket.send_text(json.dumps(message))

        async def forward(job: Job) -> None:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                async for event in job.follow():
                    await send_json({"type": event.name, "job": job.id, **event.data})

        def start_forwarding(job: Job) -> None:
            task = asyncio.get_running_loop().create_task(forward(job))
            followers.add(task)
            task.add_done_callback(followers.discard)

        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is not None:
                    async with send_lock:
                        await websocket.send_bytes(message["bytes"])
                    continue
                try:
                    request = json.loads(message.get("text") or "")
                except ValueError:
                    await send_json({"type": "error", "error": "text frames must be JSON"})
                    continue
                kind = request.get("type") if isinstance(request, dict) else None
                if kind == "ping":
                    await send_json({**request, "type": "pong"})
                elif kind == "generate":
                    parsed = _parse_generate(request)
                    if isinstance(parsed, str):
                        await send_json({"type": "error", "error": parsed})
                        continue
                    job = self.engine.submit(*parsed)
                    await send_json({"type": "queued", "job": job.id, "steps": job.steps})
                    start_forwarding(job)
                elif kind == "subscribe":
                    found = self.engine.get(str(request.get("job")))
                    if found is None:
                        await send_json({"type": "error", "error": "no such job"})
                    else:
                        start_forwarding(found)
                elif kind == "close":
                    # Lets clients (and proxy tests) see a chosen close code pass through.
                    code = request.get("code", 1000)
                    await websocket.close(code=code if isinstance(code, int) else 1000)
                    break
                elif kind == "echo":
                    await send_json(
                        {
                            "type": "echo",
                            **_describe_connection(
                                websocket.headers,
                                websocket.cookies,
                                websocket.query_params,
                                websocket.scope,
                            ),
                        }
                    )
                else:
                    await send_json({"type": "error", "error": f"unknown message type {kind!r}"})
        except WebSocketDisconnect:
            pass
        finally:
            for task in list(followers):
                task.cancel()
            for task in list(followers):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # --- outputs ---------------------------------------------------------------------

    async def list_outputs(self, request: Request) -> Response:
        return JSONResponse(await anyio.to_thread.run_sync(self.store.list_outputs))

    async def output_file(self, request: Request) -> Response:
        path = self.store.output_path(str(request.path_params["name"]))
        if path is None:
            return _error(404, "no such output")
        return FileResponse(path)

    # --- bulk transfer ---------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        name = request.query_params.get("name", "")
        target = self.store.input_path(name)
        if target is None:
            return _error(400, "query parameter 'name' must be a plain file name")
        digest = hashlib.sha256()
        size = 0
        fd, tmp = await anyio.to_thread.run_sync(create_temp, target.parent, "upload", ".part")
        try:
            async with await anyio.open_file(fd, "wb", closefd=True) as fh:
                pending = bytearray()
                async for chunk in request.stream():
                    digest.update(chunk)
                    size += len(chunk)
                    pending += chunk
                    if len(pending) >= _UPLOAD_FLUSH_BYTES:
                        await fh.write(bytes(pending))
                        pending.clear()
                if pending:
                    await fh.write(bytes(pending))
            await anyio.to_thread.run_sync(os.replace, tmp, target)
        except ClientDisconnect:
            await anyio.Path(tmp).unlink(missing_ok=True)
            return _error(400, "upload interrupted")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.Path(tmp).unlink(missing_ok=True)
            raise
        return JSONResponse({"name": name, "size": size, "sha256": digest.hexdigest()})

    async def download(self, request: Request) -> Response:
        size_mib = int(request.path_params["size_mib"])
        if size_mib > MAX_DOWNLOAD_MIB:
            return _error(400, f"at most {MAX_DOWNLOAD_MIB} MiB")
        if self._download_block is None:
            self._download_block = random.Random(0).randbytes(MIB)
        block = self._download_block

        async def body() -> AsyncIterator[bytes]:
            for _ in range(size_mib):
                yield block

        return StreamingResponse(
            body(),
            media_type="application/octet-stream",
            headers={"Content-Length": str(size_mib * MIB), "Cache-Control": "no-store"},
        )

    async def echo(self, request: Request) -> Response:
        description = _describe_connection(
            request.headers, request.cookies, request.query_params, request.scope
        )
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                **description,
                "body": body[:_ECHO_BODY_LIMIT].decode("utf-8", errors="replace"),
                "body_size": len(body),
            }
        )


def _read_index_html() -> str:
    return (
        resources.files("aigc_gateway.demo_engine")
        .joinpath("static", "index.html")
        .read_text(encoding="utf-8")
    )


def create_app(
    data_dir: str | os.PathLike[str], steps: int = 8, step_delay: float = 0.05
) -> Starlette:
    """Build the demo engine web app for one instance, storing everything under ``data_dir``.

    ``steps`` simulated steps of ``step_delay`` seconds each make up one generation.
    The folder is created if missing; ``state.json`` from an earlier run is picked up.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if step_delay < 0:
        raise ValueError("step_delay must not be negative")
    store = OutputStore(Path(data_dir))
    store.open()
    engine = Engine(store, steps, step_delay)
    handlers = _DemoEngine(engine, store, _read_index_html())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await engine.aclose()

    echo_methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes = [
        Route("/", handlers.index),
        Route("/healthz", handlers.healthz),
        Route("/api/state", handlers.state),
        Route("/api/generate", handlers.generate, methods=["POST"], max_body_size=64 * 1024),
        Route("/api/jobs/{job_id}", handlers.job_status),
        Route("/api/jobs/{job_id}/events", handlers.job_events),
        WebSocketRoute("/ws", handlers.websocket),
        Route("/api/outputs", handlers.list_outputs),
        Route("/outputs/{name}", handlers.output_file),
        Route("/api/upload", handlers.upload, methods=["POST", "PUT"]),
        Route("/api/download/{size_mib:int}", handlers.download),
        Route("/api/echo", handlers.echo, methods=echo_methods),
        Route("/api/echo/{rest:path}", handlers.echo, methods=echo_methods),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.engine = engine
    app.state.store = store
    return app
