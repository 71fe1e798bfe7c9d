"""The gateway's own credential in an ``Authorization`` header, read by one parser.

The API's authentication (``api/deps.py``) and the proxy's header filter (``proxy/wire.py``) both
call ``bearer_secret``: whatever the gateway would accept as its API token, the proxy recognises
and strips before an engine sees it. Two parsers that disagree on a detail (two spaces after
``Bearer``, a tab, ``BEARER``) would let a credential through to an engine.
"""

from __future__ import annotations

from aigc_gateway.auth.core.secrets import TOKEN_PREFIX


def bearer_secret(value: str) -> str | None:
    """The secret of ``Bearer <secret>`` (the scheme in any case, any whitespace around and
    between), or None when ``value`` is not a Bearer credential with a secret."""
    parts = value.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1].strip() or None


def carries_gateway_token(value: bytes) -> bool:
    """Whether an ``Authorization`` header's raw value holds something the gateway could take for
    one of its API tokens (what ``bearer_secret`` finds starts with the tokens' prefix)."""
    secret = bearer_secret(value.decode("latin-1"))
    return secret is not None and secret.startswith(TOKEN_PREFIX)
