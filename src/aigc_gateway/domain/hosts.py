"""Instance hosts and safe redirects (pure)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

SLUG_RE = re.compile(r"^i[a-z0-9]{19}$")


def split_host(host: str) -> tuple[str, int | None]:
    """``"Name.Example:8080"`` → ``("name.example", 8080)``; a bad port gives ``None``."""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal: never an instance host
        return host, None
    name, _, port = host.partition(":")
    return name.rstrip("."), int(port) if port.isdigit() else None


def instance_slug(host: str, apps_domain: str) -> str | None:
    """The instance slug if ``host`` is exactly ``<slug>.<apps_domain>`` (any port), else None.

    Exact match only: ``i…x.localhost.evil.com`` or ``evil-i…x.localhost`` are not instances,
    and a slug never matches as a substring of a longer label.
    """
    name, _ = split_host(host)
    suffix = "." + apps_domain.lower().strip(".")
    if not name.endswith(suffix):
        return None
    label = name[: -len(suffix)]
    return label if SLUG_RE.fullmatch(label) else None


def safe_next(target: str | None, default: str = "/") -> str:
    """A redirect target on this site only: a path starting with one ``/``. Anything that could
    leave the site (``//evil``, ``/\\evil``, ``https://…``, control characters) gives ``default``."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ord(c) < 32 or c == "\\" for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


def instance_url_target(url: str, apps_domain: str) -> tuple[str, str, str] | None:
    """For a full URL on an instance host, ``(scheme, host, path_and_query)``; else None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        return None
    if instance_slug(parts.netloc, apps_domain) is None:
        return None
    path = parts.path or "/"
    return parts.scheme, parts.netloc, path + (f"?{parts.query}" if parts.query else "")
