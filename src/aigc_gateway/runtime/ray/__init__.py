"""``runtime: ray``: engines on the nodes of a Ray cluster (docs/ray.md).

Importing this package imports no Ray: :func:`make_runtime` builds the runtime (Ray is imported
on its first call), so the gateway works without Ray installed unless this runtime is chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aigc_gateway.runtime.base import Runtime
    from aigc_gateway.settings import Settings

__all__ = ["make_runtime"]


def make_runtime(settings: Settings) -> Runtime:
    """The Ray runtime for these settings (the ``ray`` entry point)."""
    import importlib.util

    from aigc_gateway.errors import UserError

    if importlib.util.find_spec("ray") is None:
        raise UserError(
            "runtime: ray needs Ray: pip install 'aigc-gateway[ray]' (Ray 2.52.1)",
            code="invalid_settings",
        )
    from aigc_gateway.runtime.ray.node import NodeConfig
    from aigc_gateway.runtime.ray.runtime import RayRuntime
    from aigc_gateway.runtime.relay import KEY_FILE, RelayKey

    node_dir = settings.ray_node_dir or str(settings.data_dir.resolve() / "ray-nodes" / "{node}")
    config = NodeConfig(
        node_dir=node_dir,
        sandbox=settings.sandbox,
        dev=settings.dev,
        sandbox_uid_range=settings.sandbox_uid_range,
        sandbox_pids_max=settings.sandbox_pids_max,
        sandbox_tmp_mib=settings.sandbox_tmp_mib,
        sandbox_outbound_allow=tuple(settings.sandbox_outbound_allow),
        mps_control=settings.mps_control,
    )
    return RayRuntime(
        config=config,
        address=settings.ray_address,
        namespace=settings.ray_namespace,
        schedule_timeout_s=settings.launch_timeout_s,
        # The gateway loads (or makes) this same file for its connectors before the runtime.
        relay_key=RelayKey.load_or_create(settings.runtime_dir / KEY_FILE),
        relay_port=settings.ray_relay_port,
    )
