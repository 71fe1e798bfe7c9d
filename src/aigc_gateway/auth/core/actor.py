"""Who acts, from where: what every audited action carries down to the service that records it.

A service that changes something writes its audit entry itself, in the same transaction as the
change (:func:`aigc_gateway.store.access.audit_by`), from the acting :class:`Principal` and the
:class:`Client` the request came from. Callers without a request (the proxy waking an engine,
tests) pass :data:`NO_CLIENT`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NO_CLIENT", "Client"]


@dataclass(frozen=True, slots=True)
class Client:
    """Where a request came from, for the audit log and rate limits."""

    ip: str | None
    user_agent: str | None


NO_CLIENT = Client(None, None)
"""An action no client request carried (the audit entry has no address)."""
