"""Errors as JSON with a stable ``code`` and a human ``message``.

The error vocabulary decides the answer: a :class:`UserError` is its own 4xx, a
:class:`TemporaryError` is 503 with ``Retry-After`` from its ``delay``, a :class:`PermanentError`
is 500 with its message. A bug (an :class:`InternalError`, or any exception the vocabulary does
not name) is logged with its traceback and answered with a bare 500 that leaks nothing; the
connection stays usable.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigc_gateway.errors import GatewayError, InternalError, TemporaryError

log = logging.getLogger(__name__)


def error_body(code: str, message: str, **extra: object) -> dict[str, object]:
    return {"code": code, "message": message, **extra}


BUG_BODY = error_body("internal_error", "the gateway failed; the error is logged for the admin")


def retry_after(exc: TemporaryError) -> str:
    """``Retry-After`` in whole seconds, never sooner than the error's ``delay``."""
    return str(max(1, math.ceil(exc.delay)))


async def _gateway_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GatewayError)
    if isinstance(exc, InternalError):
        log.error("bug while answering %s", request.url.path, exc_info=exc)
        return JSONResponse(BUG_BODY, status_code=500)
    headers = {}
    if isinstance(exc, TemporaryError):
        headers["Retry-After"] = retry_after(exc)
    if exc.status >= 500:
        log.warning("request failed: %s (%s)", exc.message, exc.code)
    return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=headers)


class CatchBugs:
    """Pure ASGI: an exception nothing else answered becomes a logged traceback and a bare 500,
    instead of the server's plain-text 500 and a closed connection. Once an answer has started
    there is nothing to fix; the exception goes on to the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise
            log.exception("bug while answering %s", scope.get("path", "?"))
            await _send_bug(send)


async def _send_bug(send: Send) -> None:
    body = json.dumps(BUG_BODY).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
    ]
    first = problems[0] if problems else {"field": "", "message": "invalid request"}
    return JSONResponse(
        error_body("invalid_request", f"{first['field']}: {first['message']}", errors=problems),
        status_code=422,
    )


HtmlPage = Callable[[Request], Awaitable[Response | None]]
"""A page for a browser instead of the JSON error, or ``None`` for the JSON error."""


def _http_error(not_found_page: HtmlPage | None) -> Callable[..., Awaitable[Response]]:
    async def answer(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        html = await not_found_page(request) if exc.status_code == 404 and not_found_page else None
        return html if html is not None else _http_error_json(exc)

    return answer


def _http_error_json(exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
    return JSONResponse(
        error_body(codes.get(exc.status_code, "http_error"), str(exc.detail)),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def install(app: FastAPI, *, not_found_page: HtmlPage | None = None) -> None:
    """Answer errors by the vocabulary; call after the other middleware is added (so bugs in
    it are caught too). ``not_found_page`` answers a browser's request for a path nothing
    serves."""
    app.add_middleware(CatchBugs)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error(not_found_page))
