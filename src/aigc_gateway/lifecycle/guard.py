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

__all__ = ["Backoff", "Duties", "Sleep", "Trigger", "duty", "period", "retry_delay"]

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


Trigger = Callable[[], Awaitable[None]]
"""What a duty waits for before its next step: a period, a change in a folder, a signal."""


def period(seconds: float, sleep: Sleep) -> Trigger:
    """The trigger of a periodic duty: ``seconds`` of ``sleep``."""
    return lambda: sleep(seconds)


async def duty(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    trigger: Trigger,
    sleep: Sleep,
    metrics: Metrics,
    backoff: Backoff,
) -> None:
    """Run ``body`` each time ``trigger`` returns, until cancelled; a failure never ends it.

    Each step (``body``) is measured (``metrics.job_step`` with its duration). A failure, of the
    step or of the trigger itself (a folder watch that broke), is counted
    (``metrics.job_failed``), logged as :func:`retry_delay` says, and followed, after that
    delay on ``sleep``, by the step itself rather than the trigger: what the failure may have
    missed is caught up at once. A success is recorded (``metrics.job_succeeded``), resets the
    back-off, and the duty waits for its trigger again."""
    retry: float | None = None
    while True:
        began: float | None = None
        try:
            await (trigger() if retry is None else sleep(retry))
            began = time.monotonic()
            await body()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if began is not None:  # a failed step; a failed trigger took no step
                metrics.job_step(name, time.monotonic() - began)
            metrics.job_failed(name)
            retry = retry_delay(exc, backoff, what=f"duty {name}", extra={"job": name})
            continue
        metrics.job_step(name, time.monotonic() - began)
        metrics.job_succeeded(name, time.time())
        backoff.reset()
        retry = None


class Duties:
    """Named duties, each a guarded task of its own (:func:`duty`), started one by one and
    cancelled together. The task is named ``prefix + name`` (fake time tells them apart)."""

    def __init__(self, *, metrics: Metrics, sleep: Sleep, prefix: str = "") -> None:
        self._metrics = metrics
        self._sleep = sleep
        self._prefix = prefix
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        *,
        trigger: Trigger,
        backoff: Backoff,
        sleep: Sleep | None = None,
    ) -> None:
        """Start the duty ``name`` (``sleep``, if given, replaces the runner's for its retry
        waits)."""
        run = duty(
            name,
            body,
            trigger=trigger,
            sleep=sleep or self._sleep,
            metrics=self._metrics,
            backoff=backoff,
        )
        self.tasks[name] = asyncio.create_task(run, name=f"{self._prefix}{name}")

    def every(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        *,
        period_s: float,
        sleep: Sleep | None = None,
    ) -> None:
        """Start the duty ``name`` that runs every ``period_s`` seconds; a bug's back-off
        doubles from 1 s (or the period, if shorter) up to 30 s (or the period, if longer)."""
        wait = sleep or self._sleep
        self.start(
            name,
            body,
            trigger=period(period_s, wait),
            backoff=Backoff(first=min(period_s, 1.0), most=max(period_s, 30.0)),
            sleep=wait,
        )

    @property
    def alive(self) -> bool:
        """Every duty is running (a failing one retries; only a cancelled one ends)."""
        return bool(self.tasks) and not any(task.done() for task in self.tasks.values())

    async def close(self) -> None:
        """Cancel every duty and wait for them to end."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
