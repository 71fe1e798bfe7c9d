"""Build a runtime :class:`LaunchSpec` from a template (pure)."""

from __future__ import annotations

from aigc_gateway.catalog.loader import expand
from aigc_gateway.catalog.schema import Template
from aigc_gateway.runtime.base import (
    EngineResources,
    GpuGrant,
    LaunchSpec,
    ReadinessCheck,
    ReadinessKind,
)


def launch_spec(
    *,
    instance_id: str,
    template: Template,
    data_dir: str,
    log_max_bytes: int,
    labels: dict[str, str],
    gpu: GpuGrant | None = None,
    default_grace_s: float = 10.0,
) -> LaunchSpec:
    """The spec for one start; ``default_grace_s`` (the gateway's setting) applies when the
    template names no ``stop_grace_s`` of its own."""
    launch = template.launch
    env = {k: expand(v, template) for k, v in launch.env.items()}
    if template.storage.data_env:
        env[template.storage.data_env] = data_dir
    ready = template.readiness
    readiness = (
        ReadinessCheck(kind=ReadinessKind.TCP, timeout_s=ready.timeout_s)
        if ready.tcp
        else ReadinessCheck(
            kind=ReadinessKind.HTTP, path=ready.http or "/", timeout_s=ready.timeout_s
        )
    )
    return LaunchSpec(
        instance_id=instance_id,
        command=tuple(expand(a, template) for a in launch.command),
        data_dir=data_dir,
        env=env,
        working_dir=expand(launch.working_dir, template),
        port=launch.port,
        port_env=launch.port_env,
        readiness=readiness,
        stop_grace_s=default_grace_s if launch.stop_grace_s is None else launch.stop_grace_s,
        log_max_bytes=log_max_bytes,
        labels=labels,
        gpu=gpu,
        resources=EngineResources(
            cpu=template.resources.cpu,
            memory_mib=round(template.resources.memory_gib * 1024),
        ),
        read_only_paths=(launch.install_dir,) if launch.install_dir else (),
        network=launch.network,
    )
