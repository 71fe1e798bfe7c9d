"""What the gateway measures while it works: the hooks the proxy and the controller call.

:class:`Metrics` is the contract and records nothing, so neither the proxy nor the lifecycle
imports a metrics library, and code that builds a controller by hand (tests, tools) passes
nothing. The gateway hands them :class:`aigc_gateway.metrics.prometheus.PrometheusMetrics`.
"""

from __future__ import annotations

from typing import Literal

ProxyKind = Literal["http", "websocket"]


class Metrics:
    """Hooks called where things happen; this base ignores them.

    Implementations run on the proxy's hot path: constant time, no I/O, never raise, never block
    (the gateway's own takes one counter increment and one histogram observation per call).
    """

    def proxy_request(self, kind: ProxyKind, status: int, seconds: float) -> None:
        """One proxied exchange, ``seconds`` after the proxy took it.

        ``http``: called when the request ends, with the status the client was sent (0 when it
        left before any answer). ``websocket``: called when the WebSocket is accepted (101) or
        the engine refused it (502); the connection's lifetime is not a latency."""

    def instance_started(self, template_id: str, seconds: float) -> None:
        """An engine of ``template_id`` became ready ``seconds`` after it was launched."""

    def job_step(self, job: str, seconds: float) -> None:
        """A step of the background duty ``job`` (a periodic controller job, the template
        watch, a reload) ended, well or not, ``seconds`` after it began."""

    def job_failed(self, job: str) -> None:
        """A run of the controller's periodic ``job`` (resync, activity, ...) raised."""

    def job_succeeded(self, job: str, at: float) -> None:
        """A run of the controller's periodic ``job`` ended well at ``at`` (epoch seconds)."""
