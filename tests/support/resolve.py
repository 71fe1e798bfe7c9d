"""``*.localhost`` names resolve to the loopback address, as browsers do (RFC 6761, section 6.3).

This machine's resolver does not know them, so official clients that cannot be handed a transport
(Gradio's client, ``websockets``) could not reach an instance host. For the duration of a test,
``socket.getaddrinfo`` answers any ``*.localhost`` name as ``127.0.0.1`` and passes every other
lookup to the real resolver. The client still connects to the real gateway socket and still
sends the instance host in ``Host``: this emulates the browser's name resolution, it replaces
nothing in the system under test.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


def _is_localhost_subdomain(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    return isinstance(host, str) and host.lower().rstrip(".").endswith(".localhost")


@contextmanager
def resolving_localhost_subdomains() -> Iterator[None]:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, family: int = 0, *args: Any, **kwargs: Any) -> Any:
        if _is_localhost_subdomain(host) and family in (0, socket.AF_INET):
            return real("127.0.0.1", port, socket.AF_INET, *args, **kwargs)
        return real(host, port, family, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = real


@pytest.fixture
def localhost_subdomains() -> Iterator[None]:
    """Resolve ``*.localhost`` to 127.0.0.1 during the test (see the module's docstring)."""
    with resolving_localhost_subdomains():
        yield
