"""The leaked-task checks (tests/support/leaks.py): a test, or a served app, that leaves asyncio
tasks pending fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from starlette.applications import Starlette

from tests.support.server import serve_in_thread

pytest_plugins = ["pytester"]

_TESTS = """
import asyncio

async def test_forgets_a_task():
    asyncio.create_task(asyncio.sleep(3600), name="forgotten")

async def test_cancels_its_task():  # the cancellation completes before the check
    asyncio.create_task(asyncio.sleep(3600)).cancel()

async def test_awaits_its_task():
    task = asyncio.create_task(asyncio.sleep(3600))
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass

async def test_drops_an_async_generator():  # the loop closes it, in a task of its own
    async def numbers():
        for n in range(3):
            yield n

    async for n in numbers():
        break

def test_sync():
    pass
"""


def test_a_test_that_leaves_a_task_pending_fails(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        "from tests.support.leaks import leaked_task_check, no_leaked_tasks  # noqa: F401\n"
    )
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    pytester.makepyfile(test_leaky=_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_forgets_a_task left 1 asyncio task(s) pending:",
            "*forgotten: <coroutine object sleep*",
        ]
    )


def _leaky_app() -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.watcher = asyncio.create_task(asyncio.Event().wait(), name="watcher")
        yield  # and never cancelled

    return Starlette(lifespan=lifespan)


def test_a_served_app_that_leaves_a_task_pending_fails() -> None:
    with (
        pytest.raises(AssertionError, match=r"the served app left 1 asyncio task.*\n  watcher: "),
        serve_in_thread(_leaky_app()),
    ):
        pass
