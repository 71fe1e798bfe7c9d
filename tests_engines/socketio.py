"""A small Socket.IO client (Engine.IO protocol v4, Socket.IO protocol v5) for the engine tests.

It speaks the protocol itself, over the gateway's instance host, the way InvokeAI's own web
client does: the HTTP long-polling handshake first, then (optionally) the upgrade of the same
session to a WebSocket. ``python-socketio`` is InvokeAI's dependency, not the gateway's, and a
hand-made client also shows exactly what crosses the proxy.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import websockets

PATH = "/ws/socket.io/"
RECORD_SEPARATOR = "\x1e"  # between packets in one polling payload


class SocketIO:
    """One Socket.IO session on ``base_url`` (an instance URL), through ``client`` (which holds
    the instance cookie) and, after :meth:`upgrade`, over a WebSocket to the gateway's port."""

    def __init__(self, *, client: httpx.AsyncClient, base_url: str, cookie: str) -> None:
        self._client = client
        self._url = httpx.URL(base_url)
        self._cookie = cookie
        self.sid = ""
        self.transports: list[str] = []
        self._ws: websockets.ClientConnection | None = None
        self._pending: list[str] = []  # packets of the last polling answer not yet read

    async def connect(self) -> dict[str, Any]:
        """The polling handshake, then the default namespace's CONNECT; returns its answer."""
        r = await self._client.get(self._endpoint("polling"))
        assert r.status_code == 200, (r.status_code, r.headers, r.text[:200])
        assert r.text.startswith("0"), r.text[:200]
        opened = json.loads(r.text[1:])
        self.sid = opened["sid"]
        self.transports.append("polling")
        await self._post("40")
        packet = await self._next_packet()
        assert packet.startswith("40"), packet
        return dict(json.loads(packet[2:] or "{}"))

    async def upgrade(self) -> None:
        """Move this session to a WebSocket (probe, then upgrade), as socket.io-client does."""
        assert self._url.port is not None
        self._ws = await websockets.connect(
            str(self._endpoint("websocket").copy_with(scheme="ws")),
            host="127.0.0.1",  # the instance host is in the URL (and so in Host)
            port=self._url.port,
            additional_headers={"Cookie": f"aigc_instance={self._cookie}"},
        )
        await self._ws.send("2probe")
        assert await self._ws.recv() == "3probe"
        await self._ws.send("5")
        self.transports.append("websocket")

    async def emit(self, event: str, data: Any) -> None:
        await self._send("42" + json.dumps([event, data]))

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """Events as ``(name, data)``, answering the server's pings on the way."""
        while True:
            packet = await self._next_packet()
            if packet == "2":
                await self._send("3")
            elif packet.startswith("42"):
                name, *args = json.loads(packet[2:])
                yield name, (args[0] if args else None)
            elif packet.startswith("1"):
                raise AssertionError("the server closed the Socket.IO session")

    async def aclose(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        elif self.sid:
            await self._post("1")

    def _endpoint(self, transport: str) -> httpx.URL:
        params = {"EIO": "4", "transport": transport}
        if self.sid:
            params["sid"] = self.sid
        return self._url.join(PATH).copy_merge_params(params)

    async def _post(self, payload: str) -> None:
        r = await self._client.post(self._endpoint("polling"), content=payload.encode())
        assert r.status_code == 200 and r.text.lower() == "ok", (r.status_code, r.text[:200])

    async def _send(self, packet: str) -> None:
        if self._ws is not None:
            await self._ws.send(packet)
        else:
            await self._post(packet)

    async def _next_packet(self) -> str:
        if self._ws is not None:
            message = await self._ws.recv()
            assert isinstance(message, str)
            return message
        if not self._pending:
            # A long poll: the server answers when it has packets (or a ping).
            r = await self._client.get(self._endpoint("polling"), timeout=None)
            assert r.status_code == 200, (r.status_code, r.text[:200])
            self._pending = r.text.split(RECORD_SEPARATOR)
        return self._pending.pop(0)
