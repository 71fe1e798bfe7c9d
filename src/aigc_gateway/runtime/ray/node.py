"""What runs on a Ray node: the engine's supervisor actor and the node's small tasks.

Nothing here imports Ray at import time: the gateway's driver wraps these classes and functions
with ``ray.remote`` (:mod:`.runtime`), and Ray runs them in worker processes of the chosen node.

:class:`EngineSupervisor` is one detached actor per instance (``engine-<instance id>``). It runs
its one engine with the local runtime's machinery (:class:`~aigc_gateway.runtime.local.LocalRuntime`
as :func:`~aigc_gateway.runtime.plugins.local` builds it: the sandbox, the exit-recording wrapper,
the logs, MPS for memory shares), over the node's own folder (:class:`NodeConfig.node_dir`), so
everything it knows of the engine is on that node's disk. The actor itself holds nothing else: a
new supervisor on the same node (after the old one died) re-adopts the engine from those files,
as a restarted gateway does for the local runtime.

Errors cross the actor boundary as values (:class:`Failure`), not as Ray's wrapped exceptions,
so the driver raises the gateway's own error (a :class:`~aigc_gateway.runtime.base.LaunchError`
with its message) and not a ``RayTaskError``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from aigc_gateway.errors import GatewayError
from aigc_gateway.runtime.base import GpuDiscovery, LaunchSpec, Workload

__all__ = [
    "NODE_DIR",
    "EngineSupervisor",
    "Failure",
    "NodeConfig",
    "NodeRelay",
    "delete_volume_here",
    "discover_here",
    "node_id_here",
    "size_volume_here",
]

logger = logging.getLogger(__name__)

NODE_DIR = "{node_dir}"
"""In a launch spec's ``data_dir``: the data folder of whichever node runs the engine (a
volume's mount names it, see :mod:`.volumes`), filled in on the node."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """What a node needs of the gateway's settings to run engines: the sandbox's and MPS's
    settings, and where its folder is. No secret of the gateway travels to the nodes."""

    node_dir: str
    """The node's folder; ``{node}`` is replaced by the node id's first 12 hex digits."""
    sandbox: Literal["auto", "on", "off"] = "auto"
    dev: bool = False
    sandbox_uid_range: str = "200000-265535"
    sandbox_pids_max: int = 1024
    sandbox_tmp_mib: int = 1024
    sandbox_outbound_allow: tuple[str, ...] = ()
    mps_control: str = "nvidia-cuda-mps-control"

    def folder(self, node_id: str) -> Path:
        return Path(self.node_dir.replace("{node}", node_id[:12]))


@dataclass(frozen=True, slots=True)
class Failure:
    """A gateway error raised on the node, as data: :meth:`error` rebuilds it on the driver."""

    kind: type[GatewayError]
    message: str
    attributes: dict[str, Any]

    @classmethod
    def of(cls, exc: GatewayError) -> Failure:
        return cls(type(exc), exc.message, dict(vars(exc)))

    def error(self) -> GatewayError:
        # Not through __init__: some errors take keyword-only fields (ReadinessTimeout).
        exc = self.kind.__new__(self.kind)
        Exception.__init__(exc, self.message)
        vars(exc).update(self.attributes)
        return exc


def node_id_here() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def _local_runtime(config: NodeConfig, folder: Path) -> Any:
    """The local runtime over this node's folder, as ``runtime: local`` builds it."""
    from aigc_gateway.runtime.plugins import local
    from aigc_gateway.settings import Settings

    # model_construct: no validation (the ``runtime`` validator would look for installed entry
    # points) and no reading of this node's environment or config file.
    settings = Settings.model_construct(
        data_dir=folder,
        runtime="ray",
        sandbox=config.sandbox,
        dev=config.dev,
        sandbox_uid_range=config.sandbox_uid_range,
        sandbox_pids_max=config.sandbox_pids_max,
        sandbox_tmp_mib=config.sandbox_tmp_mib,
        sandbox_outbound_allow=list(config.sandbox_outbound_allow),
        mps_control=config.mps_control,
    )
    return local(settings)


class EngineSupervisor:
    """One engine on this node (an async Ray actor); see the module docstring. Every method
    returns its result, or a :class:`Failure` for a gateway error."""

    def __init__(self, config: NodeConfig) -> None:
        from aigc_gateway.runtime.local import LocalRuntime

        self.node_id = node_id_here()
        self.folder = config.folder(self.node_id)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.local: LocalRuntime = _local_runtime(config, self.folder)

    async def node(self) -> str:
        """The node it runs on (also: the actor was scheduled and constructed)."""
        return self.node_id

    async def start(self, spec: LaunchSpec) -> Workload | Failure:
        here = str(self.folder)
        spec = dataclasses.replace(spec, data_dir=spec.data_dir.replace(NODE_DIR, here))
        return await _guard(self.local.start(spec))

    async def wait_ready(self, instance_id: str, timeout: float) -> Workload | Failure:
        return await _guard(self.local.wait_ready(instance_id, timeout=timeout))

    async def observe(self, instance_id: str) -> Workload | Failure:
        return await _guard(self.local.observe(instance_id))

    async def logs(self, instance_id: str, lines: int | None, tail_bytes: int) -> str | Failure:
        return await _guard(self.local.logs(instance_id, lines=lines, tail_bytes=tail_bytes))

    async def stop(
        self, instance_id: str, grace: float, keep_log_bytes: int
    ) -> tuple[Workload, str] | Failure:
        """Stop the engine, then drop its files on this node: the final workload and the end of
        its log are returned for the driver to keep (the actor is killed next)."""

        async def run() -> tuple[Workload, str]:
            final = await self.local.stop(instance_id, grace=grace)
            log = await self.local.logs(instance_id, tail_bytes=keep_log_bytes)
            await self.local.forget(instance_id)
            await self.local.close()
            return final, log

        return await _guard(run())

    async def forget(self, instance_id: str) -> Failure | None:
        async def run() -> None:
            await self.local.forget(instance_id)
            await self.local.close()

        return await _guard(run())


async def _guard(call: Awaitable[T]) -> T | Failure:
    try:
        return await call
    except GatewayError as exc:
        return Failure.of(exc)


class NodeRelay:
    """The node's relay (an async Ray actor, ``relay-<node id>``, one per node): lets the gateway
    reach the engines of this node on their Unix sockets (:func:`~aigc_gateway.runtime.relay.
    serve_relay`; the handshake and what it refuses are there). It serves the engines whose
    records are in this node's folder, and only those."""

    def __init__(self, config: NodeConfig, key_hex: str, port: int) -> None:
        self.folder = config.folder(node_id_here())
        self.key_hex, self.port = key_hex, port
        self.server: Any = None

    async def address(self) -> tuple[str, int]:
        """Where the relay listens (started on the first call, on the node's address)."""
        if self.server is None:
            import ray

            from aigc_gateway.runtime.relay import RelayKey, serve_relay

            host = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]  # Ray: untyped
            key = RelayKey.from_hex(self.key_hex)
            self.server = await serve_relay(host, self.port, key, self.socket_of)
        return str(self.server.host), int(self.server.port)

    def socket_of(self, instance_id: str) -> str | None:
        """The socket of an engine of this node that listens on one; None for any other id."""
        from aigc_gateway.runtime.base import RELAYED_ID

        if not RELAYED_ID.fullmatch(instance_id):
            return None
        record = self.folder / "runtime" / "ray" / instance_id / "workload.json"
        try:
            found = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        path = found.get("socket_path") if not found.get("stopped") else None
        return path if isinstance(path, str) else None


# -- the node's tasks (each run on one chosen node) ----------------------------------------------


def discover_here() -> GpuDiscovery:
    """This node's cards as NVML reports them, named as on this node."""
    from aigc_gateway.runtime import nvml

    return nvml.discover(node_id_here())


def _volumes(config: NodeConfig) -> Any:
    from aigc_gateway.runtime.volumes import LocalVolumes

    return LocalVolumes(config.folder(node_id_here()) / "volumes")


def size_volume_here(config: NodeConfig, owner: str, family: str) -> int:
    """The bytes the volume holds on this node (0 where it has none)."""
    size: int = asyncio.run(_volumes(config).size(owner, family))
    return size


def delete_volume_here(config: NodeConfig, owner: str, family: str) -> None:
    asyncio.run(_volumes(config).delete(owner, family))
