"""Guarded background work: the error vocabulary decides what a failure means for a loop.

- :class:`TemporaryError`: expected now and then (the store is busy, a runtime is not ready);
  retried after its ``delay``, with one log line and no traceback.
- :class:`Conflict`: another writer moved the instance first; looked at again at once, a few times
  in a row, then with back-off (a conflict that repeats is no longer a race).
- anything else (a :class:`PermanentError` in a periodic job, an
  :class:`~aigc_gateway.errors.InternalError` such as an illegal transition, any other exception):
  a bug. Logged with its traceback and retried with doubling back-off, never in a hot spin.

``CancelledError`` always propagates: cancelling a guarded task ends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aigc_gateway.domain.backoff import Backoff
from aigc_gateway.errors import Conflict, TemporaryError
from aigc_gateway.metrics import Metrics

log = logging.getLogger(__name__)

__all__ = ["Backoff", "Sleep", "every", "guarded", "retry_delay"]

Sleep = Callable[[float], Awaitable[None]]
"""How loops wait (``asyncio.sleep``; tests give fake time)."""

CONFLICTS_AT_ONCE = 3
"""Conflicts in a row that are retried without waiting."""


def retry_delay(
    exc: Exception, backoff: Backoff, *, what: str, extra: Mapping[str, object] | None = None
) -> float:
    """Log ``exc`` as the vocabulary says and return how long to wait before trying again."""
    if isinstance(exc, TemporaryError):
        log.warning("%s: %s; retrying in %.3g s", what, exc.message, exc.delay, extra=extra)
        return exc.delay
    if isinstance(exc, Conflict):
        backoff.conflicts += 1
        if backoff.conflicts <= CONFLICTS_AT_ONCE:
            log.debug("%s: %s; looking again", what, exc.message, extra=extra)
            return 0.0
        delay = backoff.next()
        log.warning("%s: %s (again); retrying in %.3g s", what, exc.message, delay, extra=extra)
        return delay
    delay = backoff.next()
    log.error("%s failed; retrying in %.3g s", what, delay, exc_info=exc, extra=extra)
    return delay


async def every(
    job: str,
    body: Callable[[], Awaitable[None]],
    *,
    period_s: float,
    sleep: Sleep,
    metrics: Metrics,
) -> None:
    """Run ``body`` every ``period_s`` seconds until cancelled; one job's failure stops no other.
    A failure is counted (``metrics.job_failed``) and retried after what :func:`retry_delay`
    says (a temporary error's delay; for a bug, back-off doubling up to 30 s or the period); a
    success is recorded (``metrics.job_succeeded``) and the next run is a period later."""
    backoff = Backoff(first=min(period_s, 1.0), most=max(period_s, 30.0))
    wait = period_s
    while True:
        await sleep(wait)
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.job_failed(job)
            wait = retry_delay(exc, backoff, what=f"controller job {job}", extra={"job": job})
            continue
        metrics.job_succeeded(job, time.time())
        backoff.reset()
        wait = period_s


def guarded(name: str, body: Awaitable[None]) -> asyncio.Task[None]:
    """A task for one-off background work (a template reload) whose failure is logged with its
    traceback instead of being lost with an unawaited task."""
    return asyncio.create_task(_logged(name, body), name=name)


async def _logged(name: str, body: Awaitable[None]) -> None:
    try:
        await body
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s failed", name)
