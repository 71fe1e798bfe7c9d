"""The gateway's small error vocabulary.

Every layer raises one of these; third-party errors are translated at the boundary with
``raise ... from``. The API turns them into JSON ``{"code", "message"}`` with ``status``.

- :class:`UserError` and subclasses: the caller asked for something wrong; retrying the same request
  will fail the same way.
- :class:`TemporaryError`: something is not possible right now; retry after ``delay`` seconds.
- :class:`PermanentError`: an operation failed for good (an engine that cannot start); it is reported,
  not retried.
- :class:`InternalError`, and any exception that is none of the above: a bug. It is logged with its
  traceback, answered as a bare 500 (no details to the client), and retried by the controller's
  loops only with back-off.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of all gateway errors: a stable machine ``code``, a human ``message``, an HTTP status."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class UserError(GatewayError):
    """The request is invalid; the message says which field and what to do."""

    status = 400
    code = "invalid_request"


class NotFound(UserError):
    status = 404
    code = "not_found"


class Unauthorized(UserError):
    status = 401
    code = "unauthorized"


class Forbidden(UserError):
    status = 403
    code = "forbidden"


class Conflict(UserError):
    status = 409
    code = "conflict"


class TemporaryError(GatewayError):
    """Not possible now; the operation may be retried after ``delay`` seconds."""

    status = 503
    code = "temporarily_unavailable"

    def __init__(self, message: str, *, delay: float = 1.0, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.delay = delay


class PermanentError(GatewayError):
    """An operation failed for good; retrying it unchanged will not help."""

    status = 500
    code = "operation_failed"


class InternalError(GatewayError):
    """A broken invariant: a bug in the gateway, never the caller's fault. Retrying at once will
    fail the same way, so loops back off; the API answers 500 without the details."""

    status = 500
    code = "internal_error"
