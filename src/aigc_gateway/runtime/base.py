"""The Runtime contract, and the launch spec every runtime receives.

A runtime runs one engine workload per instance id. The lifecycle controller is its only caller,
and it calls at most one method at a time for a given instance id. Runtimes are picked by
configuration (``runtime = "local"``); a new backend implements :class:`Runtime` and nothing else.

Contract, for every method:

- ``start(spec)`` launches the engine for ``spec.instance_id`` and returns as soon as the process
  exists (phase ``STARTING``), without waiting for readiness. **Idempotent:** if a live workload for
  that id exists already, it is returned unchanged. A launch that cannot happen at all (the command is
  not found, the working directory cannot be made) raises :class:`LaunchError` with a message a user
  can act on.
- ``wait_ready(instance_id, timeout=...)`` returns when the engine passes its readiness check (phase
  ``READY``) or exits (phase ``EXITED``, with ``exit_code`` and ``log_tail``); it raises
  :class:`ReadinessTimeout` after ``timeout`` seconds. It never sleeps blindly: it probes at a short
  interval and notices an exit at once. Cancelling it has no effect on the workload.
- ``stop(instance_id, grace=...)`` ends the workload: a polite signal, then after ``grace`` seconds a
  forced kill of everything it started. Returns the final workload (phase ``ABSENT``) with
  ``exited_at``, when the engine ended, where it is known. Idempotent: stopping an absent workload
  is not an error, and stopping again returns the same ``exited_at``.
- When the engine ended is what the usage ledger bills up to, so a runtime keeps it where a killed
  gateway cannot lose it: ``observe``/``list`` of an exited or stopped workload return the same
  ``exited_at`` from any later gateway process. A workload whose end can no longer be recorded
  (its supervisor is gone while the engine runs) is reported as ``EXITED`` with the reason, so the
  controller stops it.
- ``observe(instance_id)`` returns what is there now, without side effects. An id the runtime has never
  seen is phase ``ABSENT``.
- ``list()`` returns every workload the runtime knows about, including ones started by an earlier
  gateway process: this is how a restarted gateway re-adopts running engines.
- ``logs(instance_id, lines=..., tail_bytes=...)`` returns the end of the engine's captured output
  ("" if none): its last ``lines`` lines (all when None) within its last ``tail_bytes`` bytes.
- ``forget(instance_id)`` drops the runtime's own records of a stopped workload (after delete).
- GPUs: ``spec.gpu`` names the devices granted to the workload by the scheduler. The runtime makes
  exactly those visible to the engine (and no others), and for a memory share (``memory_mib``
  set) enforces the limit where the host can, e.g. with NVIDIA MPS; a stop releases them at once.
  A runtime that cannot enforce a share still runs the engine and says so in its log.
- ``gpus()`` returns the cards the runtime can place engines on (:class:`GpuDiscovery`): this
  host's, found by NVML, for the local runtime; every node's for a runtime of several. The
  scheduler places on them (the admin's declarations annotate them), and a :class:`GpuGrant`
  names the node (``GpuDevice.node``) its cards are on.
- ``volumes`` is the runtime's :class:`~aigc_gateway.runtime.volumes.Volumes`: where each
  user's family data lives, its size, and its deletion. Nothing outside the runtime touches
  volume paths.
- ``suspend`` / ``resume`` are optional: runtimes that cannot do it raise :class:`NotSupported`.
- ``close()`` releases the runtime's resources **without** stopping workloads, which outlive the
  gateway process by design.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from aigc_gateway.domain.reconcile import Phase
from aigc_gateway.errors import GatewayError, PermanentError

if TYPE_CHECKING:
    from aigc_gateway.runtime.volumes import Volumes

__all__ = [
    "Endpoint",
    "EngineResources",
    "GpuDevice",
    "GpuDiscovery",
    "GpuGrant",
    "Isolation",
    "LaunchError",
    "LaunchSpec",
    "NotSupported",
    "Phase",
    "ReadinessCheck",
    "ReadinessKind",
    "ReadinessTimeout",
    "Runtime",
    "Workload",
    "render",
]


class LaunchError(PermanentError):
    """The engine could not be launched at all; the message says why and what to do."""

    code = "launch_failed"


class ReadinessTimeout(PermanentError):
    """The engine did not pass ``check`` (e.g. ``GET / on port 8000``) in time; ``tail`` is its
    last output. The message names the time waited; a caller that waited in parts (the
    controller, when kicked meanwhile) words it with :meth:`reason` for the whole time-out."""

    code = "readiness_timeout"

    def __init__(self, *, waited_s: float, check: str, tail: str = "") -> None:
        self.check, self.tail = check, tail
        super().__init__(self.reason(waited_s))

    def reason(self, timeout_s: float) -> str:
        """What a user reads: the time-out, the check, and the engine's last output."""
        message = f"engine did not become ready within {timeout_s:g} s (readiness: {self.check})"
        if self.tail.strip():
            message += f"\nlast engine output:\n{self.tail}"
        return message


class NotSupported(GatewayError):
    status = 501
    code = "not_supported"


class ReadinessKind(enum.StrEnum):
    HTTP = "http"
    """Ready when ``GET path`` on the engine's port answers with a status below 500."""
    TCP = "tcp"
    """Ready when the engine's port accepts a connection."""


@dataclass(frozen=True, slots=True)
class ReadinessCheck:
    kind: ReadinessKind = ReadinessKind.HTTP
    path: str = "/"
    timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How the gateway connects to one engine: a Unix socket only the gateway can open (a
    sandboxed engine, which has no port on the host), a TCP address (an unsandboxed engine on
    this host's loopback), or a node relay (``relay_for`` set: ``host``/``port`` is the relay of
    the engine's node, which lets only the gateway through to that instance's Unix socket there;
    see ``runtime/relay.py``). Exactly one of ``unix_path`` and ``host``/``port`` is set. The
    engine always sees plain HTTP on it. No key or secret is ever part of an endpoint."""

    unix_path: str | None = None
    host: str | None = None
    port: int | None = None
    relay_for: str | None = None
    """The instance id the node relay at ``host``/``port`` connects to (None: not a relay)."""

    def __post_init__(self) -> None:
        if (self.unix_path is None) == (self.host is None or self.port is None):
            raise ValueError("an endpoint is a Unix socket path or a host and port, not both")
        if self.relay_for is not None and not RELAYED_ID.fullmatch(self.relay_for):
            raise ValueError(f"not an instance id a relay can name: {self.relay_for!r}")
        if self.relay_for is not None and self.unix_path is not None:
            raise ValueError("a relay endpoint is the relay's host and port, not a socket path")

    @property
    def describe(self) -> str:
        """For people and logs: ``unix:/path``, ``host:port`` or ``relay:host:port/<id>``."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        if self.relay_for is not None:
            return f"relay:{host}:{self.port}/{self.relay_for}"
        return f"{host}:{self.port}"

    @property
    def is_unix(self) -> bool:
        return self.unix_path is not None

    @property
    def is_relay(self) -> bool:
        return self.relay_for is not None

    @property
    def is_direct_tcp(self) -> bool:
        """A TCP address that is the engine itself (not a socket, not a relay)."""
        return self.unix_path is None and self.relay_for is None

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """The inverse of :attr:`describe` (how the store and the route table keep it):
        ``unix:/path``, ``host:port``, ``[v6]:port``, ``relay:host:port/<instance id>``.
        ``ValueError`` for anything else."""
        if text.startswith("unix:"):
            path = text[len("unix:") :]
            if not path.startswith("/"):
                raise ValueError(f"a Unix endpoint needs an absolute path: {text!r}")
            return cls(unix_path=path)
        relay_for = None
        if text.startswith("relay:") and not text[len("relay:") :].isdigit():  # not host "relay"
            text, sep, relay_for = text[len("relay:") :].partition("/")
            if not sep:
                raise ValueError(f"a relay endpoint names its instance: {text!r}")
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"not an endpoint (unix:/path or host:port): {text!r}")
        return cls(
            host=host.removeprefix("[").removesuffix("]"), port=int(port), relay_for=relay_for
        )


RELAYED_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""Instance ids a relay endpoint may name (a handshake carries at most 128 ASCII bytes)."""


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One card a runtime can give engines, as its driver reports it."""

    id: str
    """The card's UUID (``GPU-…``): stable across reboots and re-indexing."""
    node: str
    """The host it is on, as the runtime names it (``local`` for the local runtime)."""
    index: int
    model: str
    """The driver's name for it, e.g. ``NVIDIA H100 80GB HBM3``."""
    memory_gib: float
    pool: str | None = None
    """The pool its node is in, where the runtime knows (a Ray node's ``pool`` label); None:
    the default pool, until the admin's declarations say otherwise."""
    pool_rank: int | None = None
    """Its node's rank within the pool where the runtime knows (lower is used first)."""


@dataclass(frozen=True, slots=True)
class GpuDiscovery:
    devices: tuple[GpuDevice, ...]
    note: str
    """For people: what was found, or why nothing (``no NVIDIA driver (…)``)."""


@dataclass(frozen=True, slots=True)
class Isolation:
    """Whether a runtime's engines run sandboxed, as every surface (log, doctor, Health,
    ``/healthz``) reports it. A runtime says so in an ``isolation`` attribute; one that does not
    is taken not to isolate its engines."""

    sandboxed: bool
    detail: str
    """What the sandbox uses, or what is missing."""
    warning: str | None = None
    """Set when engines are not isolated: "engines are NOT isolated ..." and why."""
    refusal: str | None = None
    """Set when engine starts are refused (the host cannot sandbox, and the settings do not
    allow engines without)."""


@dataclass(frozen=True, slots=True)
class GpuGrant:
    """GPUs placed for one workload: whole cards, or (``memory_mib`` set) a share of one card."""

    devices: tuple[str, ...]
    """How the driver names each card: its UUID (``GPU-…``) where known, else its index."""
    memory_mib: int | None = None
    """For a share: the memory the engine may pin on its card."""
    node: str = ""
    """The host the cards are on (the scheduler's ``Gpu.host``, as the runtime's inventory
    named it): a runtime of several nodes launches the engine there. "" where unknown."""

    @property
    def is_share(self) -> bool:
        return self.memory_mib is not None


@dataclass(frozen=True, slots=True)
class EngineResources:
    """What one engine may use: CPU cores (a quota), memory and processes (hard limits)."""

    cpu: float | None = None
    memory_mib: int | None = None
    pids: int | None = None
    """None: the runtime's default (``sandbox_pids_max``)."""


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """Everything a runtime needs to run one engine, already resolved from the template.

    ``command``, ``env`` values and ``working_dir`` may contain the placeholders ``{port}``,
    ``{data_dir}``, ``{instance_id}`` and ``{socket}``; the runtime fills them with
    :func:`render` once it has chosen the port. ``port`` is the engine's fixed port or ``None`` to
    let the runtime pick a free one. ``port_env`` names an environment variable that receives the
    port (e.g. ``PORT``). A command naming ``{socket}`` is an engine that listens on a Unix socket
    itself: the runtime gives it a socket path of its own and the workload's endpoint is that
    socket (no TCP port is involved).
    """

    instance_id: str
    command: tuple[str, ...]
    data_dir: str
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str = "{data_dir}"
    port: int | None = None
    port_env: str | None = "PORT"
    readiness: ReadinessCheck = ReadinessCheck()
    stop_grace_s: float = 10.0
    log_max_bytes: int = 4 * 1024 * 1024
    labels: Mapping[str, str] = field(default_factory=dict)
    """Free-form facts the runtime records and returns in :class:`Workload` (owner, template)."""
    gpu: GpuGrant | None = None
    """The GPUs this engine may use (None: no GPU; the runtime hides every card)."""
    resources: EngineResources = field(default_factory=lambda: EngineResources())
    """Limits a sandboxing runtime enforces (cgroups); others may ignore them."""
    read_only_paths: tuple[str, ...] = ()
    """Host paths the engine needs read-only besides its command's own (an install dir)."""
    network: str = "none"
    """What a sandboxing runtime lets the engine reach: ``none`` (its own loopback only) or
    ``outbound`` (the internet, but not the host, private ranges or metadata addresses)."""


@dataclass(frozen=True, slots=True)
class Workload:
    """What a runtime knows of one instance's engine."""

    instance_id: str
    phase: Phase
    pid: int | None = None
    endpoint: Endpoint | None = None
    """How the gateway connects to the engine (every proxy path, probe and check goes through
    it; nothing outside the runtime builds an address itself). None when nothing runs."""
    started_at: float | None = None
    exit_code: int | None = None
    exited_at: float | None = None
    """When the engine ended (seconds since the epoch), where the runtime knows: for an exited
    workload and for a stopped one (phase ``ABSENT`` after a stop)."""
    log_tail: str = ""
    message: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str | None:
        """The endpoint as :attr:`Endpoint.describe` gives it (``unix:/path``, ``host:port``)."""
        return None if self.endpoint is None else self.endpoint.describe

    def with_phase(self, phase: Phase, **changes: object) -> Workload:
        return replace(self, phase=phase, **changes)  # type: ignore[arg-type]


_PLACEHOLDER = re.compile(r"\{(port|data_dir|instance_id|socket)\}")
SOCKET_PLACEHOLDER = "{socket}"


def render(text: str, values: Mapping[str, str]) -> str:
    """Fill ``{port}``, ``{data_dir}``, ``{instance_id}`` and ``{socket}`` in ``text``; other
    braces are kept."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def uses_socket(spec: LaunchSpec) -> bool:
    """Whether the engine listens on a Unix socket of its own (its command names ``{socket}``)."""
    return any(SOCKET_PLACEHOLDER in part for part in (*spec.command, *spec.env.values()))


@runtime_checkable
class Runtime(Protocol):
    """See the module docstring for the contract of each method."""

    name: str
    volumes: Volumes

    async def start(self, spec: LaunchSpec) -> Workload: ...

    async def wait_ready(self, instance_id: str, *, timeout: float) -> Workload: ...

    async def stop(self, instance_id: str, *, grace: float) -> Workload: ...

    async def observe(self, instance_id: str) -> Workload: ...

    async def list(self) -> list[Workload]: ...

    async def logs(
        self, instance_id: str, *, lines: int | None = None, tail_bytes: int = 8192
    ) -> str: ...

    async def forget(self, instance_id: str) -> None: ...

    async def gpus(self) -> GpuDiscovery: ...

    async def suspend(self, instance_id: str) -> Workload: ...

    async def resume(self, instance_id: str) -> Workload: ...

    async def close(self) -> None: ...
