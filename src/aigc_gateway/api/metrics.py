"""``GET /metrics``: the gateway's metrics for Prometheus (see :mod:`aigc_gateway.metrics`).

A scraper sends ``Authorization: Bearer <AIGC_METRICS_TOKEN>``, or reads from an address the
admin listed in ``AIGC_METRICS_TRUSTED_ADDRESSES`` (default none). Being on this host is no
credential: every engine runs here too, and each one is a loopback client. A request carrying
forwarding headers came through a reverse proxy, from somewhere else: it needs the token.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.responses import Response

from aigc_gateway.api.deps import GatewayDep
from aigc_gateway.errors import Forbidden, Unauthorized
from aigc_gateway.metrics.prometheus import CONTENT_TYPE

router = APIRouter(tags=["metrics"])

FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client's IP address (an IPv4-mapped IPv6 one as IPv4), or None for no address (a Unix
    socket, a test client's made-up name)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(request: Request, trusted: Sequence[Network]) -> bool:
    if any(h in request.headers for h in FORWARDING_HEADERS):
        return False
    address = client_address(request.client.host if request.client else None)
    return address is not None and any(address in network for network in trusted)


def _sent_token(request: Request, token: str) -> bool:
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode())


def check_scraper(request: Request, *, token: str | None, trusted: Sequence[Network]) -> None:
    """Raise unless ``request`` may read the metrics: it sends the metrics token, or comes
    straight from a trusted address. 401 when a token is set (send it), 403 when none is."""
    if (token and _sent_token(request, token)) or _is_trusted(request, trusted):
        return
    if token:
        raise Unauthorized("send `Authorization: Bearer <AIGC_METRICS_TOKEN>`")
    raise Forbidden(
        "/metrics needs a credential: set AIGC_METRICS_TOKEN and send it as "
        "`Authorization: Bearer <token>`, or list the scraper's address in "
        "AIGC_METRICS_TRUSTED_ADDRESSES"
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, gw: GatewayDep) -> Response:
    settings = gw.settings
    check_scraper(request, token=settings.metrics_token, trusted=settings.metrics_trusted_addresses)
    return Response(await gw.metrics.exposition(), media_type=CONTENT_TYPE)
