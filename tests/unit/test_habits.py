"""Habits of the test suite, checked over its source: no wall-clock upper bound in a test (speed
goals live in bench/), and no port chosen free to be bound later by someone else."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_CLOCK = r"(elapsed|monotonic\(\)|perf_counter\(\)|time\.time\(\)|\btook\b|duration)"
_UPPER_BOUND = re.compile(rf"assert .*{_CLOCK}.*<|assert .*<.*{_CLOCK}")
_FREE_PORT = re.compile(r"def _?free_port\(")


def _lines(folder: str, pattern: re.Pattern[str]) -> list[str]:
    return [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in sorted((REPO / folder).rglob("*.py"))
        if "node_modules" not in path.parts and path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]


def test_no_test_asserts_a_wall_clock_upper_bound() -> None:
    assert _lines("tests", _UPPER_BOUND) == []


def test_no_port_is_picked_free_for_a_server_to_bind_later() -> None:
    """A gateway gets a bound socket (``serve --fd``); programs that bind their port themselves
    are started again on another when it was taken (tests/support/pg.py, nginx.py)."""
    assert _lines("tests", _FREE_PORT) + _lines("bench", _FREE_PORT) == []
