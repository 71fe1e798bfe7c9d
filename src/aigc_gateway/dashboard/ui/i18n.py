"""The pages' two languages: English and Simplified Chinese.

Every string of a page comes from a flat catalog (``i18n/en.json``, ``i18n/zh-CN.json``) through
``t(key)``. The language is the ``lang`` cookie (set by ``GET /lang/{code}``) if valid, else the
best match in ``Accept-Language``, else English.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextvars import ContextVar
from functools import cache
from pathlib import Path

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

CATALOGS = Path(__file__).resolve().parent / "i18n"
LANGUAGES = ("en", "zh-CN")
DEFAULT = "en"
LANG_COOKIE = "lang"
SCRIPT_PREFIXES = ("js.", "state.")

current_lang: ContextVar[str] = ContextVar("aigc_lang", default=DEFAULT)
"""The language of the request being served (set by :class:`LanguageMiddleware`), for pages
rendered by code that does not know the request."""

KNOWN_TEXTS = {
    "Sign in": "login.title",
    "Signed out": "msg.signed_out",
    "You are signed out of AIGC Gateway.": "msg.signed_out_text",
    "Sign in again": "msg.sign_in_again",
    "Back": "common.back",
    "Try again": "msg.try_again",
    "Sign-in failed": "msg.signin_failed",
    "Sign-in expired": "msg.signin_expired",
    "This sign-in did not start here or took too long. Please try again.": "msg.signin_expired_text",
    "Sign-in refused": "msg.signin_refused",
    "Single sign-on is not set up": "msg.sso_missing",
    "Ask an administrator to configure it.": "msg.sso_missing_text",
    "Cannot open this instance": "msg.cannot_open",
    "Instance unavailable": "msg.instance_unavailable",
    "Starting": "starting.title",
    # the proxy's answers (proxy/answers.py)
    "no such instance": "proxy.no_instance",
    "sign in to open this instance": "proxy.sign_in",
    "you may not open this instance": "proxy.forbidden",
    "this instance is paused; its owner can resume it": "proxy.paused",
    "the request body is larger than this gateway allows": "proxy.too_large",
    "the engine is not reachable (it may be restarting)": "proxy.unreachable",
    "the engine did not answer in time": "proxy.timeout",
    "the engine's answer could not be relayed": "proxy.bad_answer",
    "the engine closed the connection before answering": "proxy.closed",
}
"""English texts other modules pass to the shared pages, and their catalog keys."""


@cache
def catalog(lang: str) -> Mapping[str, str]:
    data = json.loads((CATALOGS / f"{lang}.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return {str(k): str(v) for k, v in data.items()}


def normalize(code: str | None) -> str | None:
    """A supported language for a tag such as ``zh``, ``zh-Hans-CN`` or ``en-GB``, else None."""
    tag = (code or "").strip().lower().replace("_", "-")
    if tag == "zh" or tag.startswith(("zh-cn", "zh-hans", "zh-sg")):
        return "zh-CN"
    if tag == "en" or tag.startswith("en-"):
        return "en"
    return None


def _ranked(header: str) -> list[str]:
    """Language tags of an ``Accept-Language`` header, best first (q=0 dropped)."""
    ranked: list[tuple[float, int, str]] = []
    for index, item in enumerate(header.split(",")[:32]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        if tag and quality > 0:
            ranked.append((-quality, index, tag))
    return [tag for _, _, tag in sorted(ranked)]


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    chosen = normalize(cookie)
    if chosen:
        return chosen
    for tag in _ranked(accept_language or ""):
        chosen = normalize(tag)
        if chosen:
            return chosen
    return DEFAULT


class Translator:
    """``t(key, **values)``: the key's text in this language (English if missing there, the key
    itself if missing everywhere), with ``{name}`` placeholders filled."""

    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in LANGUAGES else DEFAULT
        self._strings = catalog(self.lang)
        self._fallback = catalog(DEFAULT)

    def __call__(self, key: str, **values: object) -> str:
        text = self._strings.get(key) or self._fallback.get(key) or key
        return text.format(**values) if values else text

    def text(self, english: str) -> str:
        """A known English text passed in by other modules, translated; others unchanged."""
        key = KNOWN_TEXTS.get(english)
        return self(key) if key else english

    def for_script(self) -> dict[str, str]:
        """The strings app.js needs: keys starting with ``js.`` or ``state.``."""
        return {k: v for k, v in self._strings.items() if k.startswith(SCRIPT_PREFIXES)}


def request_lang(scope: Scope) -> str:
    conn = HTTPConnection(scope)
    return negotiate(conn.cookies.get(LANG_COOKIE), conn.headers.get("accept-language"))


class LanguageMiddleware:
    """Sets :data:`current_lang` for each HTTP request (pure ASGI, streams untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = current_lang.set(request_lang(scope))
        try:
            await self.app(scope, receive, send)
        finally:
            current_lang.reset(token)
