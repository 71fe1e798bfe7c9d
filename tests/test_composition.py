"""The composition root (``open_gateway``): one clock handed to every reader of domain time (the
ledger, the spending limits), one route table that the proxy and the metrics read."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from aigc_gateway.domain.clock import wall_clock
from aigc_gateway.gateway import open_gateway
from tests.support.gateway import make_settings


async def test_the_ledger_and_the_limits_read_one_clock(tmp_path: Path) -> None:
    fixed = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

    def fake() -> datetime:
        return fixed

    gw = await open_gateway(make_settings(tmp_path), ledger_clock=fake)
    try:
        assert gw.clock is fake
        assert gw.controller.clock is fake
        assert gw.budgets._clock is fake  # the limits: the same "now" as the ledger
    finally:
        await gw.close()


async def test_without_a_fake_it_is_the_wall_clock(tmp_path: Path) -> None:
    gw = await open_gateway(make_settings(tmp_path))
    try:
        assert gw.clock is wall_clock
        assert gw.controller.clock is wall_clock
        assert gw.budgets._clock is wall_clock
    finally:
        await gw.close()


async def test_the_proxy_reads_the_controllers_route_table(tmp_path: Path) -> None:
    gw = await open_gateway(make_settings(tmp_path))
    try:
        assert gw.proxy.routes is gw.controller.routes
        assert gw.proxy.metrics is gw.metrics
        assert gw.proxy.activity is gw.controller.activity
    finally:
        await gw.close()
