"""Reaching ``<slug>.localhost`` hosts in tests: this machine does not resolve ``*.localhost``,
so a transport sends those requests to the gateway's socket with the real ``Host`` header, the
way a browser would reach them."""

from __future__ import annotations

from typing import Any

import httpx


class LocalhostTransport(httpx.AsyncBaseTransport):
    def __init__(self, port: int, **kwargs: Any) -> None:
        self._port = port
        self._inner = httpx.AsyncHTTPTransport(**kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host.endswith(".localhost"):
            request = httpx.Request(
                request.method,
                request.url.copy_with(host="127.0.0.1", port=self._port),
                headers=request.headers,  # Host keeps the instance host and port
                stream=request.stream,
                extensions=request.extensions,
            )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def browser_for(gateway_url: str, **kwargs: Any) -> httpx.AsyncClient:
    """A cookie-keeping client that reaches the gateway and its instance hosts."""
    port = httpx.URL(gateway_url).port
    assert port is not None
    return httpx.AsyncClient(transport=LocalhostTransport(port), **kwargs)
