"""``/metrics``: who may read it, what the exposition says, and that it follows what happens.

The end-to-end test runs the real gateway with a declared GPU, a price book and a fake ledger
clock (as tests/test_accounting.py does), so GPU-seconds and cost are known to the unit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from aigc_gateway.api.metrics import check_scraper, client_address
from aigc_gateway.catalog.registry import TemplateRegistry
from aigc_gateway.errors import Forbidden, Unauthorized
from aigc_gateway.gpu.broker import GpuBroker
from aigc_gateway.metrics import Metrics, ProxyKind
from aigc_gateway.metrics.prometheus import LedgerTotals, PrometheusMetrics, TeamTotals
from aigc_gateway.proxy.asgi import _Observed
from aigc_gateway.settings import Settings
from tests.conftest import RunningGateway
from tests.support.fake_mps import install_fake_mps
from tests.support.gateway import Api, FakeClock, make_settings
from tests.support.hosts import browser_for

HTML = {"Accept": "text/html"}


class Scrape:
    """One exposition, parsed: ``scrape["name", {"label": "value"}]`` is a sample's value."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.values = {
            (s.name, frozenset(s.labels.items())): s.value
            for f in self.families.values()
            for s in f.samples
        }

    def __getitem__(self, key: tuple[str, dict[str, str]]) -> float:
        name, labels = key
        found = self.values.get((name, frozenset(labels.items())))
        assert found is not None, f"no sample {name}{labels}"
        return found

    def get(self, name: str, labels: dict[str, str], default: float = 0.0) -> float:
        return self.values.get((name, frozenset(labels.items())), default)


async def scrape(url: str, **headers: str) -> Scrape:
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return Scrape(r.text)


# -- who may read -----------------------------------------------------------------------------

LOOPBACK = [ipaddress.ip_network("127.0.0.1"), ipaddress.ip_network("::1")]


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),  # an IPv4 client of a dual-stack socket
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("testclient", None),
        ("", None),
        (None, None),
    ],
)
def test_client_addresses_are_read_as_ip_addresses(host: str | None, address: str | None) -> None:
    assert client_address(host) == (None if address is None else ipaddress.ip_address(address))


def request(client: str | None, **headers: str) -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/metrics",
            "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
            "client": (client, 40000) if client else None,
        }
    )


def test_without_a_token_only_trusted_addresses_may_scrape() -> None:
    trusted = [ipaddress.ip_network("10.0.0.0/24"), *LOOPBACK]
    for allowed in ("10.0.0.7", "127.0.0.1", "::1", "::ffff:10.0.0.9"):
        check_scraper(request(allowed), token=None, trusted=trusted)
    for refused in (
        request("10.0.1.7"),
        request("127.0.0.2"),  # loopback, but not listed: an engine on this host
        request(None),
        request("127.0.0.1", x_forwarded_for="203.0.113.9"),  # came through a reverse proxy
        request("127.0.0.1", forwarded="for=203.0.113.9"),
    ):
        with pytest.raises(Forbidden, match="AIGC_METRICS_TRUSTED_ADDRESSES"):
            check_scraper(refused, token=None, trusted=trusted)


def test_by_default_no_address_is_trusted_not_even_loopback() -> None:
    for host in ("127.0.0.1", "::1"):
        with pytest.raises(Forbidden, match="AIGC_METRICS_TOKEN"):
            check_scraper(request(host), token=None, trusted=[])


def test_with_a_token_any_address_with_the_token_may_scrape() -> None:
    for sent in ("Bearer s3cret", "bearer  s3cret "):
        check_scraper(request("10.1.2.3", authorization=sent), token="s3cret", trusted=[])
    check_scraper(request("127.0.0.1"), token="s3cret", trusted=LOOPBACK)  # listed: no token needed
    for refused in (
        request("127.0.0.1"),  # the token is needed from this host too
        request("10.1.2.3", authorization="Bearer wrong"),
        request("10.1.2.3", authorization="Basic s3cret"),
        request("10.1.2.3", authorization="Bearer s3cret-and-more"),
        request("10.1.2.3", authorization="Bearer sécret"),
    ):
        with pytest.raises(Unauthorized):
            check_scraper(refused, token="s3cret", trusted=[])


@pytest.mark.parametrize("gateway_settings", [{"metrics_token": "s3cret"}], indirect=True)
async def test_a_configured_token_is_required(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert (await client.get("/metrics")).status_code == 401  # from loopback, too
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["code"] == "unauthorized"
        # A user's (even an admin's) API token is not the metrics token.
        admin = await client.get(
            "/metrics", headers={"Authorization": f"Bearer {gateway.admin_token}"}
        )
        assert admin.status_code == 401
    found = await scrape(gateway.url, Authorization="Bearer s3cret")
    assert found["aigc_queue_length", {}] == 0


async def test_loopback_is_no_credential_by_default(gateway: RunningGateway) -> None:
    """Every engine on this host is a loopback client: without a token or a listed address,
    none of them reads the metrics."""
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        refused = await client.get("/metrics")
    assert refused.status_code == 403 and "AIGC_METRICS_TOKEN" in refused.json()["message"]


@pytest.mark.parametrize(
    "gateway_settings", [{"metrics_trusted_addresses": ["127.0.0.1"]}], indirect=True
)
async def test_a_trusted_address_reads_it_without_a_token(gateway: RunningGateway) -> None:
    found = await scrape(gateway.url)
    # Every state of every template is reported, zeros included.
    assert found["aigc_instances", {"state": "running", "template": "tiny"}] == 0
    assert found["aigc_instances", {"state": "paused", "template": "demo"}] == 0
    assert found["aigc_proxy_requests_total", {"kind": "http", "status_class": "2xx"}] == 0
    assert found["aigc_queue_oldest_wait_seconds", {}] == 0
    assert "process_resident_memory_bytes" in found.families
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        proxied = await client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert proxied.status_code == 403 and "AIGC_METRICS_TOKEN" in proxied.json()["message"]


# -- the parts, directly ----------------------------------------------------------------------


class Recorder(Metrics):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def proxy_request(self, kind: ProxyKind, status: int, seconds: float) -> None:
        assert 0 <= seconds < 60
        self.calls.append((kind, status))


async def test_the_proxy_reports_what_the_client_was_answered() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    recorder = Recorder()
    answered = _Observed(send, recorder, time.perf_counter())
    await answered.http({"type": "http.response.start", "status": 404, "headers": []})
    await answered.http({"type": "http.response.body", "body": b"x", "more_body": False})
    answered.http_done()
    _Observed(send, recorder, time.perf_counter()).http_done()  # the client left first
    accepted = _Observed(send, recorder, time.perf_counter())
    await accepted.websocket({"type": "websocket.accept", "subprotocol": None})
    await accepted.websocket({"type": "websocket.send", "text": "hi"})
    await accepted.websocket({"type": "websocket.close", "code": 1000})  # a normal end
    refused = _Observed(send, recorder, time.perf_counter())
    await refused.websocket({"type": "websocket.close", "code": 1011})  # engine refused
    assert recorder.calls == [("http", 404), ("http", 0), ("websocket", 101), ("websocket", 502)]
    assert len(sent) == 6  # every message still reaches the client, unchanged


def bare_metrics(tmp_path: Path) -> PrometheusMetrics:
    return PrometheusMetrics(
        routes=list,
        gpus=GpuBroker([], "none"),
        templates=TemplateRegistry(tmp_path, None),  # type: ignore[arg-type]
        db=None,  # type: ignore[arg-type]
    )


def test_each_gateway_has_its_own_registry(tmp_path: Path) -> None:
    one, other = bare_metrics(tmp_path), bare_metrics(tmp_path)
    one.proxy_request("http", 200, 0.02)
    one.proxy_request("http", 204, 0.5)
    one.proxy_request("http", 0, 0.1)
    one.instance_started("tiny", 1.5)
    found = Scrape(generate_latest(one.registry).decode())
    assert found["aigc_proxy_requests_total", {"kind": "http", "status_class": "2xx"}] == 2
    assert found["aigc_proxy_requests_total", {"kind": "http", "status_class": "none"}] == 1
    assert found["aigc_proxy_requests_total", {"kind": "websocket", "status_class": "1xx"}] == 0
    latency = {"kind": "http", "le": "0.025"}
    assert found["aigc_proxy_request_duration_seconds_bucket", latency] == 1
    assert found["aigc_proxy_request_duration_seconds_count", {"kind": "http"}] == 3
    assert found["aigc_instance_start_seconds_bucket", {"template": "tiny", "le": "2.0"}] == 1
    untouched = Scrape(generate_latest(other.registry).decode())
    assert untouched["aigc_proxy_requests_total", {"kind": "http", "status_class": "2xx"}] == 0
    assert untouched.get("aigc_instance_start_seconds_count", {"template": "tiny"}, -1) == -1


class CountingLedger(LedgerTotals):
    def __init__(self) -> None:
        self.now = 1000.0
        self.states = ("i1", "running")
        super().__init__(None, ttl_s=5, stamp=lambda: self.states, clock=lambda: self.now)  # type: ignore[arg-type]
        self.reads = 0
        self.failing = False

    async def _read(self) -> list[TeamTotals]:
        self.reads += 1
        await asyncio.sleep(0)  # let the other scrapes reach the lock meanwhile
        if self.failing:
            raise RuntimeError("the store is down")
        return [TeamTotals("lab", "EUR", 60 * self.reads, 0.0, 1000 * self.reads)]


async def test_a_scrape_storm_reads_the_ledger_once(caplog: pytest.LogCaptureFixture) -> None:
    ledger = CountingLedger()
    await asyncio.gather(*(ledger.refresh() for _ in range(20)))
    assert ledger.reads == 1
    ledger.now += 4.9
    await ledger.refresh()
    assert ledger.reads == 1
    ledger.states = ("i1", "stopping")  # an engine stopped: its rows just closed
    await ledger.refresh()
    assert ledger.reads == 2
    ledger.now += 5
    await ledger.refresh()
    assert ledger.reads == 3
    ledger.failing, ledger.now = True, ledger.now + 5
    await ledger.refresh()  # the scrape still answers, with the last sums
    assert ledger.reads == 4 and ledger.totals[0].gpu_seconds == 180
    assert "could not read the usage ledger" in caplog.text


# -- end to end -------------------------------------------------------------------------------

PRICES = """
currency: EUR
prices:
  - effective_from: 2026-01-01
    gpu_hour: {rtx4090: 2.00}
"""
ONE_CARD = [{"id": "GPU-aaaa", "type": "rtx4090", "memory_gib": 24, "pool": "onprem"}]
T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


@dataclass
class Metered:
    url: str
    clock: FakeClock


async def open_instance(url: str, inst: dict[str, Any]) -> None:
    """Sign in as alice and open the instance the way a browser does (hand-over, then the
    engine's page through the proxy)."""
    async with browser_for(url, follow_redirects=True, timeout=60) as browser:
        r = await browser.post(
            f"{url}/auth/login", data={"username": "alice", "password": "pw-alice", "next": "/"}
        )
        assert r.status_code == 200
        page = await browser.get(inst["url"], headers=HTML)
        assert page.status_code == 200 and page.text == "ok"


class TestEndToEnd:
    """One declared RTX card, a price book and a fake ledger clock."""

    @pytest.fixture
    def ledger_clock(self) -> FakeClock:
        return FakeClock(T0)

    @pytest.fixture
    def gateway_settings(self, tmp_path: Path) -> Settings:
        (tmp_path / "prices.yaml").write_text(PRICES)
        program, _ = install_fake_mps(tmp_path / "mps-bin")
        return make_settings(
            tmp_path,
            pricebook=tmp_path / "prices.yaml",
            gpus=ONE_CARD,
            mps_control=str(program),
            metrics_token="s3cret",
        )

    async def test_metrics_follow_instances_the_proxy_and_the_ledger(
        self, gateway: RunningGateway, ledger_clock: FakeClock, alice: Api, bob: Api, admin: Api
    ) -> None:
        await follow(Metered(gateway.url, ledger_clock), alice, bob, admin)


async def follow(metered: Metered, alice: Api, bob: Api, admin: Api) -> None:
    team = (await admin.client.post("/api/teams", json={"name": "lab"})).json()
    alice_id = (await alice.client.get("/api/me")).json()["id"]
    assert (await admin.client.put(f"/api/teams/{team['id']}/members/{alice_id}")).is_success
    ok = {"kind": "http", "status_class": "2xx"}
    before = await scrape(metered.url, Authorization="Bearer s3cret")
    card = {"pool": "onprem", "type": "rtx4090"}
    assert before["aigc_gpus", card] == 1 and before["aigc_gpu_memory_gib", card] == 24

    inst = await alice.wait_state((await alice.create("tiny-gpu"))["id"], "running")
    waiting = await bob.wait_state((await bob.create("tiny-gpu"))["id"], "queued")
    await open_instance(metered.url, inst)
    host = httpx.URL(inst["url"]).host
    async with browser_for(metered.url) as stranger:  # refused by the proxy: not relayed
        assert (await stranger.get(f"http://{host}/")).status_code == 401
    running = await scrape(metered.url, Authorization="Bearer s3cret")
    tiny_gpu = {"template": "tiny-gpu"}
    assert running["aigc_instances", {"state": "running", **tiny_gpu}] == 1
    assert running["aigc_instances", {"state": "queued", **tiny_gpu}] == 1
    assert running["aigc_instances", {"state": "running", "template": "tiny"}] == 0
    assert running["aigc_instance_start_seconds_count", tiny_gpu] == 1
    assert running["aigc_instance_start_seconds_sum", tiny_gpu] > 0
    assert running["aigc_gpus_allocated", card] == 1
    assert running["aigc_gpu_share_gib_allocated", card] == 0
    assert running["aigc_queue_length", {}] == 1
    assert 0 < running["aigc_queue_oldest_wait_seconds", {}] < 120
    relayed = running["aigc_proxy_requests_total", ok] - before["aigc_proxy_requests_total", ok]
    assert relayed == 1  # the engine's page; the hand-over and the refusal are not relayed
    assert running["aigc_proxy_requests_total", {"kind": "http", "status_class": "4xx"}] == 0
    assert running["aigc_proxy_request_duration_seconds_count", {"kind": "http"}] == 1
    assert running.get("aigc_gpu_seconds_total", {"team": "lab"}) == 0  # nothing closed yet

    await bob.act(waiting["id"], "pause")  # leaves the queue
    await bob.wait_state(waiting["id"], "paused")
    metered.clock.at += timedelta(hours=2)
    await alice.act(inst["id"], "pause")
    await alice.wait_state(inst["id"], "paused")
    # At once: the pause closed the ledger rows.
    paused = await scrape(metered.url, Authorization="Bearer s3cret")
    assert paused["aigc_gpu_seconds_total", {"team": "lab"}] == 7200
    assert paused["aigc_cost_micros_total", {"team": "lab", "currency": "EUR"}] == 4_000_000
    assert paused["aigc_instances", {"state": "paused", **tiny_gpu}] == 2
    assert paused["aigc_instances", {"state": "running", **tiny_gpu}] == 0
    assert paused["aigc_gpus_allocated", card] == 0
    assert (
        paused["aigc_queue_length", {}] == 0 and paused["aigc_queue_oldest_wait_seconds", {}] == 0
    )
