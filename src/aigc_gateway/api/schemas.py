"""Request and response schemas: one per action, never the table rows themselves."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from aigc_gateway.catalog.loader import LoadedTemplate, TemplateProblem
from aigc_gateway.dashboard.ui import icons
from aigc_gateway.domain.actions import allowed_actions
from aigc_gateway.domain.instances import InstanceView
from aigc_gateway.domain.states import DesiredState, InstanceState
from aigc_gateway.gpu.broker import GpuBroker
from aigc_gateway.runtime.base import Endpoint
from aigc_gateway.settings import Settings


class InstanceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: str = Field(description="template id, from GET /api/templates")
    name: str | None = Field(default=None, description="unique per user; default: the family name")
    request_id: str | None = Field(
        default=None, max_length=128, description="client-chosen id that makes retries safe"
    )


class GpuHeld(BaseModel):
    gpu_ids: list[str]
    types: list[str]
    pools: list[str]
    share_gib: float | None
    """For a memory share: its size; None for whole GPUs."""
    placement: str
    """Why these GPUs were chosen."""
    memory_used_mib: int | None
    """GPU memory the engine holds now, read from NVML (None where unknown)."""


class QueuePlace(BaseModel):
    position: int
    length: int
    priority: int
    since: datetime
    estimate_s: float | None
    """Expected wait from the release history (None: no history yet)."""


class InstancePublic(BaseModel):
    id: str
    name: str
    slug: str
    owner_id: str
    template_id: str
    family: str
    state: str
    desired_state: str
    reason: str
    exit_code: int | None
    engine_url: str | None
    """The engine's own address on the gateway host, for an engine reached over TCP: for
    administrators only (None for anyone else, and while the engine is not running)."""
    engine_endpoint: str | None = None
    """How the gateway reaches the engine (``unix:/path`` or ``host:port``): for administrators
    only, like ``engine_url``."""
    url: str
    """Where users open the instance: its own host, through the gateway."""
    last_activity_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ready_at: datetime | None
    gpu: GpuHeld | None = None
    queue: QueuePlace | None = None
    actions: list[str] = Field(default_factory=list)
    """What the state allows now, in page order (``open``, ``resume``, ``pause``,
    ``leave_queue``, ``restart``, ``delete``); others answer 409 ``action_not_allowed``. Only
    the owner or an admin may delete a shared instance."""

    @classmethod
    def of(
        cls,
        inst: InstanceView,
        settings: Settings,
        gpus: GpuBroker | None = None,
        memory_by_session: dict[int, int] | None = None,
        *,
        internal: bool = False,
    ) -> InstancePublic:
        """The instance as its viewer sees it; ``internal`` (administrators only) adds the
        engine's own address, which users never need (they open ``url``)."""
        running = internal and inst.state == "running" and inst.endpoint
        endpoint = Endpoint.parse(inst.endpoint) if running and inst.endpoint else None
        gpu = queue = None
        if inst.gpu_ids:
            known = [g for g in (gpus.gpu(i) for i in inst.gpu_ids) if g] if gpus else []
            used = (memory_by_session or {}).get(inst.pid) if inst.pid else None
            gpu = GpuHeld(
                gpu_ids=list(inst.gpu_ids),
                types=sorted({g.type for g in known}),
                pools=sorted({g.pool for g in known}),
                share_gib=inst.gpu_memory_gib,
                placement=inst.placement or "",
                memory_used_mib=None if used is None else used // 2**20,
            )
        info = gpus.queue_info(inst.id) if gpus and inst.state == "queued" else None
        if info is not None:
            queue = QueuePlace(
                position=info.position,
                length=info.length,
                priority=info.priority,
                since=datetime.fromtimestamp(info.since, UTC),
                estimate_s=info.estimate_s,
            )
        return cls(
            id=inst.id,
            name=inst.name,
            slug=inst.slug,
            owner_id=inst.owner_id,
            template_id=inst.template_id,
            family=inst.family,
            state=inst.state,
            desired_state=inst.desired_state,
            reason=inst.reason,
            exit_code=inst.exit_code,
            engine_url=f"http://{endpoint.describe}"
            if endpoint and endpoint.is_direct_tcp
            else None,
            engine_endpoint=endpoint.describe if endpoint else None,
            url=settings.instance_url(inst.slug),
            last_activity_at=inst.last_activity_at,
            created_at=inst.created_at,
            updated_at=inst.updated_at,
            started_at=inst.started_at,
            ready_at=inst.ready_at,
            gpu=gpu,
            queue=queue,
            actions=list(instance_actions(inst)),
        )


def instance_actions(inst: InstanceView) -> tuple[str, ...]:
    """The actions :func:`~aigc_gateway.domain.actions.allowed_actions` offers for ``inst``."""
    offered = allowed_actions(
        state=InstanceState(inst.state),
        desired=DesiredState(inst.desired_state),
        restart_pending=inst.generation > inst.launched_generation,
    )
    return tuple(a.value for a in offered)


class TemplatePublic(BaseModel):
    id: str
    family: str
    version: str
    name: dict[str, str]
    description: dict[str, str]
    icon: str
    """The icon's name (see ``icon_url``)."""
    icon_url: str
    """Where the gateway serves the icon (an SVG)."""
    installed: bool
    install_problem: str
    resources: dict[str, Any]
    source: str

    @classmethod
    def of(cls, loaded: LoadedTemplate) -> TemplatePublic:
        t = loaded.template
        desc = t.display.description
        return cls(
            id=t.id,
            family=t.family,
            version=t.version,
            name={"en": t.display.name.get("en"), "zh-CN": t.display.name.get("zh-CN")},
            description={"en": desc.get("en"), "zh-CN": desc.get("zh-CN")} if desc else {},
            icon=icons.icon_name(t.display.icon, t.family),
            icon_url=icons.icon_url(t.display.icon, t.family),
            installed=loaded.installed,
            install_problem=loaded.install_problem,
            resources=t.resources.model_dump(mode="json"),
            source=loaded.source,
        )


class ProblemPublic(BaseModel):
    file: str
    field: str
    message: str

    @classmethod
    def of(cls, p: TemplateProblem) -> ProblemPublic:
        return cls(file=p.file, field=p.field, message=p.message)


class TemplateList(BaseModel):
    templates: list[TemplatePublic]
    problems: list[ProblemPublic]


class Me(BaseModel):
    id: str
    name: str
    is_admin: bool
    scopes: list[str]
