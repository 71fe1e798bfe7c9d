"""The gateway's metrics in the Prometheus format, in a registry of each gateway's own.

Three sources, all exposed by :meth:`PrometheusMetrics.exposition`:

- instruments the proxy and the controller update as things happen (the :class:`Metrics` hooks,
  with label children bound ahead so a proxied request costs one counter increment and one
  histogram observation): proxied requests and their latency, engine start durations;
- gauges computed from memory at each scrape (:class:`StateCollector`): instances by state and
  template, GPUs and their allocations by pool and type, the GPU queue;
- counters summed from the usage ledger (:class:`LedgerTotals`): GPU-seconds and cost by team,
  read from the store at most once per ``ttl_s`` however many scrapers ask, and sooner when an
  instance changed state (which is when its ledger rows close).

Nothing is registered in ``prometheus_client``'s global registry: two gateways in one process
(tests) keep separate numbers, and importing this module creates nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select

from aigc_gateway.catalog.registry import TemplateRegistry
from aigc_gateway.domain.states import InstanceState
from aigc_gateway.gpu.broker import GpuBroker
from aigc_gateway.lifecycle.routes import Route
from aigc_gateway.metrics import Metrics, ProxyKind
from aigc_gateway.store.db import Database
from aigc_gateway.store.tables import Team, UsageInterval

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format, which every Prometheus version reads."""
PROXY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds; streams (SSE, downloads) that last longer land in ``+Inf``."""
START_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
"""Seconds; large models take minutes to load."""
JOB_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds; a resync or a storage measurement over many volumes takes a while."""
STATES = tuple(s.value for s in InstanceState if s is not InstanceState.DELETED)


def status_class(status: int) -> str:
    """``2xx`` for 200 and so on; ``none`` when the client left before any answer (0)."""
    return f"{status // 100}xx" if status else "none"


class PrometheusMetrics(Metrics):
    """The gateway's registry and instruments; the scrape-time collectors are registered in it."""

    def __init__(
        self,
        *,
        routes: Callable[[], Iterable[Route]],
        gpus: GpuBroker,
        templates: TemplateRegistry,
        db: Database,
        ledger_ttl_s: float = 5.0,
    ) -> None:
        self.registry = CollectorRegistry()
        self.proxy_requests = Counter(
            "aigc_proxy_requests",
            "Requests the proxy relayed to engines, by kind and the status class the client got "
            "(WebSockets: 1xx accepted, 5xx refused by the engine; none: the client left first).",
            ["kind", "status_class"],
            registry=self.registry,
        )
        self.proxy_seconds = Histogram(
            "aigc_proxy_request_duration_seconds",
            "From the proxy taking a request to its last byte sent (HTTP) or to the WebSocket "
            "being accepted or refused.",
            ["kind"],
            buckets=PROXY_BUCKETS,
            registry=self.registry,
        )
        self.start_seconds = Histogram(
            "aigc_instance_start_seconds",
            "From an engine's launch to its readiness, by template.",
            ["template"],
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self.job_failures = Counter(
            "aigc_duty_failures",
            "Failures of a background duty (the periodic controller jobs: resync, activity, idle, "
            "budget, storage, quota, leases; the template watch and reload); each is retried with "
            "back-off, independently of the others.",
            ["duty"],
            registry=self.registry,
        )
        self.job_steps = Counter(
            "aigc_duty_steps",
            "Steps of a background duty (the periodic controller jobs, the template watch and "
            "reload), failed ones included.",
            ["duty"],
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "aigc_duty_duration_seconds",
            "How long a step of a background duty took, failed ones included.",
            ["duty"],
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.job_last_success = Gauge(
            "aigc_duty_last_success_timestamp_seconds",
            "When a periodic controller job last ran without error (epoch seconds).",
            ["duty"],
            registry=self.registry,
        )
        self._proxy: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        for kind, statuses in (("http", (200, 300, 400, 500)), ("websocket", (101, 502))):
            for status in statuses:
                self._bind(kind, status)  # known series start at 0, so rate() sees the first one
        self.ledger = LedgerTotals(
            db,
            ttl_s=ledger_ttl_s,
            stamp=lambda: tuple((r.instance_id, r.state) for r in routes()),
        )
        self.registry.register(StateCollector(routes=routes, gpus=gpus, templates=templates))
        self.registry.register(self.ledger)
        ProcessCollector(registry=self.registry)  # CPU, memory, open files of this process

    def proxy_request(self, kind: ProxyKind, status: int, seconds: float) -> None:
        bound = self._proxy.get((kind, status // 100)) or self._bind(kind, status)
        bound[0].inc()
        bound[1].observe(seconds)

    def instance_started(self, template_id: str, seconds: float) -> None:
        self.start_seconds.labels(template_id).observe(max(seconds, 0.0))

    def job_step(self, job: str, seconds: float) -> None:
        self.job_steps.labels(job).inc()
        self.job_seconds.labels(job).observe(max(seconds, 0.0))

    def job_failed(self, job: str) -> None:
        self.job_failures.labels(job).inc()

    def job_succeeded(self, job: str, at: float) -> None:
        self.job_last_success.labels(job).set(at)

    async def exposition(self) -> bytes:
        """Every metric in the text format (the ledger is read first when its copy is stale)."""
        await self.ledger.refresh()
        return generate_latest(self.registry)

    def _bind(self, kind: str, status: int) -> tuple[Counter, Histogram]:
        bound = (
            self.proxy_requests.labels(kind, status_class(status)),
            self.proxy_seconds.labels(kind),
        )
        self._proxy[(kind, status // 100)] = bound
        return bound


class StateCollector(Collector):
    """Gauges read from memory at each scrape: the route table, the GPU broker, the catalog.

    Every state of every known template is reported, zeros included, so a series does not vanish
    when its count drops to 0."""

    def __init__(
        self,
        *,
        routes: Callable[[], Iterable[Route]],
        gpus: GpuBroker,
        templates: TemplateRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._routes = routes
        self._gpus = gpus
        self._templates = templates
        self._clock = clock
        """The GPU queue's clock (Unix seconds)."""

    def collect(self) -> Iterator[Metric]:
        yield self._instances()
        yield from self._gpu_families()
        yield from self._queue()

    def _instances(self) -> Metric:
        counts = Tally((r.state, r.template_id) for r in self._routes())
        templates = set(self._templates.catalog.templates) | {t for _, t in counts}
        family = GaugeMetricFamily(
            "aigc_instances",
            "Instances by state and template (deleted ones are gone).",
            labels=["state", "template"],
        )
        for template in sorted(templates):
            for state in STATES:
                family.add_metric([state, template], counts[(state, template)])
        return family

    def _gpu_families(self) -> Iterator[Metric]:
        inventory = self._gpus.inventory
        cards: Tally[tuple[str, str]] = Tally()
        memory: defaultdict[tuple[str, str], float] = defaultdict(float)
        for gpu in inventory.gpus:
            cards[(gpu.pool, gpu.type)] += 1
            memory[(gpu.pool, gpu.type)] += gpu.memory_gib
        whole: Tally[tuple[str, str]] = Tally()
        shared: defaultdict[tuple[str, str], float] = defaultdict(float)
        for allocation in inventory.allocations:
            for gpu_id in allocation.gpu_ids:
                gpu = inventory.gpu(gpu_id)
                if allocation.memory_gib is None:
                    whole[(gpu.pool, gpu.type)] += 1
                else:
                    shared[(gpu.pool, gpu.type)] += allocation.memory_gib
        for name, text, values in (
            ("aigc_gpus", "GPUs in the inventory (cordoned ones included).", cards),
            ("aigc_gpu_memory_gib", "Memory of the GPUs in the inventory.", memory),
            ("aigc_gpus_allocated", "GPUs allocated whole to an instance.", whole),
            ("aigc_gpu_share_gib_allocated", "GPU memory allocated as shares.", shared),
        ):
            family = GaugeMetricFamily(name, text, labels=["pool", "type"])
            for pool, gpu_type in sorted(cards):
                family.add_metric([pool, gpu_type], values[(pool, gpu_type)])
            yield family

    def _queue(self) -> Iterator[Metric]:
        waiting = self._gpus.queue.ordered()
        oldest = min((w.enqueued_at for w in waiting), default=None)
        wait = 0.0 if oldest is None else max(0.0, self._clock() - oldest)
        yield GaugeMetricFamily(
            "aigc_queue_length", "Instances waiting for GPUs.", value=len(waiting)
        )
        yield GaugeMetricFamily(
            "aigc_queue_oldest_wait_seconds",
            "How long the longest-waiting instance has waited for GPUs (0: nobody waits).",
            value=wait,
        )


@dataclass(frozen=True, slots=True)
class TeamTotals:
    team: str
    """The team's name; empty for users in no team (or a team since deleted)."""
    currency: str
    gpu_seconds: float
    """Exact to the millisecond (the ledger's unit)."""
    share_gib_seconds: float
    cost_micros: int


class LedgerTotals(Collector):
    """Sums of the ledger's closed rows by team, from the store once per ``ttl_s`` at most,
    unless ``stamp()`` changed since the last read (the instances' states: rows close when an
    engine stops, so a scrape right after a pause sees its cost).

    Closed rows never change, so the sums only grow; a correction row with a negative amount
    makes them drop, which Prometheus reads as a counter reset. When the store fails the last
    sums are kept (and the failure logged), so a scrape still reports everything else."""

    def __init__(
        self,
        db: Database,
        *,
        ttl_s: float,
        stamp: Callable[[], Hashable] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._ttl_s = ttl_s
        self._stamp = stamp
        self._clock = clock
        self._read_at: float | None = None
        self._read_stamp: Hashable = None
        self._lock = asyncio.Lock()
        self.totals: list[TeamTotals] = []

    def _fresh(self) -> bool:
        return (
            self._read_at is not None
            and self._clock() - self._read_at < self._ttl_s
            and self._stamp() == self._read_stamp
        )

    async def refresh(self) -> None:
        if self._fresh():
            return
        async with self._lock:  # concurrent scrapes wait for one query
            if self._fresh():
                return
            stamp = self._stamp()
            try:
                self.totals = await self._read()
            except Exception:
                log.warning("could not read the usage ledger for /metrics", exc_info=True)
            self._read_at, self._read_stamp = self._clock(), stamp

    async def _read(self) -> list[TeamTotals]:
        u = UsageInterval
        query = (
            select(
                Team.name,
                u.currency,
                func.sum(u.duration_ms * u.gpu_count),
                func.sum(case((u.resource == "gpu_share", u.duration_ms * u.share_gib), else_=0.0)),
                func.sum(u.cost_micros),
            )
            .outerjoin(Team, Team.id == u.team_id)
            .where(u.end_at.is_not(None))
            .group_by(u.team_id, Team.name, u.currency)
        )
        sums: dict[tuple[str, str], tuple[int, float, int]] = {}
        async with self._db.read() as session:
            for name, currency, gpu_ms, share_ms, cost in await session.execute(query):
                key = (name or "", currency)
                old = sums.get(key, (0, 0.0, 0))
                sums[key] = (
                    old[0] + int(gpu_ms or 0),
                    old[1] + float(share_ms or 0),
                    old[2] + int(cost or 0),
                )
        return [
            TeamTotals(t, c, gpu_ms / 1000, share_ms / 1000, cost)
            for (t, c), (gpu_ms, share_ms, cost) in sorted(sums.items())
        ]

    def collect(self) -> Iterator[Metric]:
        gpu_s = CounterMetricFamily(
            "aigc_gpu_seconds", "Seconds times whole GPUs held, by team.", labels=["team"]
        )
        share_s = CounterMetricFamily(
            "aigc_gpu_share_gib_seconds",
            "Seconds times GiB of GPU memory shares held, by team.",
            labels=["team"],
        )
        cost = CounterMetricFamily(
            "aigc_cost_micros",
            "Cost of what was held, in millionths of the currency, by team.",
            labels=["team", "currency"],
        )
        by_team: dict[str, tuple[float, float]] = {}
        for t in self.totals:
            held = by_team.get(t.team, (0.0, 0.0))
            by_team[t.team] = (held[0] + t.gpu_seconds, held[1] + t.share_gib_seconds)
            cost.add_metric([t.team, t.currency], t.cost_micros)
        for team, (whole, shares) in sorted(by_team.items()):
            gpu_s.add_metric([team], whole)
            share_s.add_metric([team], shares)
        yield from (gpu_s, share_s, cost)
