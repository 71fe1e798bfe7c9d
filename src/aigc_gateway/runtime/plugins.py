"""Runtimes by name: the ``aigc_gateway.runtimes`` entry-point group.

A runtime package declares, in its own ``pyproject.toml``::

    [project.entry-points."aigc_gateway.runtimes"]
    mycluster = "mycluster_runtime:make_runtime"

where ``make_runtime(settings) -> Runtime`` builds the runtime from the gateway's
:class:`~aigc_gateway.settings.Settings` (its state goes under ``settings.runtime_dir``); the
admin sets ``runtime: mycluster``. Nothing in the gateway is edited. The local and Ray runtimes are
declared the same way by the gateway's own ``pyproject.toml``, and are also known built in, so a
source checkout whose installed metadata predates the group still finds them.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from aigc_gateway.errors import UserError

if TYPE_CHECKING:
    from aigc_gateway.runtime.base import Isolation, Runtime
    from aigc_gateway.settings import Settings

__all__ = ["GROUP", "RuntimeFactory", "available", "load", "local", "local_isolation"]

GROUP = "aigc_gateway.runtimes"

RuntimeFactory = Callable[["Settings"], "Runtime"]

BUILT_IN = {
    "local": "aigc_gateway.runtime.plugins:local",
    # Shipped too, but Ray itself is the optional extra ``ray`` (docs/ray.md): choosing it
    # without Ray installed is refused at start, saying what to install.
    "ray": "aigc_gateway.runtime.ray:make_runtime",
}


def available() -> dict[str, EntryPoint]:
    """Every runtime that can be chosen now, by name (installed entry points win)."""
    found = {name: EntryPoint(name, value, GROUP) for name, value in BUILT_IN.items()}
    found.update({ep.name: ep for ep in entry_points(group=GROUP)})
    return found


def check_name(name: str) -> str:
    """``name`` if a runtime of that name is installed; else a :class:`UserError` listing those
    that are."""
    names = available()
    if name not in names:
        raise UserError(
            f"unknown runtime {name!r}: the installed ones are {', '.join(sorted(names))} "
            f"(a runtime package registers itself in the {GROUP!r} entry-point group)",
            code="invalid_settings",
        )
    return name


def load(name: str) -> RuntimeFactory:
    """The factory of the runtime called ``name``."""
    entry = available().get(check_name(name))
    assert entry is not None
    factory = entry.load()
    if not callable(factory):
        raise UserError(
            f"runtime {name!r}: its entry point {entry.value!r} is not a factory "
            "(a callable taking the settings)",
            code="invalid_settings",
        )
    return factory  # type: ignore[no-any-return]


def local_isolation(settings: Settings) -> Isolation:
    """This host's sandbox support under the ``sandbox`` setting (see its docs)."""
    from aigc_gateway.runtime.base import Isolation
    from aigc_gateway.runtime.local_sandbox import SandboxMode, choose
    from aigc_gateway.runtime.sandbox.detect import probe

    support = probe()
    decision = choose(SandboxMode(settings.sandbox), support, dev=settings.dev)
    return Isolation(decision.sandboxed, support.describe(), decision.warning, decision.refusal)


def local(settings: Settings) -> Runtime:
    """The local runtime: engines as process groups on this host, each in its sandbox where
    the ``sandbox`` setting and the host allow (see :func:`local_isolation`)."""
    from aigc_gateway.runtime.local import LocalRuntime
    from aigc_gateway.runtime.mps import MpsControl, mps_root_for
    from aigc_gateway.runtime.sandbox.detect import probe
    from aigc_gateway.runtime.sandbox.launch import Sandbox, SandboxConfig
    from aigc_gateway.runtime.sandbox.uids import parse_range
    from aigc_gateway.runtime.volumes import LocalVolumes

    isolation = local_isolation(settings)
    settings.runtime_dir.mkdir(parents=True, exist_ok=True)
    mps = MpsControl(mps_root_for(settings.runtime_dir), command=settings.mps_control)
    volumes = LocalVolumes(settings.volumes_dir)
    sandbox = None
    if isolation.sandboxed:
        config = SandboxConfig(
            uid_range=parse_range(settings.sandbox_uid_range),
            pids_max=settings.sandbox_pids_max,
            tmp_bytes=settings.sandbox_tmp_mib << 20,
            shm_bytes=settings.sandbox_tmp_mib << 20,
            hidden=(str(settings.data_dir.resolve()),),
            outbound_allow=tuple(settings.sandbox_outbound_allow),
        )
        sandbox = Sandbox(config, probe(), state_dir=settings.runtime_dir)
    return LocalRuntime(
        state_dir=settings.runtime_dir,
        mps=mps,
        volumes=volumes,
        sandbox=sandbox,
        refusal=isolation.refusal,
        isolation=isolation,
    )
