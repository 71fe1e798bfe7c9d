"""Rendering of the gateway's own HTML pages, in the request's language."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from aigc_gateway.accounting.core import format_money
from aigc_gateway.dashboard.ui.costs import hours
from aigc_gateway.dashboard.ui.i18n import Translator, current_lang
from aigc_gateway.dashboard.ui.views import crumbs, human_bytes, minutes, num, percent, when

TEMPLATES = Path(__file__).resolve().parent / "html"
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
}


@cache
def translator(lang: str) -> Translator:
    return Translator(lang)


def _t(key: str, **values: object) -> str:
    """``t`` for templates rendered without one (by code that does not know the request)."""
    return translator(current_lang.get())(key, **values)


def _tr(english: str) -> str:
    return translator(current_lang.get()).text(english)


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(t=_t, tr=_tr, current_lang=current_lang.get)
    env.filters.update(bytes=human_bytes, when=when, num=num, minutes=minutes)
    env.filters.update(hours=hours, money=format_money)
    env.globals.update(percent=percent, crumbs=crumbs)
    return env


def render(name: str, *, lang: str | None = None, **context: Any) -> str:
    t = translator(lang or current_lang.get())
    return environment().get_template(name).render(lang=t.lang, t=t, tr=t.text, **context)


def page(name: str, status: int = 200, *, lang: str | None = None, **context: Any) -> HTMLResponse:
    return HTMLResponse(render(name, lang=lang, **context), status_code=status, headers=HEADERS)


def message(
    title: str, text: str, status: int, *, link: str | None = None, link_text: str = ""
) -> HTMLResponse:
    return page("message.html", status, title=title, text=text, link=link, link_text=link_text)


STATIC = Path(__file__).resolve().parent / "static"
_static_files = StaticFiles(directory=STATIC)


async def static_response(path: str, scope: Scope) -> Response:
    """A file of ``dashboard/ui/static`` (StaticFiles: ETag, Last-Modified, 304, containment checks)."""
    clean = os.path.normpath(os.path.join(*path.split("/"))) if path else "."
    response = await _static_files.get_response(clean, scope)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
