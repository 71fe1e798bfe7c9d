"""``GET /metrics``: the gateway's metrics for Prometheus (see :mod:`aigc_gateway.metrics`).

With ``AIGC_METRICS_TOKEN`` set, a scraper sends ``Authorization: Bearer <token>``. Without it,
only this host may read the metrics: a loopback client that did not come through a reverse
proxy (a request carrying forwarding headers did). A reverse proxy on the same host that adds
no such header looks local, so set the token whenever one is in front of the gateway.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter, Request
from fastapi.responses import Response

from aigc_gateway.api.deps import GatewayDep
from aigc_gateway.errors import Forbidden, Unauthorized
from aigc_gateway.metrics.prometheus import CONTENT_TYPE

router = APIRouter(tags=["metrics"])

FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this host's own (127.0.0.0/8, ::1, or ::ffff:127.x.y.z)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a Unix socket path or a test client's made-up name
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_scraper(request: Request, token: str | None) -> None:
    """Raise unless ``request`` may read the metrics (see the module's docstring)."""
    if token:
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            sent.strip().encode(), token.encode()
        ):
            raise Unauthorized("send `Authorization: Bearer <AIGC_METRICS_TOKEN>`")
        return
    local = is_loopback(request.client.host if request.client else None)
    if not local or any(h in request.headers for h in FORWARDING_HEADERS):
        raise Forbidden(
            "/metrics is only served to this host: set AIGC_METRICS_TOKEN to let a scraper "
            "elsewhere read it with `Authorization: Bearer <token>`"
        )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, gw: GatewayDep) -> Response:
    check_scraper(request, gw.settings.metrics_token)
    return Response(await gw.metrics.exposition(), media_type=CONTENT_TYPE)
