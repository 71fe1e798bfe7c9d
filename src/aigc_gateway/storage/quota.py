"""Storage quotas: what an engine writes into its volume counts against its family's quota.

The quota of a family is the largest ``storage.quota_gib`` of the templates of that family (the
default where no loaded template names it). Usage is measured, never estimated: the volume's
size as the runtime reports it (``Volumes.size``: files only, links not followed). Where the
runtime's storage can cap a volume (the local runtime on btrfs with quotas enabled: each
volume a subvolume with a qgroup limit, see :class:`~aigc_gateway.runtime.volumes.LocalVolumes`),
each start sets the cap to the family's quota and a write past it fails in the engine ("Disk
quota exceeded"). Elsewhere a running engine can write past its quota; what the quota then
does, and never more:

- at :data:`WARN_AT` (90 %) and above, the user is warned: an instance event (at a start, and
  when the periodic check sees a running instance's family cross it), and a notice on the
  dashboard's home and files pages;
- at 100 % and above, new starts (create, start, resume, restart) are refused with 409
  ``storage_quota_exceeded``, naming the family, its usage and quota, and what to do;
- data is never deleted, and a running engine is not stopped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aigc_gateway.catalog.registry import TemplateRegistry
from aigc_gateway.catalog.schema import Storage
from aigc_gateway.errors import Conflict
from aigc_gateway.runtime.volumes import Volumes

__all__ = ["WARN_AT", "Level", "QuotaWatch", "StorageQuotas", "StorageUse", "family_quotas"]

GIB = 1024**3
WARN_AT = 0.9
"""The share of its quota a family's usage is warned at."""


class Level(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    """At or above :data:`WARN_AT` of the quota."""
    OVER = "over"
    """At or above the quota: new starts are refused."""


@dataclass(frozen=True, slots=True)
class StorageUse:
    family: str
    used_bytes: int
    quota_bytes: int

    @property
    def percent(self) -> int:
        return int(100 * self.used_bytes / self.quota_bytes) if self.quota_bytes else 0

    @property
    def level(self) -> Level:
        if self.used_bytes >= self.quota_bytes:
            return Level.OVER
        if self.used_bytes >= WARN_AT * self.quota_bytes:
            return Level.WARN
        return Level.OK

    def describe(self) -> str:
        return (
            f"the {self.family} data folder uses {_gib(self.used_bytes)} of its "
            f"{_gib(self.quota_bytes)} quota ({self.percent} %)"
        )

    def warning(self) -> str:
        """What the user reads at :attr:`Level.WARN` (or over)."""
        if self.level is Level.OVER:
            return (
                f"storage quota reached: {self.describe()}; new starts are refused until you "
                f"free space in Files (/files/{self.family}). Nothing is deleted"
            )
        return (
            f"storage warning: {self.describe()}; at 100 % new starts are refused. Free space "
            f"in Files (/files/{self.family})"
        )

    def refusal(self) -> Conflict:
        return Conflict(
            f"storage quota exceeded: {self.describe()}. New starts of its instances are refused "
            f"until it is below its quota: delete files you no longer need in Files "
            f"(/files/{self.family}), or ask an administrator for a larger quota. "
            "Nothing was deleted.",
            code="storage_quota_exceeded",
        )


def family_quotas(registry: TemplateRegistry) -> dict[str, float]:
    """Largest ``storage.quota_gib`` among the loaded templates of each family."""
    quotas: dict[str, float] = {}
    for loaded in registry.catalog.templates.values():
        t = loaded.template
        quotas[t.family] = max(quotas.get(t.family, 0.0), t.storage.quota_gib)
    return quotas


class StorageQuotas:
    """Measures a family's volume against its quota (see the module docstring)."""

    def __init__(self, *, registry: TemplateRegistry, volumes: Volumes) -> None:
        self._registry = registry
        self._volumes = volumes

    def quota_bytes(self, family: str) -> int:
        return int(family_quotas(self._registry).get(family, Storage().quota_gib) * GIB)

    async def use(self, owner: str, family: str) -> StorageUse:
        used = await self._volumes.size(owner, family)
        return StorageUse(family, used, self.quota_bytes(family))

    async def check_start(self, owner: str, family: str) -> StorageUse:
        """Refuse a start over quota (:class:`Conflict` ``storage_quota_exceeded``); return the
        usage otherwise (the caller warns at :attr:`Level.WARN`)."""
        use = await self.use(owner, family)
        if use.level is Level.OVER:
            raise use.refusal()
        return use


_ORDER = (Level.OK, Level.WARN, Level.OVER)


class QuotaWatch:
    """Remembers the level each volume was last seen at, to warn on a rise only."""

    def __init__(self, quotas: StorageQuotas) -> None:
        self._quotas = quotas
        self._levels: dict[tuple[str, str], Level] = {}

    async def rises(self, volumes: set[tuple[str, str]]) -> dict[tuple[str, str], StorageUse]:
        """Measure each ``(owner, family)``; those whose level rose to warn or over since the
        last look, with their usage."""
        risen = {}
        for key in sorted(volumes):
            use = await self._quotas.use(*key)
            before = self._levels.get(key, Level.OK)
            self._levels[key] = use.level
            if _ORDER.index(use.level) > _ORDER.index(before):
                risen[key] = use
        return risen


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"
