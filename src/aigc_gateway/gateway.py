"""The gateway's parts, wired together: what the app's lifespan opens and request handlers use."""

from __future__ import annotations

from dataclasses import dataclass

from aigc_gateway.lifecycle.controller import Controller
from aigc_gateway.lifecycle.events import EventHub
from aigc_gateway.lifecycle.service import InstanceService
from aigc_gateway.runtime.base import Runtime
from aigc_gateway.settings import Settings
from aigc_gateway.store.db import Database
from aigc_gateway.templates.registry import TemplateRegistry


@dataclass(slots=True)
class Gateway:
    """Everything a request handler may use, built by the lifespan."""

    settings: Settings
    db: Database
    runtime: Runtime
    registry: TemplateRegistry
    hub: EventHub
    controller: Controller
    instances: InstanceService


def make_runtime(settings: Settings) -> Runtime:
    from aigc_gateway.runtime.local import LocalRuntime

    settings.runtime_dir.mkdir(parents=True, exist_ok=True)
    return LocalRuntime(state_dir=settings.runtime_dir)


async def open_gateway(settings: Settings) -> Gateway:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.sqlalchemy_url)
    await db.migrate()
    registry = TemplateRegistry(settings.templates_dir, db)
    await registry.reload()
    runtime = make_runtime(settings)
    hub = EventHub()
    controller = Controller(
        db=db,
        runtime=runtime,
        registry=registry,
        hub=hub,
        resync_interval_s=settings.reconcile_interval_s,
        log_max_bytes=settings.log_max_bytes,
        stop_grace_s=settings.stop_grace_s,
    )
    service = InstanceService(
        db=db,
        registry=registry,
        controller=controller,
        runtime=runtime,
        volumes_dir=settings.volumes_dir,
        default_limit=settings.max_instances_per_user,
    )
    return Gateway(settings, db, runtime, registry, hub, controller, service)
