"""tests/support/tools.py: a missing tool skips its tests here and fails them under CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.tools import TOOLS, Action, Decision, decide, missing_tool, under_ci

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("value", "ci"),
    [
        *[(None, False), ("", False), ("0", False), ("false", False), ("No", False)],
        *[("true", True), ("1", True), ("yes", True), ("TRUE", True)],
    ],
)
def test_ci_is_set_by_any_true_like_value(value: str | None, ci: bool) -> None:
    environ = {} if value is None else {"CI": value}
    assert under_ci(environ) is ci


def test_a_missing_tool_skips_here_and_fails_under_ci() -> None:
    assert decide(tool="nginx", missing=None, ci=True) == Decision(Action.RUN)
    assert decide(tool="nginx", missing=None, ci=False) == Decision(Action.RUN)
    assert decide(tool="nginx", missing="not installed", ci=False) == Decision(
        Action.SKIP, "nginx is not available here: not installed"
    )
    assert decide(tool="nginx", missing="not installed", ci=True) == Decision(
        Action.FAIL, "nginx must be installed in CI: not installed"
    )


def test_an_unknown_tool_is_an_error_not_a_skip() -> None:
    with pytest.raises(ValueError, match="unknown tool 'frobnicator'"):
        missing_tool("frobnicator")


def test_every_tool_is_checked_without_error() -> None:
    for name in TOOLS:
        result = missing_tool(name)
        assert result is None or (isinstance(result, str) and result), name


_NEEDS_A_MISSING_TOOL = """
import pytest
from tests.support import tools

tools.TOOLS["frobnicator"] = lambda: "not on PATH: apt install frobnicator"

@pytest.mark.needs("frobnicator")
def test_marked():
    pass

def test_required():
    tools.require_tool("frobnicator")

def test_available():
    tools.require(tool="sh", missing=None)
"""


@pytest.mark.parametrize(
    ("ci", "outcomes"),
    [("", {"skipped": 2}), ("true", {"errors": 1, "failed": 1})],  # the marker fails at setup
)
def test_missing_tools_in_a_real_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, outcomes: dict[str, int]
) -> None:
    """Both ways of needing a tool (the marker and the call), in a pytest run of their own."""
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest(
        "from tests.support.tools import apply_needs_markers as pytest_runtest_setup\n"
    )
    pytester.makeini(
        "[pytest]\nmarkers = needs(*tools): tools\nfilterwarnings = error\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_needs=_NEEDS_A_MISSING_TOOL)
    try:
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rfs")
    finally:
        TOOLS.pop("frobnicator", None)
    result.assert_outcomes(passed=1, **outcomes)
    word = "must be installed in CI" if ci else "is not available here"
    result.stdout.fnmatch_lines([f"*frobnicator {word}: not on PATH: apt install frobnicator*"])


_SKIPS = re.compile(r"pytest\.skip\(|\bskipif\b|importorskip|mark\.skip\b|mark\.xfail")


def test_no_test_skips_but_through_the_tools_helper() -> None:
    """A bare skip would be silent under CI: every one goes through tests/support/tools.py."""
    allowed = {TESTS / "support" / "tools.py", Path(__file__).resolve()}
    offenders = [
        f"{path.relative_to(TESTS)}:{n}: {line.strip()}"
        for path in sorted(TESTS.rglob("*.py"))
        if path not in allowed and "node_modules" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _SKIPS.search(line)
    ]
    assert offenders == []
