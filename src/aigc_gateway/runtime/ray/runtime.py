"""``runtime: ray``: each engine under its own detached supervisor actor on a Ray node.

The gateway is a Ray driver (``ray.init(address=ray_address)``). Contract (besides
:mod:`aigc_gateway.runtime.base`'s):

- **One actor per instance**, named ``engine-<instance id>`` in ``ray_namespace``, detached (it
  outlives the gateway process) and created with ``get_if_exists`` (a start is idempotent across
  gateways). It runs the engine with the local runtime's machinery on its node
  (:class:`~.node.EngineSupervisor`), holds the grant's cards (``num_gpus``: whole cards only; a
  memory share holds none, its accounting is the gateway's) and one unit of the custom ``engine``
  resource, which only engine nodes have (and which keeps an autoscaler from removing a node
  under a live engine). It needs no CPU of Ray's (``num_cpus=0``).
- **Placement is the gateway's**: a grant's cards name their node (:attr:`GpuGrant.node`, the
  Ray node id as :meth:`gpus` reported it) and the actor is pinned there
  (``NodeAffinitySchedulingStrategy(soft=False)``); an engine with no GPU goes to any engine node
  of the pool its launch labels name (``labels["pool"]``, a ``label_selector``), or to any engine
  node. A start that no node can take (the node left, no node of that pool, too few cards) is
  refused at once with a :class:`LaunchError` saying so, never left pending; one that the
  cluster does not schedule within ``schedule_timeout_s`` is given up the same way.
- **What outlives the actor** is kept in the cluster's key-value store (the GCS, namespace
  ``aigc-gateway.<ray_namespace>``): per instance, the node it was placed on, and once stopped, when the
  engine ended, its labels and the end of its log. So ``observe``/``list``/``logs`` of a stopped
  workload answer the same from any later gateway, and ``forget`` drops the record.
- **Supervisors are replaceable**: when an engine's actor is gone but its record says it was
  not stopped, the next call makes a new supervisor on the same node, which re-adopts the engine
  from the node's files (``LocalRuntime`` state). If the node itself is gone, the workload is
  ``EXITED`` ("its node left the cluster").
- ``stop`` stops the engine through its supervisor, records the end, then kills the actor
  (``ray.kill``), which gives its cards and ``engine`` unit back to the cluster.
- ``gpus()`` is every live node's cards: NVML on that node (a task pinned there), or where it
  finds none, the ``GPU`` count Ray has for the node, typed by its ``gpu-type`` label (memory from
  ``gpu-memory-gib``); each card carries its node's ``pool`` and ``pool_rank`` labels.
- Endpoints: an engine on a Unix socket (every sandboxed engine) is reached through its node's
  relay (:class:`~.node.NodeRelay`, the detached actor ``relay-<node id>`` serving
  :func:`~aigc_gateway.runtime.relay.serve_relay` on the node's address), as
  ``relay:<node address>:<port>/<instance id>``, when the runtime has the cluster's relay key
  (:func:`~aigc_gateway.runtime.ray.make_runtime` gives it the gateway's). Without a key, and for
  an unsandboxed engine on a loopback port, the endpoint is what the node reports, which only a
  gateway on the same machine can open.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from aigc_gateway.errors import Conflict
from aigc_gateway.runtime import local_procs
from aigc_gateway.runtime.base import (
    Endpoint,
    GpuDevice,
    GpuDiscovery,
    Isolation,
    LaunchError,
    LaunchSpec,
    NotSupported,
    Phase,
    Workload,
)
from aigc_gateway.runtime.ray import node as on_node
from aigc_gateway.runtime.ray.node import Failure, NodeConfig
from aigc_gateway.runtime.ray.volumes import RayVolumes
from aigc_gateway.runtime.relay import RelayKey
from aigc_gateway.runtime.volumes import Volumes

__all__ = ["ACTOR_PREFIX", "RayRuntime"]

logger = logging.getLogger(__name__)

ACTOR_PREFIX = "engine-"
ENGINE_RESOURCE = "engine"
KEEP_LOG_BYTES = 256 * 1024
"""How much of a stopped engine's log the cluster keeps (``logs`` after the stop)."""
KILL_CONFIRM_CALLS = 1000
"""Calls on a killed actor until one fails (each answers at once while the kill is on its way)."""
RELAY_RESTART_POLL_S = 0.05
"""How often a relay that Ray is restarting is asked again for its address."""
NODE_TASK_TIMEOUT_S = 30.0
"""The most a node's small task (NVML, a volume's size) may take before it is left out."""


class RayRuntime:
    """Engines on a Ray cluster; see the module docstring."""

    name = "ray"

    def __init__(
        self,
        *,
        config: NodeConfig,
        address: str | None = None,
        namespace: str = "aigc-gateway",
        schedule_timeout_s: float = 60.0,
        relay_key: RelayKey | None = None,
        relay_port: int = 0,
    ) -> None:
        """``address``: the cluster (``None``: ``auto``); a process already connected to Ray
        (``ray.is_initialized()``) uses that connection and leaves it open on :meth:`close`.
        ``relay_key``: reach engines on Unix sockets through their node's relay (listening on
        ``relay_port``, 0: any free port); None: report the node's socket path itself (the
        gateway on the same machine as every node)."""
        self._relay_key, self._relay_port = relay_key, relay_port
        self._relays: dict[str, Any] = {}
        """Each node's relay actor, by node id."""
        self._address = address
        self._namespace = namespace
        # No colon: Ray's key-value store joins namespace and key with one.
        self._kv_namespace = f"aigc-gateway.{namespace}"
        self._config = config
        self._schedule_timeout_s = schedule_timeout_s
        self._connected = False
        self._owns_connection = False
        self._connecting = asyncio.Lock()
        self._remote: dict[str, Any] = {}
        self.volumes: Volumes = RayVolumes(self)
        off = config.sandbox == "off"
        self.isolation = Isolation(
            sandboxed=not off,
            detail="no sandbox (sandbox: off)"
            if off
            else f"bubblewrap sandbox on each Ray node (sandbox: {config.sandbox}; a node that "
            "cannot sandbox refuses its engines, saying why)",
            warning="engines are NOT isolated from each other or from the node (sandbox: off)"
            if off
            else None,
        )

    @property
    def node_config(self) -> NodeConfig:
        """What every node is given to run engines (its folder, the sandbox's settings)."""
        return self._config

    # -- the Runtime contract -------------------------------------------------------------------

    async def start(self, spec: LaunchSpec) -> Workload:
        iid = spec.instance_id
        record = await self._get(iid)
        if record is not None and record.get("stopped"):
            await self._kill_lingering(iid)
            await self._delete(iid)
        actor = await self._supervisor(iid, record=None)
        if actor is not None and await self._misplaced(iid, actor, spec):
            # An exited engine's supervisor where the new grant is not: end it (its cards go
            # back) and place the engine anew.
            await self._end(actor)
            actor = None
        if actor is None:
            options, gpus = await asyncio.to_thread(self._placement, spec)
            actor = await self._create(iid, options)
            where = await self._scheduled(actor, iid, describe=options["_what"])
            await self._put(iid, {"node": where, "gpus": gpus, "stopped": False})
        try:
            started: Workload = await self._reach(iid, await self._call(actor, "start", spec))
        except LaunchError:
            # Nothing runs: give the node's cards back at once.
            await self._end(actor)
            await self._delete(iid)
            raise
        return started

    async def wait_ready(self, instance_id: str, *, timeout: float) -> Workload:
        actor = await self._supervisor(instance_id)
        if actor is None:
            return await self._without_supervisor(instance_id)
        ready: Workload = await self._call(actor, "wait_ready", instance_id, timeout)
        return await self._reach(instance_id, ready)

    async def stop(self, instance_id: str, *, grace: float) -> Workload:
        record = await self._get(instance_id)
        if record is not None and record.get("stopped"):
            await self._kill_lingering(instance_id)
            return _stopped(instance_id, record)
        actor = await self._supervisor(instance_id)
        if actor is None:
            if record is None:
                return Workload(instance_id, Phase.ABSENT)
            # Its node is gone, and the engine with it: it ended at the latest now.
            record.update(stopped=True, exited_at=time.time(), labels={}, log="")
            await self._put(instance_id, record)
            return _stopped(instance_id, record)
        final, log = await self._call(actor, "stop", instance_id, grace, KEEP_LOG_BYTES)
        record = record or {}
        record.update(stopped=True, exited_at=final.exited_at, labels=dict(final.labels), log=log)
        await self._put(instance_id, record)
        await self._end(actor)
        logger.info("engine supervisor ended", extra={"instance_id": instance_id})
        return _stopped(instance_id, record)

    async def observe(self, instance_id: str) -> Workload:
        record = await self._get(instance_id)
        if record is not None and record.get("stopped"):
            return _stopped(instance_id, record)
        actor = await self._supervisor(instance_id, record=record)
        if actor is None:
            return await self._without_supervisor(instance_id, record)
        try:
            seen: Workload = await self._call(actor, "observe", instance_id)
        except _SupervisorGone:
            return await self._without_supervisor(instance_id)
        return await self._reach(instance_id, seen, record)

    async def list(self) -> builtins.list[Workload]:
        ray = await self._ray()
        named = await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
        ids = {
            a["name"].removeprefix(ACTOR_PREFIX)
            for a in named
            if a["namespace"] == self._namespace and a["name"].startswith(ACTOR_PREFIX)
        }
        ids |= set(await self._recorded())
        found = await asyncio.gather(*(self._listed(i) for i in sorted(ids)))
        return [w for w in found if w is not None]

    async def logs(
        self, instance_id: str, *, lines: int | None = None, tail_bytes: int = 8192
    ) -> str:
        record = await self._get(instance_id)
        if record is None or not record.get("stopped"):
            actor = await self._supervisor(instance_id, record=record)
            if actor is not None:
                with contextlib.suppress(_SupervisorGone):
                    text: str = await self._call(actor, "logs", instance_id, lines, tail_bytes)
                    return text
        if record is None:
            return ""
        data = str(record.get("log", "")).encode()[-tail_bytes:] if tail_bytes > 0 else b""
        text = data.decode("utf-8", errors="replace")
        return text if lines is None else local_procs.last_lines(text, lines)

    async def forget(self, instance_id: str) -> None:
        record = await self._get(instance_id)
        if record is None or not record.get("stopped"):
            actor = await self._supervisor(instance_id, record=record)
            if actor is not None:
                current = await self._call(actor, "observe", instance_id)
                if current.phase.alive:
                    raise Conflict(
                        f"the engine of instance {instance_id} is still running; "
                        "stop it before removing its records"
                    )
                await self._call(actor, "forget", instance_id)
                await self._end(actor)
        await self._kill_lingering(instance_id)
        await self._delete(instance_id)

    async def gpus(self) -> GpuDiscovery:
        ray = await self._ray()
        nodes = [n for n in await asyncio.to_thread(ray.nodes) if n.get("Alive")]
        with_gpus = [n for n in nodes if float(n.get("Resources", {}).get("GPU", 0)) > 0]
        found = await asyncio.gather(*(self._node_gpus(n) for n in with_gpus))
        devices = tuple(d for node in found for d in node[0])
        notes = "; ".join(note for _, note in found)
        summary = f"{len(devices)} GPU(s) on {len(with_gpus)} of {len(nodes)} Ray node(s)"
        return GpuDiscovery(devices, f"{summary}: {notes}" if notes else summary)

    async def suspend(self, instance_id: str) -> Workload:
        raise NotSupported("the Ray runtime cannot suspend engines yet")

    async def resume(self, instance_id: str) -> Workload:
        raise NotSupported("the Ray runtime cannot suspend engines yet")

    async def close(self) -> None:
        """Leave the cluster if this runtime joined it; every engine and supervisor stays."""
        if self._owns_connection:
            import ray

            await asyncio.to_thread(ray.shutdown)
            self._owns_connection = False
        self._connected = False

    # -- placement ------------------------------------------------------------------------------

    def _placement(self, spec: LaunchSpec) -> tuple[dict[str, Any], float]:
        """The actor's scheduling options for ``spec`` (blocking: reads the cluster's nodes), and
        the cards it holds; :class:`LaunchError` when no node of the cluster can take it."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        engine_nodes = [n for n in nodes if _resources(n).get(ENGINE_RESOURCE, 0) >= 1]
        grant = spec.gpu
        gpus = float(len(grant.devices)) if grant is not None and not grant.is_share else 0.0
        options: dict[str, Any] = {"num_gpus": gpus}
        if grant is not None and grant.node:
            node = next((n for n in nodes if n["NodeID"] == grant.node), None)
            if node is None:
                raise LaunchError(
                    f"the GPUs granted are on Ray node {grant.node}, which is not in the cluster "
                    "now (it left, or is down); the instance is placed again when it starts again"
                )
            resources = _resources(node)
            if resources.get(ENGINE_RESOURCE, 0) < 1:
                raise LaunchError(
                    f"Ray node {grant.node} runs no engines: it has no {ENGINE_RESOURCE!r} "
                    "resource (start it with --resources '{\"engine\": 100}', docs/ray.md)"
                )
            if resources.get("GPU", 0) < gpus:
                raise LaunchError(
                    f"Ray node {grant.node} has {resources.get('GPU', 0):g} GPU(s), "
                    f"fewer than the {gpus:g} granted"
                )
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(grant.node, soft=False)
            options["_what"] = f"{gpus:g} GPU(s) on Ray node {grant.node}"
            return options, gpus
        pool = spec.labels.get("pool")
        if pool:
            engine_nodes = [n for n in engine_nodes if _labels(n).get("pool") == pool]
            options["label_selector"] = {"pool": pool}
        if not engine_nodes:
            pools = sorted({_labels(n).get("pool", "") for n in nodes if _labels(n).get("pool")})
            where = f"of pool {pool!r} " if pool else ""
            raise LaunchError(
                f"no engine node {where}is in the Ray cluster (pools there: "
                f"{', '.join(pools) or 'none'}); add one (docs/ray.md) or choose another pool"
            )
        options["_what"] = f"an engine node of pool {pool!r}" if pool else "an engine node"
        return options, gpus

    async def _create(self, instance_id: str, options: dict[str, Any]) -> Any:
        cls = await self._remote_class()
        opts = {k: v for k, v in options.items() if not k.startswith("_")}
        return cls.options(
            name=ACTOR_PREFIX + instance_id,
            namespace=self._namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=0,
            num_cpus=0,
            resources={ENGINE_RESOURCE: 1},
            **opts,
        ).remote(self._config)

    async def _scheduled(self, actor: Any, instance_id: str, *, describe: str) -> str:
        """The node the new actor runs on, once it runs; a :class:`LaunchError` (and no actor)
        when the cluster does not place it in time or it cannot be made."""
        import ray

        try:
            async with asyncio.timeout(self._schedule_timeout_s):
                where: str = await actor.node.remote()
                return where
        except TimeoutError:
            ray.kill(actor, no_restart=True)
            raise LaunchError(
                f"the Ray cluster did not place the engine ({describe}) within "
                f"{self._schedule_timeout_s:g} s: the node's resources are taken"
            ) from None
        except ray.exceptions.RayError as exc:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
            raise LaunchError(f"the engine's supervisor could not start on Ray: {exc}") from exc

    # -- supervisors ----------------------------------------------------------------------------

    async def _supervisor(self, instance_id: str, *, record: dict[str, Any] | None = None) -> Any:
        """The instance's live supervisor actor; a new one on the engine's node when the old one
        is gone but the engine was never stopped (it re-adopts it); None when there is none."""
        ray = await self._ray()
        try:
            return await asyncio.to_thread(
                ray.get_actor, ACTOR_PREFIX + instance_id, namespace=self._namespace
            )
        except ValueError:
            pass
        record = record if record is not None else await self._get(instance_id)
        if record is None or record.get("stopped") or not record.get("node"):
            return None
        alive = {n["NodeID"] for n in await asyncio.to_thread(ray.nodes) if n.get("Alive")}
        if record["node"] not in alive:
            return None
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        logger.warning(
            "engine supervisor gone; a new one re-adopts the engine",
            extra={"instance_id": instance_id, "node": record["node"]},
        )
        options = {
            "num_gpus": float(record.get("gpus", 0)),
            "scheduling_strategy": NodeAffinitySchedulingStrategy(record["node"], soft=False),
        }
        actor = await self._create(instance_id, options)
        try:
            await self._scheduled(actor, instance_id, describe=f"Ray node {record['node']}")
        except LaunchError:
            return None
        return actor

    async def _misplaced(self, instance_id: str, actor: Any, spec: LaunchSpec) -> bool:
        """Whether ``actor`` holds no live engine and is not where ``spec``'s grant is (another
        node, or other cards): a live engine is kept as it is (a start is idempotent)."""
        grant = spec.gpu
        if grant is None or not grant.node:
            return False
        record = await self._get(instance_id)
        if record is None:
            return False
        gpus = 0.0 if grant.is_share else float(len(grant.devices))
        if record.get("node") == grant.node and float(record.get("gpus", 0)) == gpus:
            return False
        try:
            current: Workload = await self._call(actor, "observe", instance_id)
        except _SupervisorGone:
            return True
        return not current.phase.alive

    async def _without_supervisor(
        self, instance_id: str, record: dict[str, Any] | None = None
    ) -> Workload:
        record = record if record is not None else await self._get(instance_id)
        if record is None:
            return Workload(instance_id, Phase.ABSENT, message="no engine was started")
        if record.get("stopped"):
            return _stopped(instance_id, record)
        return Workload(
            instance_id,
            Phase.EXITED,
            message=f"the engine's Ray node {record.get('node')} left the cluster (or its "
            "supervisor cannot be placed there again); nothing more is known of the engine",
        )

    async def _listed(self, instance_id: str) -> Workload | None:
        work = await self.observe(instance_id)
        if work.phase is Phase.ABSENT and await self._get(instance_id) is None:
            return None  # a supervisor being made, or one ending after its forget
        return work

    async def _kill_lingering(self, instance_id: str) -> None:
        ray = await self._ray()
        try:
            actor = await asyncio.to_thread(
                ray.get_actor, ACTOR_PREFIX + instance_id, namespace=self._namespace
            )
        except ValueError:
            return
        await self._end(actor)

    async def _end(self, actor: Any) -> None:
        """Kill the actor (its cards and ``engine`` unit go back to the cluster) and return once
        it is dead: a call on it fails then, and its name is free for a new start."""
        ray = await self._ray()
        ray.kill(actor, no_restart=True)
        for _ in range(KILL_CONFIRM_CALLS):
            try:
                await actor.node.remote()
            except ray.exceptions.RayActorError:
                return
        logger.warning("engine supervisor still answers after its kill")

    async def _call(self, actor: Any, method: str, *args: Any) -> Any:
        import ray

        try:
            result = await getattr(actor, method).remote(*args)
        except ray.exceptions.RayActorError as exc:
            raise _SupervisorGone(str(exc)) from exc
        if isinstance(result, Failure):
            raise result.error()
        return result

    # -- the node relays ------------------------------------------------------------------------

    async def _reach(
        self, instance_id: str, work: Workload, record: dict[str, Any] | None = None
    ) -> Workload:
        """``work`` with its endpoint as the gateway reaches it: through the node's relay for
        an engine on a Unix socket (when this runtime has the relay key)."""
        endpoint = work.endpoint
        if self._relay_key is None or endpoint is None or endpoint.unix_path is None:
            return work
        record = record if record is not None else await self._get(instance_id)
        if record is None or not record.get("node"):
            return work
        host, port = await self._relay(record["node"])
        return dataclasses.replace(
            work, endpoint=Endpoint(host=host, port=port, relay_for=instance_id)
        )

    async def _relay(self, node_id: str) -> tuple[str, int]:
        """The address of node ``node_id``'s relay, started there (``relay-<node id>``, a
        detached actor that Ray restarts if it dies) when it is not running yet. Asked on every
        call, not remembered: a restarted relay may listen on another port."""
        ray = await self._ray()
        actor = self._relays.get(node_id)
        if actor is not None:
            try:
                async with asyncio.timeout(self._schedule_timeout_s):
                    while True:
                        try:
                            address: tuple[str, int] = await actor.address.remote()
                            return address
                        except ray.exceptions.ActorUnavailableError:
                            # Ray is restarting it; nothing signals the end of a restart.
                            await asyncio.sleep(RELAY_RESTART_POLL_S)
            except ray.exceptions.RayActorError:
                del self._relays[node_id]  # gone for good: made again below
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        assert self._relay_key is not None
        cls = self._remote.get("NodeRelay")
        if cls is None:
            cls = self._remote["NodeRelay"] = ray.remote(on_node.NodeRelay)
        actor = cls.options(
            name=f"relay-{node_id}",
            namespace=self._namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(self._config, self._relay_key.hex(), self._relay_port)
        async with asyncio.timeout(self._schedule_timeout_s):
            host, port = await actor.address.remote()
        self._relays[node_id] = actor
        return host, port

    # -- the cluster's records ------------------------------------------------------------------

    def _kv(self) -> Any:
        from ray.experimental import internal_kv

        return internal_kv

    async def _get(self, instance_id: str) -> dict[str, Any] | None:
        await self._ray()
        raw = await asyncio.to_thread(
            self._kv()._internal_kv_get, f"engine/{instance_id}", namespace=self._kv_namespace
        )
        if raw is None:
            return None
        found: dict[str, Any] = json.loads(raw)
        return found

    async def _put(self, instance_id: str, record: dict[str, Any]) -> None:
        await self._ray()
        await asyncio.to_thread(
            self._kv()._internal_kv_put,
            f"engine/{instance_id}",
            json.dumps(record),
            True,
            namespace=self._kv_namespace,
        )

    async def _delete(self, instance_id: str) -> None:
        await self._ray()
        await asyncio.to_thread(
            self._kv()._internal_kv_del, f"engine/{instance_id}", namespace=self._kv_namespace
        )

    async def _recorded(self) -> builtins.list[str]:
        await self._ray()
        keys = await asyncio.to_thread(
            self._kv()._internal_kv_list, "engine/", namespace=self._kv_namespace
        )
        # Ray 2.52 may return keys with (part of) their namespace in front.
        return [k.decode().partition("engine/")[2] for k in keys]

    # -- nodes ----------------------------------------------------------------------------------

    async def on_every_node(self, function: Callable[..., Any], *args: Any) -> builtins.list[Any]:
        """``function(*args)`` on every live engine node (a task pinned there), their results."""
        ray = await self._ray()
        nodes = [
            n
            for n in await asyncio.to_thread(ray.nodes)
            if n.get("Alive") and _resources(n).get(ENGINE_RESOURCE, 0) >= 1
        ]
        return list(
            await asyncio.gather(*(self._on_node(n["NodeID"], function, *args) for n in nodes))
        )

    async def _on_node(self, node_id: str, function: Callable[..., Any], *args: Any) -> Any:
        ray = await self._ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = self._remote.get(function.__name__)
        if task is None:
            task = self._remote[function.__name__] = ray.remote(num_cpus=0)(function)
        ref = task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
        ).remote(*args)
        async with asyncio.timeout(NODE_TASK_TIMEOUT_S):
            return await ref

    async def _node_gpus(self, node: dict[str, Any]) -> tuple[builtins.list[GpuDevice], str]:
        node_id: str = node["NodeID"]
        labels = _labels(node)
        pool = labels.get("pool")
        rank = int(labels["pool_rank"]) if labels.get("pool_rank", "").isdigit() else None
        try:
            found: GpuDiscovery = await self._on_node(node_id, on_node.discover_here)
        except Exception as exc:  # a node that cannot answer is reported, not fatal
            found = GpuDiscovery((), f"NVML not asked: {exc}")
        devices = [
            GpuDevice(d.id, node_id, d.index, d.model, d.memory_gib, pool=pool, pool_rank=rank)
            for d in found.devices
        ]
        if devices:
            return devices, f"node {node_id[:12]}: {found.note}"
        count = int(float(_resources(node).get("GPU", 0)))
        memory = float(labels.get("gpu-memory-gib", "0") or 0)
        model = labels.get("gpu-type", "gpu")
        devices = [
            GpuDevice(
                f"{node_id[:12]}-gpu{i}", node_id, i, model, memory, pool=pool, pool_rank=rank
            )
            for i in range(count)
        ]
        return devices, (
            f"node {node_id[:12]}: {count} GPU(s) as Ray counts them ({found.note}; model from "
            "its gpu-type label, memory from gpu-memory-gib)"
        )

    # -- the connection -------------------------------------------------------------------------

    async def _ray(self) -> Any:
        import ray

        if not self._connected:
            async with self._connecting:
                if not ray.is_initialized():
                    # Ray's coming default, which it warns about otherwise: an actor of no GPUs
                    # keeps the CUDA_VISIBLE_DEVICES it inherits (the engine's own is set anyway).
                    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
                    await asyncio.to_thread(
                        ray.init,
                        address=self._address or "auto",
                        namespace=self._namespace,
                        log_to_driver=False,
                        logging_level=logging.WARNING,
                    )
                    self._owns_connection = True
                self._connected = True
        return ray

    async def _remote_class(self) -> Any:
        ray = await self._ray()
        cls = self._remote.get("EngineSupervisor")
        if cls is None:
            cls = self._remote["EngineSupervisor"] = ray.remote(on_node.EngineSupervisor)
        return cls


class _SupervisorGone(Exception):
    """The engine's actor died during a call."""


def _resources(node: dict[str, Any]) -> dict[str, float]:
    found: dict[str, float] = node.get("Resources", {})
    return found


def _labels(node: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = node.get("Labels", {}) or {}
    return found


def _stopped(instance_id: str, record: dict[str, Any]) -> Workload:
    return Workload(
        instance_id,
        Phase.ABSENT,
        exited_at=record.get("exited_at"),
        labels=dict(record.get("labels") or {}),
    )
