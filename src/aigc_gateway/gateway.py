"""The gateway's parts, wired together: what the app's lifespan opens and request handlers use."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import httpx
from itsdangerous import URLSafeTimedSerializer

from aigc_gateway.accounting.core import MissingPrice, PriceBook, ResourceUse, load_pricebook
from aigc_gateway.accounting.services.budgets import Budgets
from aigc_gateway.accounting.services.reports import UsageReports
from aigc_gateway.auth.core.oidc import OidcClient, OidcConfig
from aigc_gateway.auth.core.principal import Principal, Via
from aigc_gateway.auth.services.access_cache import AccessCache, Allowed
from aigc_gateway.auth.services.accounts import AccountService
from aigc_gateway.auth.services.admin import AdminService
from aigc_gateway.auth.services.instance_access import InstanceAccess
from aigc_gateway.auth.services.proxy_access import ProxyAccess
from aigc_gateway.catalog.registry import TemplateRegistry
from aigc_gateway.domain.clock import Clock, wall_clock
from aigc_gateway.errors import UserError
from aigc_gateway.gpu.broker import GpuBroker
from aigc_gateway.gpu.inventory import build_inventory
from aigc_gateway.gpu.usage import GpuUsage
from aigc_gateway.lifecycle.cluster import Cluster
from aigc_gateway.lifecycle.controller import Controller
from aigc_gateway.lifecycle.events import EventHub
from aigc_gateway.lifecycle.guard import Sleep
from aigc_gateway.lifecycle.routes import RouteTable
from aigc_gateway.lifecycle.service import Action, InstanceService
from aigc_gateway.metrics.prometheus import PrometheusMetrics
from aigc_gateway.proxy.ports import ProxyPorts, ProxySettings
from aigc_gateway.runtime.base import Isolation, Runtime
from aigc_gateway.runtime.connect import EngineSessions
from aigc_gateway.runtime.relay import KEY_FILE, RelayKey
from aigc_gateway.settings import Settings, signing_secret
from aigc_gateway.storage.files import FileService
from aigc_gateway.store.db import Database
from aigc_gateway.store.leases import new_holder
from aigc_gateway.store.notices import notices_for

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
    upstream: EngineSessions
    """The ASGI proxy's pooled connections to engines, per endpoint."""
    relay_key: RelayKey
    """The cluster's node relay key (``<runtime_dir>/relay.key``): the one credential the
    connectors to engines on other nodes present (the connection-level proxy's pool is given it
    by the app)."""
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
    files: FileService
    """Users' data folders: listing, upload, download, delete, usage against quota."""
    reports: UsageReports
    """Usage and cost reports from the ledger."""
    cluster: Cluster
    """This process among the gateways sharing the store: its leases and notices."""
    clock: Clock
    """Domain time: the one "now" of the ledger, the spending limits and the reports (the
    controller's and the budgets' clock are this same function)."""
    proxy: ProxyPorts
    """The narrow view of these parts the instance proxy is given (it never sees the rest)."""

    async def close(self) -> None:
        await self.controller.close()
        await self.runtime.close()
        await self.http.aclose()
        await self.upstream.close()
        await self.db.close()


class _Waker:
    """The proxy's ``Waker`` port: wake-on-request resumes through the instance service, as the
    user the instance cookie or session belongs to."""

    def __init__(self, instances: InstanceService) -> None:
        self._instances = instances

    async def resume(self, who: Allowed, instance_id: str) -> str:
        principal = Principal(
            user_id=who.user_id,
            name=who.user_name,
            is_admin=who.is_admin,
            team_ids=who.team_ids,
            via=Via.INSTANCE_COOKIE,
        )
        return (await self._instances.act(principal, instance_id, Action.RESUME)).state


def unpriced_gpu_types(pricebook: PriceBook, types: set[str], now: datetime) -> list[str]:
    """GPU types of the inventory the price book has no price for at ``now`` (they would bill
    0)."""
    problems = []
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


def make_runtime(settings: Settings) -> Runtime:
    """The runtime ``settings.runtime`` names, from the ``aigc_gateway.runtimes`` entry points
    (see :mod:`aigc_gateway.runtime.plugins`)."""
    from aigc_gateway.runtime import plugins

    runtime = plugins.load(settings.runtime)(settings)
    if not isinstance(runtime, Runtime):
        raise UserError(
            f"runtime {settings.runtime!r}: its factory returned {type(runtime).__name__}, "
            "which does not implement the Runtime interface (aigc_gateway.runtime.base)",
            code="invalid_settings",
        )
    return runtime


def choose_isolation(settings: Settings) -> Isolation:
    """What the local runtime would do on this host under the ``sandbox`` setting (for
    ``doctor``, which starts no runtime)."""
    from aigc_gateway.runtime.plugins import local_isolation

    return local_isolation(settings)


def isolation_of(runtime: Runtime) -> Isolation:
    """What ``runtime`` says of its engines' isolation; a runtime that does not say is taken
    not to isolate them."""
    said = getattr(runtime, "isolation", None)
    if isinstance(said, Isolation):
        return said
    name = getattr(runtime, "name", type(runtime).__name__)
    return Isolation(
        sandboxed=False,
        detail=f"the {name!r} runtime does not report a sandbox",
        warning=f"engines are NOT isolated from each other or from the gateway "
        f"(the {name!r} runtime does not report a sandbox)",
    )


async def open_gateway(
    settings: Settings,
    *,
    ledger_clock: Callable[[], datetime] | None = None,
    runtime: Runtime | None = None,
    sleep: Sleep | None = None,
    migrate: bool = True,
) -> Gateway:
    """Open every part. Tests replace some: ``ledger_clock`` the time the usage ledger
    records, ``runtime`` the one the settings pick (a fake for a failure mode), ``sleep`` how the
    controller's loops wait (fake time). ``migrate`` False: this start has migrated the store
    already (``serve`` runs ``bootstrap`` first), so it is not done twice."""
    # Domain time first: every part that reads "now" for the ledger, limits or reports is given
    # this one clock (a test's fake, or the wall clock).
    clock: Clock = ledger_clock or wall_clock
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.sqlalchemy_url)
    if migrate:
        await db.migrate()
    registry = TemplateRegistry(settings.templates_dir, db)
    await registry.reload()
    # Before the runtime: a runtime of several nodes gives its relays this same file's key.
    relay_key = RelayKey.load_or_create(settings.runtime_dir / KEY_FILE)
    log.info(
        "node relay key: %s (fingerprint %s)",
        settings.runtime_dir / KEY_FILE,
        relay_key.fingerprint,
    )
    runtime = runtime or make_runtime(settings)
    isolation = isolation_of(runtime)
    if isolation.warning:
        log.warning("%s", isolation.warning)
    hub = EventHub()
    holder = new_holder()
    cluster = Cluster(
        db, lease_ttl_s=settings.lease_ttl_s, notices=notices_for(db.url, holder), holder=holder
    )
    discovery = await runtime.gpus() if settings.gpu_discovery else None
    inventory, gpu_note = build_inventory(settings, discovery)
    gpus = GpuBroker(inventory.gpus, gpu_note)
    pricebook = load_pricebook(settings.pricebook) if settings.pricebook else PriceBook.default()
    for problem in unpriced_gpu_types(pricebook, {g.type for g in inventory.gpus}, clock()):
        log.warning("price book: %s", problem)
    budgets = Budgets(db, pricebook, clock=clock)
    # The route table, made before its users: the controller is its one writer (the instance
    # service asks it to, through route_changed); the metrics (at each scrape) and the proxy
    # only read it.
    routes = RouteTable()
    metrics = PrometheusMetrics(routes=routes.all, gpus=gpus, templates=registry, db=db)
    controller = Controller(
        db=db,
        runtime=runtime,
        registry=registry,
        hub=hub,
        resync_interval_s=settings.reconcile_interval_s,
        log_max_bytes=settings.log_max_bytes,
        stop_grace_s=settings.stop_grace_s,
        launch_timeout_s=settings.launch_timeout_s,
        storage_check_s=settings.storage_check_s,
        gpus=gpus,
        pricebook=pricebook,
        over_budget=budgets.over_hard_to_pause,
        clock=clock,
        metrics=metrics,
        sleep=sleep,
        cluster=cluster,
        routes=routes,
    )
    access_cache = AccessCache(ttl_s=settings.access_cache_ttl_s)
    # Access changed here: drop the decisions cached here, and tell the other processes.
    cluster.on("access", lambda _: access_cache.clear())

    def access_changed() -> None:
        access_cache.clear()
        cluster.announce("access")

    service = InstanceService(
        db=db,
        registry=registry,
        controller=controller,
        runtime=runtime,
        default_limit=settings.max_instances_per_user,
        on_access_change=access_changed,
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
    accounts = AccountService(db=db, settings=settings, on_access_change=access_changed)
    instance_access = InstanceAccess(db=db, settings=settings)
    upstream = EngineSessions(relay_key=relay_key)
    proxy = ProxyPorts(
        settings=ProxySettings.of(settings),
        routes=routes,
        templates=registry,
        access=ProxyAccess(
            db=db, cache=access_cache, accounts=accounts, instance_access=instance_access
        ),
        activity=controller.activity,
        metrics=metrics,
        upstream=upstream,
        waker=_Waker(service),
    )
    return Gateway(
        settings=settings,
        db=db,
        runtime=runtime,
        registry=registry,
        hub=hub,
        controller=controller,
        instances=service,
        accounts=accounts,
        admin=AdminService(db=db, on_access_change=access_changed),
        instance_access=instance_access,
        signer=URLSafeTimedSerializer(signing_secret(settings), salt="aigc-gateway"),
        oidc=oidc,
        http=http,
        upstream=upstream,
        relay_key=relay_key,
        access_cache=access_cache,
        gpus=gpus,
        budgets=budgets,
        pricebook=pricebook,
        gpu_usage=GpuUsage(),
        metrics=metrics,
        isolation=isolation,
        files=FileService(db=db, registry=registry, volumes=runtime.volumes),
        reports=UsageReports(db=db, pricebook=pricebook),
        cluster=cluster,
        clock=clock,
        proxy=proxy,
    )
