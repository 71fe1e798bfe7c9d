"""The gateway's own answers on instance hosts, when the engine's cannot be relayed.

Texts are English in JSON (``message``, for API clients, with a stable ``code``) and in the
visitor's language on HTML pages (``dashboard/ui/i18n.py`` maps each text to its catalog key).
"""

from __future__ import annotations

import json

from aigc_gateway.dashboard.ui.pages import render, translator
from aigc_gateway.lifecycle.routes import Route

NO_INSTANCE = "no such instance"
SIGN_IN = "sign in to open this instance"
FORBIDDEN = "you may not open this instance"
PAUSED = "this instance is paused; its owner can resume it"
TOO_LARGE = "the request body is larger than this gateway allows"
UNREACHABLE = "the engine is not reachable (it may be restarting)"
TIMEOUT = "the engine did not answer in time"
BAD_ANSWER = "the engine's answer could not be relayed"
CLOSED = "the engine closed the connection before answering"

CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "instance_not_found",
    409: "instance_paused",
    413: "body_too_large",
    502: "engine_unavailable",
    503: "instance_starting",
    504: "engine_timeout",
}


def error_body(
    status: int, text: str, html: bool, *, lang: str = "en", page_text: str | None = None
) -> tuple[str, bytes]:
    """``(content type, body)``: a page in ``lang`` for browsers, else JSON. ``page_text``
    replaces ``text`` on the page (already in ``lang``)."""
    if html:
        page = render(
            "message.html",
            lang=lang,
            title="Instance unavailable" if status >= 500 else "Cannot open this instance",
            text=page_text or text,
        )
        return "text/html; charset=utf-8", page.encode()
    return "application/json", json.dumps(
        {"code": CODES.get(status, "proxy_error"), "message": text}
    ).encode()


def failed_text(route: Route) -> str:
    code = f" (exit code {route.exit_code})" if route.exit_code is not None else ""
    return f"this instance is {route.state}: {route.reason}{code}"


def failed_page_text(route: Route, lang: str) -> str:
    t = translator(lang)
    text = t("proxy.failed", state=t(f"state.{route.state}"), reason=route.reason)
    if route.exit_code is not None:
        text += t("proxy.exit_code", code=route.exit_code)
    return text
