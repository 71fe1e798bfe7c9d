"""The Ray runtime's volumes: node-local folders, one per user and family on each node.

A volume's :meth:`~RayVolumes.mount` is ``{node_dir}/volumes/<owner>/<family>``: the node that
runs the engine fills in its own folder (:data:`~.node.NODE_DIR`), so the data is on the disk of
whichever node the engine was placed on. Data does **not** follow the user yet: an instance
placed on another node than last time starts with an empty volume there (docs/ray.md says what
that still needs). ``size`` and ``delete`` therefore go to every engine node (a task pinned on
each) and sum, or remove, what each holds. Quotas are measured only (no node caps a volume yet),
and there is no local file access (:meth:`root` raises ``NotSupported``: the files API would go
through the node).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aigc_gateway.runtime.base import NotSupported
from aigc_gateway.runtime.ray import node as on_node
from aigc_gateway.runtime.volumes import LocalVolumes, VolumeRoot

if TYPE_CHECKING:
    from aigc_gateway.runtime.ray.runtime import RayRuntime

__all__ = ["RayVolumes"]

_NAMES = LocalVolumes(on_node.NODE_DIR)  # type: ignore[arg-type]
"""Only to check owner and family names the way every node's folders do."""


class RayVolumes:
    """See the module docstring."""

    def __init__(self, runtime: RayRuntime) -> None:
        self._runtime = runtime

    def mount(self, owner: str, family: str) -> str:
        _NAMES.mount(owner, family)  # refuses a name that is no folder name
        return f"{on_node.NODE_DIR}/volumes/{owner}/{family}"

    async def create(self, owner: str, family: str, quota_bytes: int | None = None) -> str:
        # The node that runs the engine makes the folder as it starts it.
        return self.mount(owner, family)

    def enforced(self, owner: str, family: str) -> bool:
        return False

    async def size(self, owner: str, family: str) -> int:
        self.mount(owner, family)
        sizes = await self._runtime.on_every_node(
            on_node.size_volume_here, self._runtime.node_config, owner, family
        )
        return sum(sizes)

    async def delete(self, owner: str, family: str) -> None:
        self.mount(owner, family)
        await self._runtime.on_every_node(
            on_node.delete_volume_here, self._runtime.node_config, owner, family
        )

    async def snapshot(self, owner: str, family: str, name: str) -> None:
        raise NotSupported("the Ray runtime cannot snapshot volumes yet")

    def root(self, owner: str, family: str) -> VolumeRoot:
        raise NotSupported("a Ray node's volumes are not on the gateway's host")
