"""How uvicorn runs the gateway: ``server_options`` (what ``serve`` gives it: the connection-level
proxy as its HTTP protocol, and whose forwarding headers to believe), and what that proxy
(``front.py``) needs from uvicorn, checked before it runs.

``front.py`` builds on parts of uvicorn that are not its public interface: it hands connections
to uvicorn's ``HttpToolsProtocol`` (constructed with the arguments uvicorn gives any protocol),
counts them in the server's state, and reads forwarding headers with the trust rules of uvicorn's
``ProxyHeadersMiddleware``. Those parts change between uvicorn releases without notice, so the
versions they were tested with are pinned (``pyproject.toml``) and ``check_uvicorn`` refuses to
start on any other, or when a part is missing, naming the version found and the range supported.
"""

from __future__ import annotations

import asyncio
import inspect
from importlib import metadata
from typing import Any

from aigc_gateway.errors import PermanentError
from aigc_gateway.proxy.front import FrontProtocol

SUPPORTED = ((0, 55), (0, 56))
"""uvicorn versions ``front.py`` was tested with: from the first (inclusive) to the second."""
PROTOCOL_ARGS = ("config", "server_state", "app_state", "_loop")


class UnsupportedServer(PermanentError):
    code = "unsupported_server"


def supported_range() -> str:
    (low_major, low_minor), (high_major, high_minor) = SUPPORTED
    return f">={low_major}.{low_minor},<{high_major}.{high_minor}"


def check_version(found: str) -> None:
    """Raise ``UnsupportedServer`` unless uvicorn ``found`` (e.g. ``0.55.0``) is in range."""
    try:
        major, minor = (int(part) for part in found.split(".")[:2])
    except ValueError:
        major, minor = -1, -1
    if not SUPPORTED[0] <= (major, minor) < SUPPORTED[1]:
        raise UnsupportedServer(
            f"uvicorn {found} is installed; the gateway's connection-level proxy supports "
            f"uvicorn{supported_range()} (install that, or set proxy_fast_path: false)"
        )


def check_parts() -> None:
    """Raise ``UnsupportedServer`` when a part of uvicorn that ``front.py`` uses is missing."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    missing = [
        f"HttpToolsProtocol({name}=…)"
        for name in PROTOCOL_ARGS
        if name not in inspect.signature(HttpToolsProtocol).parameters
    ]
    trusted = ProxyHeadersMiddleware(_no_app, trusted_hosts="127.0.0.1").trusted_hosts
    if not hasattr(trusted, "get_trusted_client_address") or not hasattr(trusted, "__contains__"):
        missing.append("ProxyHeadersMiddleware.trusted_hosts.get_trusted_client_address")
    state = ServerState()
    missing += [
        f"ServerState.{name}"
        for name in ("connections", "total_requests")
        if not hasattr(state, name)
    ]
    if missing:
        raise UnsupportedServer(
            f"uvicorn {_installed()} lacks what the connection-level proxy uses "
            f"({', '.join(missing)}); supported: uvicorn{supported_range()}"
        )


def check_uvicorn() -> None:
    """The installed uvicorn is one ``front.py`` supports (see the module's docstring)."""
    check_version(_installed())
    check_parts()


def trusted_hosts(proxies: list[str]) -> Any:
    """uvicorn's matcher for the proxies whose forwarding headers are believed (IPs, CIDRs), or
    None when there are none (no client's forwarding header is believed)."""
    if not proxies:
        return None
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    return ProxyHeadersMiddleware(_no_app, trusted_hosts=",".join(proxies)).trusted_hosts


def _installed() -> str:
    return metadata.version("uvicorn")


async def _no_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    raise AssertionError("only the middleware's trust rules are used")


def front_protocol(app: Any) -> type[asyncio.Protocol]:
    """The uvicorn ``http=`` protocol class for the gateway app ``app`` (UnsupportedServer when
    the installed uvicorn is not one it was tested with)."""
    check_uvicorn()
    trusted = trusted_hosts(app.state.settings.trusted_proxies)
    return type("GatewayFrontProtocol", (FrontProtocol,), {"gateway_app": app, "trusted": trusted})


def http_protocol(app: Any) -> type[asyncio.Protocol] | str:
    """What to give uvicorn as ``http=``: the front protocol unless the app's settings turn
    it off (``proxy_fast_path``) or ``app`` is not the gateway's."""
    settings = getattr(getattr(app, "state", None), "settings", None)
    if settings is None or not getattr(settings, "proxy_fast_path", True):
        return "httptools"
    return front_protocol(app)


def server_options(app: Any) -> dict[str, Any]:
    """uvicorn's options for the gateway app ``app``, as ``serve`` runs it: its HTTP protocol,
    and forwarding headers believed only from the ``trusted_proxies`` of its settings (uvicorn
    would otherwise believe any loopback client's ``X-Forwarded-For``). An app that is not the
    gateway's (a test's engine) believes no forwarding header either."""
    settings = getattr(getattr(app, "state", None), "settings", None)
    proxies: list[str] = list(getattr(settings, "trusted_proxies", None) or [])
    return {
        "http": http_protocol(app),
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": ",".join(proxies) or "",
    }
