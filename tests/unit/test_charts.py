"""Bar chart geometry (web.charts) and the usage pages' figures (web.costs), pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aigc_gateway.accounting.core import format_money
from aigc_gateway.dashboard.ui import charts, costs
from aigc_gateway.dashboard.ui.charts import Datum
from aigc_gateway.dashboard.ui.i18n import Translator
from aigc_gateway.dashboard.ui.pages import environment

values = st.lists(
    st.floats(min_value=-1e9, max_value=1e12, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=40,
)


def data(*pairs: tuple[str, float]) -> list[Datum]:
    return [Datum(label, value, f"{value:g} USD") for label, value in pairs]


def test_horizontal_bars_are_proportional_with_the_largest_full_length() -> None:
    chart = charts.horizontal(
        data(("design", 300), ("ml", 150), ("ops", 0)),
        title="Cost by team",
        width=640,
        label_width=150,
        text_width=170,
    )
    assert chart.orientation == "horizontal" and chart.title == "Cost by team"
    design, ml, ops = chart.bars
    assert (design.x, design.width) == (150, 320)  # 640 - 150 - 170
    assert ml.width == 160 and ops.width == 0
    assert design.y < ml.y < ops.y and ml.y - design.y == ml.height + 8
    assert chart.height == ops.y + ops.height + 8  # room for every row
    assert design.text_x == 150 + 320 + 6 and ops.text_x == 156  # the value after the bar
    assert design.label_x == 144  # right-aligned before the bar
    assert chart.description == "design: 300 USD; ml: 150 USD; ops: 0 USD"


def test_vertical_bars_share_a_baseline_and_draw_every_kth_label() -> None:
    days = [(f"2026-11-{d:02d}", float(d % 3)) for d in range(1, 31)]
    chart = charts.vertical(data(*days), title="Cost per day", width=640, height=200)
    assert len(chart.bars) == 30 and chart.top_text == "2 USD"
    assert {round(b.y + b.height, 1) for b in chart.bars} == {chart.baseline}
    tallest = max(b.height for b in chart.bars)
    assert tallest == chart.baseline - 20  # the plot: under the scale text, above the labels
    assert [b.height for b in chart.bars[:3]] == [tallest / 2, tallest, 0]
    drawn = [b.short for b in chart.bars if b.short]
    assert drawn[0] == "2026-11-01" and len(drawn) <= 8
    assert chart.bars[0].x >= 0 and chart.bars[-1].x + chart.bars[-1].width <= 640
    xs = [b.x for b in chart.bars]
    assert xs == sorted(xs)


def test_nothing_positive_draws_empty_bars_and_no_scale() -> None:
    chart = charts.vertical(data(("a", 0), ("b", -5)), title="t")
    assert [b.height for b in chart.bars] == [0, 0] and chart.top_text == ""
    flat = charts.horizontal(data(("credit", -2.5)), title="t")
    assert flat.bars[0].width == 0 and flat.bars[0].text == "-2.5 USD"
    assert charts.horizontal([], title="t").bars == ()


def test_long_labels_are_clipped_but_kept_whole_for_the_title() -> None:
    name = "a-very-long-team-name-that-does-not-fit"
    bar = charts.horizontal(data((name, 1)), title="t", label_width=100).bars[0]
    assert bar.label == name and bar.short.endswith("…") and len(bar.short) == 13
    assert charts.clip("short", 10) == "short" and charts.clip("abc", 0) == ""


@given(values)
def test_bars_stay_inside_the_view_box(vals: list[float]) -> None:
    items = [Datum(str(n), v, "") for n, v in enumerate(vals)]
    for chart in (
        charts.horizontal(items, title="t", width=400),
        charts.vertical(items, title="t", width=400, height=150),
    ):
        for bar in chart.bars:
            assert bar.width >= 0 and bar.height >= 0
            assert bar.x >= 0 and bar.x + bar.width <= chart.width + 0.1
            assert bar.y >= 0 and bar.y + bar.height <= chart.height + 0.1
        lengths = [b.width if chart.orientation == "horizontal" else b.height for b in chart.bars]
        top = max(vals)
        for length, value in zip(lengths, vals, strict=True):
            if top > 0 and value >= top:
                assert length == max(lengths)  # the largest value gets the longest bar
            if value <= 0:
                assert length == 0


def test_the_svg_is_named_described_and_self_contained() -> None:
    chart = charts.horizontal(data(("design", 2), ("<ml>", 1)), title="Cost & hours")
    macro = environment().get_template("_charts.html").module.bar_chart  # type: ignore[attr-defined]
    svg = str(macro(chart, "chart-x", "none"))
    assert '<svg xmlns="http://www.w3.org/2000/svg" role="img"' in svg
    assert 'aria-labelledby="chart-x-title chart-x-desc"' in svg
    assert '<title id="chart-x-title">Cost &amp; hours</title>' in svg
    assert "<title>&lt;ml&gt;: 1 USD</title>" in svg  # each bar, escaped
    assert svg.count("<rect ") == 2 and "http" not in svg.replace("http://www.w3.org/2000/svg", "")
    assert "<script" not in svg
    empty = str(macro(charts.horizontal([], title="t"), "chart-y", "Nothing yet"))
    assert "<svg" not in empty and 'data-testid="chart-y-empty"' in empty and "Nothing yet" in empty


# -- costs --------------------------------------------------------------------------------------


@dataclass
class Line:
    key: str | None
    label: str
    seconds: int
    idle_seconds: int
    gpu_seconds: int
    cost_micros: int
    period: str | None = None


def test_months_and_days() -> None:
    assert costs.parse_month("2026-11") == "2026-11"
    assert [costs.parse_month(m) for m in ("2026-13", "2026-1", "11/2026", "")] == [None] * 4
    assert costs.month_bounds("2024-02") == (date(2024, 2, 1), date(2024, 2, 29))
    assert costs.month_bounds("2026-12") == (date(2026, 12, 1), date(2026, 12, 31))
    assert costs.shift_month("2026-12", 1) == "2027-01"
    assert costs.shift_month("2026-01", -1) == "2025-12"
    assert costs.days(date(2026, 2, 27), date(2026, 3, 1)) == [
        "2026-02-27",
        "2026-02-28",
        "2026-03-01",
    ]
    assert costs.days(date(2026, 3, 1), date(2026, 2, 1)) == []
    assert costs.hours(5400) == "1.50" and costs.hours(0) == "0.00"


def test_cost_per_period_fills_missing_days_and_adds_lines_of_a_day() -> None:
    lines = [
        Line("u", "alice", 10, 0, 0, 5, "2026-11-02"),
        Line("u2", "bob", 10, 0, 0, 7, "2026-11-02"),
        Line("u", "alice", 10, 0, 0, 1, "2026-10-01"),  # outside: left out
    ]
    assert costs.cost_per_period(lines, ["2026-11-01", "2026-11-02"]) == [
        ("2026-11-01", 0),
        ("2026-11-02", 12),
    ]


def test_cost_data_orders_by_cost_and_says_cost_and_hours() -> None:
    lines = [
        Line(None, "(none)", 3600, 0, 0, 1_000_000),
        Line("t", "design", 7200, 0, 0, 2_500_000),
    ]
    got = costs.cost_data(lines, "USD", none="No team", hours_text=lambda h: f"{h} h")
    assert got == [
        Datum("design", 2_500_000, "2.50 USD · 2.00 h"),
        Datum("No team", 1_000_000, "1.00 USD · 1.00 h"),
    ]


def test_idle_ranking_puts_idle_gpu_time_first_and_shares_the_cost() -> None:
    lines = [
        Line("cpu", "notebook", 7200, 7200, 0, 2_000_000),
        Line("gpu", "diffusion", 3600, 1800, 3600, 4_000_000),
        Line("busy", "chat", 3600, 0, 3600, 9_000_000),  # never idle: not listed
        Line("empty", "nothing", 0, 0, 0, 0),
    ]
    ranked = costs.idle_ranking(lines)
    assert [r.key for r in ranked] == ["gpu", "cpu"]
    gpu, cpu = ranked
    assert (gpu.idle_gpu_seconds, gpu.idle_cost_micros, gpu.idle_percent) == (1800, 2_000_000, 50)
    assert (cpu.idle_gpu_seconds, cpu.idle_cost_micros, cpu.idle_percent) == (0, 2_000_000, 100)
    assert costs.idle_ranking(lines, limit=1) == [gpu]
    assert costs.idle_row(lines[3]).idle_percent == 0


@dataclass
class Status:
    scope: str = "team"
    subject: str = "design"
    month: str = "2026-11"
    currency: str = "USD"
    spent_micros: int = 850_000_000
    soft_micros: int | None = 500_000_000
    hard_micros: int | None = 800_000_000
    pause_when_over: bool = False
    max_gpus: int | None = None
    over_soft: bool = True
    over_hard: bool = True


@pytest.mark.parametrize(
    ("status", "level", "limit", "percent"),
    [
        (Status(), "error", "800.00 USD", 100),
        (Status(spent_micros=600_000_000, over_hard=False), "warning", "500.00 USD", 75),
        (Status(spent_micros=0, over_soft=False, over_hard=False), "ok", "500.00 USD", 0),
        (Status(hard_micros=None, over_hard=False), "warning", "500.00 USD", 100),
        (Status(soft_micros=0, hard_micros=None, over_hard=False), "warning", "0.00 USD", None),
    ],
)
def test_budget_view(status: Status, level: str, limit: str, percent: int | None) -> None:
    view = costs.budget_view(status)
    assert (view.level, view.limit, view.percent) == (level, limit, percent)
    assert view.spent == format_money(status.spent_micros, "USD")


def test_daily_chart_has_a_column_per_day_drawn_as_month_and_day() -> None:
    days = costs.days(date(2026, 11, 1), date(2026, 11, 30))
    lines = [Line("u", "alice", 60, 60, 0, 2_500_000, "2026-11-09")]
    chart = costs.daily_chart(lines, days, "USD", "Cost per day")
    assert [b.label for b in chart.bars] == days and chart.top_text == "2.50 USD"
    assert chart.bars[0].short == "11-01" and chart.bars[8].text == "2.50 USD"
    assert [b.label for b in chart.bars if b.height > 0] == ["2026-11-09"]


def test_month_charts_speak_the_pages_language() -> None:
    teams = [Line(None, "(none)", 3600, 0, 0, 1_000_000), Line("t1", "design", 60, 0, 0, 0)]
    got = costs.month_charts(
        Translator("zh-CN"),
        teams=teams,
        gpu_types=[],
        daily=[],
        days=["2026-11-01"],
        currency="USD",
    )
    assert got["team"].title == "按团队的费用" and got["gpu_type"].bars == ()
    assert [b.label for b in got["team"].bars] == ["无团队", "design"]
    assert got["team"].bars[0].text == "1.00 USD · 1.00 小时"
    assert got["day"].title == "每日费用" and len(got["day"].bars) == 1
