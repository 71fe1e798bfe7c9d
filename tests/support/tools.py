"""The tools a test needs from the host, and what happens when one is missing.

Here (a developer's machine) a test whose tool is missing is skipped, saying what to install.
Under CI (``CI`` set, as ``.ci/run`` and every CI service do) it fails: a CI run must exercise
every test, and a tool that went missing there would otherwise turn its tests into silent skips.

Every test that depends on an optional tool goes through this module, either as a marker::

    pytestmark = pytest.mark.needs("chromium")

(``tests/conftest.py`` applies it before the test's fixtures run) or, inside a test or a
fixture, ``require_tool("postgresql")``. ``tests/unit/test_tools.py`` checks that no test skips
any other way.
"""

from __future__ import annotations

import enum
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pytest

NOT_CI = frozenset({"", "0", "false", "no", "off"})


class Action(enum.Enum):
    RUN = "run"
    SKIP = "skip"
    FAIL = "fail"


@dataclass(frozen=True)
class Decision:
    action: Action
    message: str = ""


def under_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this is a CI run: ``CI`` is set to anything but an empty or false-like value."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in NOT_CI


def decide(*, tool: str, missing: str | None, ci: bool) -> Decision:
    """What to do with a test that needs ``tool``; ``missing`` says why it cannot run (None: it
    can). Skip here, fail under CI."""
    if missing is None:
        return Decision(Action.RUN)
    if ci:
        return Decision(Action.FAIL, f"{tool} must be installed in CI: {missing}")
    return Decision(Action.SKIP, f"{tool} is not available here: {missing}")


def require(*, tool: str, missing: str | None) -> None:
    """Skip (here) or fail (under CI) the calling test when ``missing`` is set."""
    decision = decide(tool=tool, missing=missing, ci=under_ci())
    if decision.action is Action.FAIL:
        pytest.fail(decision.message, pytrace=False)
    if decision.action is Action.SKIP:
        pytest.skip(decision.message)


def _module_missing(*names: str, hint: str) -> Callable[[], str | None]:
    def check() -> str | None:
        absent = [name for name in names if importlib.util.find_spec(name) is None]
        return f"{', '.join(absent)} not importable: {hint}" if absent else None

    return check


def _postgresql() -> str | None:
    from tests.support.pg import pg_bin

    return None if pg_bin() else "no initdb under /usr/lib/postgresql: run scripts/system-deps.sh"


def _nginx() -> str | None:
    from tests.support.nginx import nginx_problem

    return nginx_problem()


def _chromium() -> str | None:
    from tests.support.browser import CHROMIUM, chromium_available

    return None if chromium_available() else f"{CHROMIUM} is missing: run scripts/system-deps.sh"


def _oidc_provider() -> str | None:
    from tests.support.oidc import INSTALL_HINT, provider_available

    return (
        None if provider_available() else f"Node.js or its node modules are missing: {INSTALL_HINT}"
    )


def _sandbox() -> str | None:
    from aigc_gateway.runtime.sandbox.detect import probe

    missing = probe().missing()
    return f"{'; '.join(missing)} (run scripts/system-deps.sh as root)" if missing else None


def _outbound_network() -> str | None:
    from aigc_gateway.runtime.sandbox.detect import probe

    support = probe()
    missing = [*support.missing(), *support.outbound_missing()]
    return f"{'; '.join(missing)} (run scripts/system-deps.sh as root)" if missing else None


def _btrfs() -> str | None:
    from tests.support.btrfs import btrfs_problem

    return btrfs_problem()


TOOLS: dict[str, Callable[[], str | None]] = {
    "btrfs": _btrfs,
    "sandbox": _sandbox,
    "outbound-network": _outbound_network,
    "postgresql": _postgresql,
    "nginx": _nginx,
    "chromium": _chromium,
    "oidc-provider": _oidc_provider,
    "gradio": _module_missing("gradio", "gradio_client", hint="they are dev dependencies"),
    "jupyterlab": _module_missing("jupyterlab", hint="it is a dev dependency"),
    "ray": _module_missing("ray", hint="pip install -e '.[ray]' (make's venv has it)"),
}
"""Each tool's check: None when it can be used here, else what is missing and how to install it."""


def missing_tool(name: str) -> str | None:
    """Why ``name`` (a key of :data:`TOOLS`) cannot be used here, or None when it can."""
    check = TOOLS.get(name)
    if check is None:
        raise ValueError(f"unknown tool {name!r}: add its check to TOOLS in {__name__}")
    return check()


def require_tool(name: str) -> None:
    """Skip (here) or fail (under CI) the calling test unless the tool ``name`` can be used."""
    require(tool=name, missing=missing_tool(name))


def apply_needs_markers(item: pytest.Item) -> None:
    """``pytest.mark.needs(*tools)`` on ``item``: require each tool (from a setup hook)."""
    for marker in item.iter_markers("needs"):
        for name in marker.args:
            require_tool(name)
