"""Leaked asyncio tasks: a task still pending when its owner is done with the event loop.

``asyncio.Runner`` (pytest-asyncio's, and ``asyncio.run``'s) cancels such tasks silently when it
closes the loop, so a coroutine that starts a task and forgets it (a watcher never cancelled, a
relay never awaited) would go unnoticed, and the task would die at an arbitrary point of its
work. As kopf's test suite does, ``tests/conftest.py`` fails every async test that leaves one in
its loop, and ``tests/support/server.py`` fails a served app that leaves one after its shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pytest_asyncio import is_async_test

OWNED_BY_THE_LOOP = frozenset({"sse_starlette.sse._shutdown_watcher"})
"""Third-party tasks that live as long as their loop by design, not leaks: sse-starlette starts
one shutdown watcher per loop, which ends when the uvicorn server of the *main thread* exits;
a server run in a thread (tests/support/server.py) never tells it, and the loop's closing ends
it (a 0.5 s poll, nothing else)."""

SQLALCHEMY_ORPHAN = (
    "sqlalchemy.dialects.sqlite.aiosqlite.AsyncAdapt_aiosqlite_connection._terminate_graceful_close"
)


def _orphaned_close(task: asyncio.Task[object]) -> bool:
    """SQLAlchemy's shielded graceful close of an aiosqlite connection whose user was cancelled
    *while it was closing*: SQLAlchemy then force-stops the connection (aiosqlite's ``stop()``
    ends its thread), and the shielded task is left waiting for an answer that thread will never
    give (sqlalchemy/connectors/asyncio.py ``terminate``). Nothing is held: the connection is
    gone. Only such a task, its connection seen stopped, is not a leak."""
    if _qualified(task) != SQLALCHEMY_ORPHAN:
        return False
    frame = getattr(task.get_coro(), "cr_frame", None)
    adapted = frame.f_locals.get("self") if frame is not None else None
    connection = getattr(adapted, "_connection", None)
    return connection is not None and getattr(connection, "_running", True) is False


GRACE_S = 5.0
"""How long tasks still finishing on their own are given to end before they count as leaked: the
loop closing an async generator dropped before its end (httpx's ``aiter_lines`` closes none of
the generators it reads from), SQLAlchemy's shielded close of a connection whose user was
cancelled. A bound, not a wait: the check goes on as soon as they are done."""


def _qualified(task: asyncio.Task[object]) -> str:
    """``module.function`` of the task's coroutine (while it is suspended)."""
    coro = task.get_coro()
    frame = getattr(coro, "cr_frame", None)
    module = frame.f_globals.get("__name__", "") if frame is not None else ""
    return f"{module}.{getattr(coro, '__qualname__', '')}"


async def leaked_tasks() -> list[asyncio.Task[object]]:
    """:func:`pending_tasks` still pending after :data:`GRACE_S`."""
    if pending := pending_tasks():
        await asyncio.wait(pending, timeout=GRACE_S)
    return pending_tasks()


def pending_tasks() -> list[asyncio.Task[object]]:
    """The running loop's tasks that have not finished, except the calling one and those in
    :data:`OWNED_BY_THE_LOOP`."""
    current = asyncio.current_task()
    return [
        task
        for task in asyncio.all_tasks()
        if task is not current
        and not task.done()
        and _qualified(task) not in OWNED_BY_THE_LOOP
        and not _orphaned_close(task)
    ]


def describe(tasks: list[asyncio.Task[object]]) -> str:
    """One line per task: its name, its coroutine and where it is suspended."""
    lines = []
    for task in tasks:
        stack = task.get_stack(limit=1)
        where = f" at {stack[0].f_code.co_filename}:{stack[0].f_lineno}" if stack else ""
        state = " (cancelled, never awaited)" if task.cancelling() else ""
        lines.append(f"  {task.get_name()}: {task.get_coro()!r}{where}{state}")
    return "\n".join(lines)


def leak_report(owner: str, tasks: list[asyncio.Task[object]]) -> str:
    return f"{owner} left {len(tasks)} asyncio task(s) pending:\n{describe(tasks)}"


@pytest.fixture(autouse=True, name="_no_leaked_tasks")
def no_leaked_tasks(request: pytest.FixtureRequest) -> None:
    """Fail an async test that leaves tasks pending in its event loop."""
    if is_async_test(request.node):
        request.getfixturevalue("_leaked_task_check")


@pytest.fixture(name="_leaked_task_check")
async def leaked_task_check(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    # Set up before the test's other fixtures, hence torn down after them, in the test's loop.
    yield
    if leaked := await leaked_tasks():
        pytest.fail(leak_report(request.node.nodeid, leaked), pytrace=False)
