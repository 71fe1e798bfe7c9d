"""The gateway's parts, wired together: what the app's lifespan opens and request handlers use."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import httpx
from itsdangerous import URLSafeTimedSerializer

from aigc_gateway.accounting import MissingPrice, PriceBook, ResourceUse, load_pricebook
from aigc_gateway.accounts.access_cache import AccessCache
from aigc_gateway.accounts.admin import AdminService
from aigc_gateway.accounts.instance_access import InstanceAccess
from aigc_gateway.accounts.service import AccountService
from aigc_gateway.auth.oidc import OidcClient, OidcConfig
from aigc_gateway.gpu.inventory import build_inventory
from aigc_gateway.gpu.usage import GpuUsage
from aigc_gateway.lifecycle.budgets import Budgets
from aigc_gateway.lifecycle.controller import Controller
from aigc_gateway.lifecycle.events import EventHub
from aigc_gateway.lifecycle.gpus import GpuBroker
from aigc_gateway.lifecycle.guard import Sleep
from aigc_gateway.lifecycle.service import InstanceService
from aigc_gateway.metrics.prometheus import PrometheusMetrics
from aigc_gateway.runtime.base import Runtime
from aigc_gateway.settings import Settings, signing_secret
from aigc_gateway.store.db import Database
from aigc_gateway.templates.registry import TemplateRegistry

log = logging.getLogger(__name__)


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
    accounts: AccountService
    admin: AdminService
    instance_access: InstanceAccess
    signer: URLSafeTimedSerializer
    """Signs short-lived browser state (the OIDC login round trip)."""
    oidc: OidcClient | None
    http: httpx.AsyncClient
    """Outgoing HTTP (the sign-in provider)."""
    upstream: aiohttp.ClientSession
    """The proxy's pooled connections to engines."""
    access_cache: AccessCache
    gpus: GpuBroker
    """The GPU inventory, its allocations and queue (owned by the controller)."""
    budgets: Budgets
    pricebook: PriceBook
    gpu_usage: GpuUsage
    """GPU memory each engine holds, from NVML."""
    metrics: PrometheusMetrics
    """What ``/metrics`` exposes; the proxy and the controller report to it."""
    isolation: Isolation
    """Whether engines are sandboxed here (the Health page and ``/healthz`` say it)."""

    async def close(self) -> None:
        await self.controller.close()
        await self.runtime.close()
        await self.http.aclose()
        await self.upstream.close()
        await self.db.close()


def unpriced_gpu_types(pricebook: PriceBook, types: set[str]) -> list[str]:
    """GPU types of the inventory the price book has no price for (they would bill 0)."""
    problems = []
    now = datetime.now(UTC)
    for gpu_type in sorted(types):
        for use in (
            ResourceUse(kind="gpu", gpu_type=gpu_type, gpu_count=1),
            ResourceUse(kind="gpu_share", gpu_type=gpu_type, memory_gib=1),
        ):
            try:
                pricebook.hourly_rate(use, now)
            except MissingPrice as exc:
                problems.append(exc.message)
    return problems


@dataclass(frozen=True, slots=True)
class Isolation:
    """Whether engines run sandboxed here, as every surface (log, doctor, Health, /healthz)
    reports it."""

    sandboxed: bool
    detail: str
    """What the sandbox uses, or what is missing."""
    warning: str | None = None
    """Set when engines are not isolated: "engines are NOT isolated ..." and why."""
    refusal: str | None = None
    """Set when engine starts are refused (the host cannot sandbox, and the settings do not
    allow engines without)."""


def choose_isolation(settings: Settings) -> Isolation:
    """Look at this host and apply the ``sandbox`` setting (see its docs)."""
    from aigc_gateway.runtime.local_sandbox import SandboxMode, choose
    from aigc_gateway.runtime.sandbox.detect import probe

    support = probe()
    decision = choose(SandboxMode(settings.sandbox), support, dev=settings.dev)
    return Isolation(decision.sandboxed, support.describe(), decision.warning, decision.refusal)


def make_runtime(settings: Settings, isolation: Isolation | None = None) -> Runtime:
    from aigc_gateway.runtime.local import LocalRuntime
    from aigc_gateway.runtime.mps import MpsControl, mps_root_for
    from aigc_gateway.runtime.sandbox.detect import probe
    from aigc_gateway.runtime.sandbox.launch import Sandbox, SandboxConfig
    from aigc_gateway.runtime.sandbox.uids import parse_range

    isolation = isolation or choose_isolation(settings)
    settings.runtime_dir.mkdir(parents=True, exist_ok=True)
    mps = MpsControl(mps_root_for(settings.runtime_dir), command=settings.mps_control)
    sandbox = None
    if isolation.sandboxed:
        config = SandboxConfig(
            uid_range=parse_range(settings.sandbox_uid_range),
            pids_max=settings.sandbox_pids_max,
            tmp_bytes=settings.sandbox_tmp_mib << 20,
            shm_bytes=settings.sandbox_tmp_mib << 20,
            hidden=(str(settings.data_dir.resolve()),),
        )
        sandbox = Sandbox(config, probe(), state_dir=settings.runtime_dir)
    return LocalRuntime(
        state_dir=settings.runtime_dir, mps=mps, sandbox=sandbox, refusal=isolation.refusal
    )


async def open_gateway(
    settings: Settings,
    *,
    ledger_clock: Callable[[], datetime] | None = None,
    runtime: Runtime | None = None,
    sleep: Sleep | None = None,
) -> Gateway:
    """Open every part. Tests replace some: ``ledger_clock`` the time the usage ledger
    records, ``runtime`` the one the settings pick (a fake for a failure mode), ``sleep`` how the
    controller's loops wait (fake time)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.sqlalchemy_url)
    await db.migrate()
    registry = TemplateRegistry(settings.templates_dir, db)
    await registry.reload()
    isolation = choose_isolation(settings)
    if isolation.warning:
        log.warning("%s", isolation.warning)
    runtime = runtime or make_runtime(settings, isolation)
    hub = EventHub()
    inventory, gpu_note = build_inventory(settings)
    gpus = GpuBroker(inventory.gpus, gpu_note)
    pricebook = load_pricebook(settings.pricebook) if settings.pricebook else PriceBook.default()
    # The budgets read time from the controller's clock (one clock for the ledger and limits).
    for problem in unpriced_gpu_types(pricebook, {g.type for g in inventory.gpus}):
        log.warning("price book: %s", problem)
    budgets = Budgets(db, pricebook, clock=lambda: controller.clock())
    # The metrics read the controller's route table at each scrape (the controller reports to them).
    metrics = PrometheusMetrics(
        routes=lambda: controller.routes.all(), gpus=gpus, templates=registry, db=db
    )
    controller = Controller(
        db=db,
        runtime=runtime,
        registry=registry,
        hub=hub,
        resync_interval_s=settings.reconcile_interval_s,
        log_max_bytes=settings.log_max_bytes,
        stop_grace_s=settings.stop_grace_s,
        gpus=gpus,
        pricebook=pricebook,
        over_budget=budgets.over_hard_to_pause,
        clock=ledger_clock,
        metrics=metrics,
        sleep=sleep,
    )
    access_cache = AccessCache(ttl_s=settings.access_cache_ttl_s)
    service = InstanceService(
        db=db,
        registry=registry,
        controller=controller,
        runtime=runtime,
        volumes_dir=settings.volumes_dir,
        default_limit=settings.max_instances_per_user,
        on_access_change=access_cache.clear,
        gpus=gpus,
        budgets=budgets,
        hub=hub,
    )
    http = httpx.AsyncClient(timeout=15, trust_env=False)
    oidc = None
    if settings.oidc_enabled:
        assert settings.oidc_issuer and settings.oidc_client_id and settings.oidc_client_secret
        oidc = OidcClient(
            OidcConfig(
                issuer=settings.oidc_issuer,
                client_id=settings.oidc_client_id,
                client_secret=settings.oidc_client_secret,
                scopes=settings.oidc_scopes,
                redirect_uri=settings.oidc_redirect_uri,
                post_logout_redirect_uri=settings.oidc_post_logout_redirect_uri,
                username_claim=settings.oidc_username_claim,
                groups_claim=settings.oidc_groups_claim,
                admin_group=settings.oidc_admin_group,
            ),
            http,
        )
    return Gateway(
        settings=settings,
        db=db,
        runtime=runtime,
        registry=registry,
        hub=hub,
        controller=controller,
        instances=service,
        accounts=AccountService(db=db, settings=settings, on_access_change=access_cache.clear),
        admin=AdminService(db=db, on_access_change=access_cache.clear),
        instance_access=InstanceAccess(db=db, settings=settings),
        signer=URLSafeTimedSerializer(signing_secret(settings), salt="aigc-gateway"),
        oidc=oidc,
        http=http,
        upstream=aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        ),
        access_cache=access_cache,
        gpus=gpus,
        budgets=budgets,
        pricebook=pricebook,
        gpu_usage=GpuUsage(),
        metrics=metrics,
        isolation=isolation,
    )
