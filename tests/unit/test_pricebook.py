"""Pure tests of pricing: effective dates, inheritance, shares, rounding, currency, bad files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigc_gateway.accounting.core import (
    PERIODS,
    MissingPrice,
    Period,
    PriceBook,
    PriceBookError,
    ResourceUse,
    format_money,
    load_pricebook,
    parse_pricebook,
    split,
)
from aigc_gateway.errors import UserError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "pricebook.example.yaml"

JANUARY = """\
currency: USD
prices:
  - effective_from: 2026-01-01
    gpu_hour: {rtx4090: 0.40, h200: 3.50}
    share_gib_hour: {h200: 0.03}
    share_gib_hour_default: 0.02
    cpu_hour: 0.05
    suspended_gib_hour: 0.001
    storage_gib_month: 0.10
"""
# The same book after the admin adds a price change on 1 July 12:00 UTC.
JULY = (
    JANUARY
    + """\
  - effective_from: 2026-07-01T14:00:00+02:00
    gpu_hour: {h200: 3.20}
    cpu_hour: 0.07
"""
)

H200 = ResourceUse(kind="gpu", gpu_type="h200", gpu_count=1)
CPU = ResourceUse(kind="cpu")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def book(text: str = JULY) -> PriceBook:
    return parse_pricebook(text, "prices.yaml")


# --- rates ------------------------------------------------------------------------------------


def test_whole_gpus_cost_count_times_the_per_gpu_price() -> None:
    four = ResourceUse(kind="gpu", gpu_type="rtx4090", gpu_count=4)
    assert book().hourly_rate(four, utc(2026, 3, 1)) == Decimal("1.60")
    assert book().cost_micros(four, utc(2026, 3, 1), utc(2026, 3, 1, 2, 30)) == 4_000_000


def test_a_share_costs_its_gib_times_the_per_gib_price() -> None:
    share = ResourceUse(kind="gpu_share", gpu_type="h200", memory_gib=12.5)
    assert book().hourly_rate(share, utc(2026, 3, 1)) == Decimal("0.375")
    # Types not in share_gib_hour fall back to share_gib_hour_default (0.02).
    other = ResourceUse(kind="gpu_share", gpu_type="rtx4090", memory_gib=8)
    assert book().hourly_rate(other, utc(2026, 3, 1)) == Decimal("0.16")


def test_sizes_are_priced_as_written_not_as_binary_floats() -> None:
    share = ResourceUse(kind="gpu_share", gpu_type="x", memory_gib=0.1)
    text = JANUARY.replace("share_gib_hour_default: 0.02", "share_gib_hour_default: 0.3")
    assert book(text).hourly_rate(share, utc(2026, 3, 1)) == Decimal("0.03")


def test_cpu_and_suspended_rates() -> None:
    assert book().hourly_rate(CPU, utc(2026, 3, 1)) == Decimal("0.05")
    suspended = ResourceUse(kind="suspended", memory_gib=32)
    assert book().hourly_rate(suspended, utc(2026, 3, 1)) == Decimal("0.032")
    assert book().cost_micros(suspended, utc(2026, 3, 1), utc(2026, 3, 2)) == 768_000


def test_unknown_gpu_type_without_default_is_a_clear_user_error() -> None:
    a100 = ResourceUse(kind="gpu", gpu_type="a100", gpu_count=1)
    with pytest.raises(MissingPrice) as caught:
        book().cost_micros(a100, utc(2026, 3, 1), utc(2026, 3, 2))
    assert isinstance(caught.value, UserError)
    message = caught.value.message
    assert "prices.yaml" in message and "'a100'" in message
    assert "gpu_hour_default" in message and "Add a100: <price> under gpu_hour" in message


def test_unknown_gpu_type_with_default_uses_the_default() -> None:
    text = JANUARY.replace("cpu_hour: 0.05", "cpu_hour: 0.05\n    gpu_hour_default: 1.25")
    a100 = ResourceUse(kind="gpu", gpu_type="a100", gpu_count=2)
    assert book(text).hourly_rate(a100, utc(2026, 3, 1)) == Decimal("2.50")
    assert book(text).hourly_rate(H200, utc(2026, 3, 1)) == Decimal("3.50")  # listed wins


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "gpu", "gpu_count": 1},
        {"kind": "gpu", "gpu_type": "h200", "gpu_count": 0},
        {"kind": "gpu_share", "gpu_type": "h200"},
        {"kind": "suspended"},
        {"kind": "suspended", "memory_gib": -1.0},
        {"kind": "gpu_share", "gpu_type": "h200", "memory_gib": float("nan")},
    ],
)
def test_incoherent_resource_uses_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"needs|must be"):
        ResourceUse(**kwargs)  # type: ignore[arg-type]


# --- effective dates --------------------------------------------------------------------------


def test_an_interval_across_a_price_change_is_priced_part_old_part_new() -> None:
    # The change is at 12:00 UTC (14:00+02:00): 2 h at 3.50, then 3 h at 3.20.
    cost = book().cost_micros(H200, utc(2026, 7, 1, 10), utc(2026, 7, 1, 15))
    assert cost == 2 * 3_500_000 + 3 * 3_200_000


def test_adding_a_price_change_keeps_old_intervals_at_their_old_price() -> None:
    june = (utc(2026, 6, 1), utc(2026, 7, 1, 12))
    august = (utc(2026, 8, 1), utc(2026, 8, 2))
    assert book(JANUARY).cost_micros(H200, *june) == book(JULY).cost_micros(H200, *june)
    assert book(JANUARY).cost_micros(H200, *august) == 24 * 3_500_000
    assert book(JULY).cost_micros(H200, *august) == 24 * 3_200_000


def test_the_first_entry_also_prices_earlier_time() -> None:
    assert book().cost_micros(CPU, utc(2025, 12, 31), utc(2026, 1, 1)) == 24 * 50_000


def test_the_rate_in_force_is_read_at_the_instant_asked() -> None:
    assert book().hourly_rate(H200, utc(2026, 7, 1, 11, 59)) == Decimal("3.50")
    assert book().hourly_rate(H200, utc(2026, 7, 1, 12)) == Decimal("3.20")
    assert book().hourly_rate(
        H200, datetime(2026, 7, 1, 14, tzinfo=timezone(timedelta(hours=2)))
    ) == Decimal("3.20")


def test_omitted_fields_inherit_and_tables_merge_type_by_type() -> None:
    later = book().tariffs[1]
    assert later.gpu_hour == {"rtx4090": Decimal("0.40"), "h200": Decimal("3.20")}
    assert later.cpu_hour == Decimal("0.07")
    assert later.storage_gib_month == Decimal("0.10")
    assert later.share_gib_hour_default == Decimal("0.02")
    rtx = ResourceUse(kind="gpu", gpu_type="rtx4090", gpu_count=1)
    assert book().hourly_rate(rtx, utc(2026, 8, 1)) == Decimal("0.40")


def test_a_later_zero_price_is_a_price_not_an_omission() -> None:
    text = JANUARY + "  - effective_from: 2026-02-01\n    storage_gib_month: 0\n    cpu_hour: 0.0\n"
    assert book(text).hourly_rate(CPU, utc(2026, 3, 1)) == 0
    assert book(text).storage_cost_micros(10, utc(2026, 3, 1), utc(2026, 4, 1)) == 0


def test_prices_never_given_are_free_but_gpu_types_are_not() -> None:
    minimal = book("currency: EUR\nprices:\n  - effective_from: 2026-01-01\n")
    assert minimal.cost_micros(CPU, utc(2026, 1, 1), utc(2026, 2, 1)) == 0
    with pytest.raises(MissingPrice):
        minimal.hourly_rate(H200, utc(2026, 1, 1))


# --- storage, rounding, arguments --------------------------------------------------------------


def test_storage_is_priced_per_gib_month_of_720_hours() -> None:
    assert book().storage_cost_micros(10, utc(2026, 2, 1), utc(2026, 3, 3)) == 1_000_000
    assert book().storage_cost_micros(20, utc(2026, 2, 1), utc(2026, 2, 2, 12)) == 100_000
    assert book().storage_cost_micros(Decimal("0.5"), utc(2026, 2, 1), utc(2026, 2, 1)) == 0


def test_storage_across_a_price_change() -> None:
    text = JULY + "    storage_gib_month: 0.20\n"
    cost = book(text).storage_cost_micros(36, utc(2026, 7, 1), utc(2026, 7, 2))
    assert cost == 36 * 100_000 * 12 // 720 + 36 * 200_000 * 12 // 720  # 0.06 + 0.12


ONE_MICRO_PER_HOUR = (
    "currency: USD\nprices:\n  - effective_from: 2026-01-01\n    cpu_hour: 0.000001\n"
)


@pytest.mark.parametrize(("minutes", "micros"), [(30, 0), (90, 2), (150, 2), (210, 4), (31, 1)])
def test_rounding_is_half_even_at_micro_units(minutes: int, micros: int) -> None:
    start = utc(2026, 3, 1)
    end = start + timedelta(minutes=minutes)
    assert book(ONE_MICRO_PER_HOUR).cost_micros(CPU, start, end) == micros


def test_rounding_happens_once_per_call_not_per_price_period() -> None:
    # A change of another price still cuts the interval; two half micros must make one micro.
    text = (
        ONE_MICRO_PER_HOUR
        + "  - effective_from: 2026-03-01T12:00:00Z\n    cpu_hour: 0.000001\n    gpu_hour: {h200: 9}\n"
    )
    assert book(text).cost_micros(CPU, utc(2026, 3, 1, 11, 30), utc(2026, 3, 1, 12, 30)) == 1


def test_times_in_any_zone_price_the_same_instants() -> None:
    plus_two = timezone(timedelta(hours=2))
    local = book().cost_micros(
        H200, datetime(2026, 7, 1, 12, tzinfo=plus_two), datetime(2026, 7, 1, 17, tzinfo=plus_two)
    )
    assert local == book().cost_micros(H200, utc(2026, 7, 1, 10), utc(2026, 7, 1, 15))


def test_naive_and_backwards_intervals_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        book().cost_micros(CPU, datetime(2026, 1, 1), utc(2026, 1, 2))
    with pytest.raises(ValueError, match="timezone-aware"):
        book().hourly_rate(CPU, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="before it starts"):
        book().storage_cost_micros(1, utc(2026, 1, 2), utc(2026, 1, 1))
    assert book().cost_micros(H200, utc(2026, 1, 2), utc(2026, 1, 2)) == 0


def test_the_default_book_is_free_in_usd_for_any_use() -> None:
    free = PriceBook.default()
    assert free.currency == "USD"
    uses = [H200, CPU, ResourceUse(kind="gpu_share", gpu_type="new", memory_gib=4)]
    assert all(free.cost_micros(u, utc(2026, 1, 1), utc(2027, 1, 1)) == 0 for u in uses)
    assert free.storage_cost_micros(100, utc(2026, 1, 1), utc(2027, 1, 1)) == 0


# --- money ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micros", "currency", "text"),
    [
        (12_345_678, "USD", "12.35 USD"),
        (12_345_000, "USD", "12.34 USD"),  # half to even
        (12_355_000, "EUR", "12.36 EUR"),
        (12_345_001, "USD", "12.35 USD"),
        (0, "USD", "0.00 USD"),
        (-1_500_000, "USD", "-1.50 USD"),
        (-1, "USD", "0.00 USD"),  # no negative zero
        (1_234_500_000, "JPY", "1234 JPY"),
        (1_235_500_000, "JPY", "1236 JPY"),
        (1_234_567, "KWD", "1.235 KWD"),
        (123_456_789_000_000, "CNY", "123456789.00 CNY"),
    ],
)
def test_format_money(micros: int, currency: str, text: str) -> None:
    assert format_money(micros, currency) == text


# --- files ------------------------------------------------------------------------------------


BAD_FILES = {
    "non-increasing dates": (
        JANUARY + "  - effective_from: 2026-03-01\n  - effective_from: 2026-02-01\n",
        "prices[2].effective_from",
        "is not after prices[1]",
    ),
    "repeated date": (
        JANUARY + "  - effective_from: 2026-01-01T00:00:00Z\n",
        "prices[1].effective_from",
        "is not after prices[0]",
    ),
    "negative price": (
        JULY.replace("h200: 3.20", "h200: -3.20"),
        "prices[1].gpu_hour.h200",
        "greater than or equal to 0",
    ),
    "unknown field": (
        JANUARY.replace("cpu_hour:", "cpu_hours:"),
        "prices[0].cpu_hours",
        "unknown field",
    ),
    "bad currency": (JANUARY.replace("USD", "dollars"), "currency", "ISO 4217"),
    "YAML syntax error": (
        JANUARY.replace("{rtx4090: 0.40,", "{rtx4090: 0.40,]"),
        "line 4",
        "not valid YAML",
    ),
    "naive date-time": (
        JANUARY.replace("2026-01-01", "2026-01-01 08:00:00"),
        "prices[0].effective_from",
        "needs a time zone",
    ),
    "date as a number": (
        JANUARY.replace("2026-01-01", "20260101"),
        "prices[0].effective_from",
        "expected a date",
    ),
    "not a price": (JANUARY.replace("0.05", "cheap"), "prices[0].cpu_hour", "valid decimal"),
    "no prices": ("currency: USD\nprices: []\n", "prices", "at least 1 item"),
    "not a mapping": ("- 1\n- 2\n", "must be a YAML mapping", "currency"),
}


@pytest.mark.parametrize(("text", "field", "problem"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_name_the_file_the_field_and_the_problem(
    text: str, field: str, problem: str
) -> None:
    with pytest.raises(PriceBookError) as caught:
        parse_pricebook(text, "/etc/aigc/prices.yaml")
    message = caught.value.message
    assert isinstance(caught.value, UserError)
    assert "/etc/aigc/prices.yaml" in message
    assert field in message and problem in message
    assert "pricebook.example.yaml" in message  # says where to look


def test_every_bad_field_is_reported_at_once() -> None:
    text = (
        JULY.replace("USD", "usd")
        .replace("h200: 3.20", "h200: -1")
        .replace("cpu_hour: 0.05", "cpu: 0.05")
    )
    with pytest.raises(PriceBookError) as caught:
        parse_pricebook(text, "p.yaml")
    lines = caught.value.message.splitlines()
    assert any(line.strip().startswith("currency:") for line in lines)
    assert any(line.strip().startswith("prices[1].gpu_hour.h200:") for line in lines)
    assert any(line.strip().startswith("prices[0].cpu:") for line in lines)


def test_load_pricebook_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(JULY, encoding="utf-8")
    assert load_pricebook(good).source == str(good)
    assert load_pricebook(good).currency == "USD"
    bad = tmp_path / "bad.yaml"
    bad.write_text(JANUARY.replace("0.05", "-0.05"), encoding="utf-8")
    with pytest.raises(PriceBookError, match=r"bad\.yaml"):
        load_pricebook(bad)
    with pytest.raises(PriceBookError, match=r"cannot read price book .*missing\.yaml"):
        load_pricebook(tmp_path / "missing.yaml")


def test_the_example_file_is_valid_and_changes_the_h200_price_in_july() -> None:
    example = load_pricebook(EXAMPLE)
    assert example.currency == "USD"
    assert example.hourly_rate(H200, utc(2026, 6, 30)) == Decimal("3.50")
    assert example.hourly_rate(H200, utc(2026, 7, 1)) == Decimal("3.20")
    unlisted = ResourceUse(kind="gpu", gpu_type="l4", gpu_count=1)
    assert example.hourly_rate(unlisted, utc(2026, 7, 1)) == Decimal("1.00")


# --- properties -------------------------------------------------------------------------------

prices = st.sampled_from(["0", "0.000001", "0.05", "0.4", "1.8", "3.333333", "12.5"])
instants = st.datetimes(
    min_value=datetime(2025, 6, 1),  # hypothesis wants naive bounds
    max_value=datetime(2027, 6, 1),
    timezones=st.just(UTC),
)


@st.composite
def price_books(draw: st.DrawFn) -> PriceBook:
    dates = sorted(set(draw(st.lists(instants, min_size=1, max_size=5))))
    entries = "".join(
        f"  - effective_from: {d.isoformat()}\n"
        f"    gpu_hour: {{h200: {draw(prices)}}}\n"
        f"    cpu_hour: {draw(prices)}\n"
        f"    storage_gib_month: {draw(prices)}\n"
        for d in dates
    )
    return parse_pricebook(f"currency: USD\nprices:\n{entries}", "generated.yaml")


uses = st.sampled_from([H200, CPU, ResourceUse(kind="gpu", gpu_type="h200", gpu_count=3)])


@settings(max_examples=200, deadline=None, database=None)
@given(
    prices=price_books(),
    use=uses,
    start=instants,
    length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=75)),
    period=st.sampled_from(PERIODS),
)
def test_cost_of_an_interval_is_the_sum_of_its_pieces_within_rounding(
    prices: PriceBook, use: ResourceUse, start: datetime, length: timedelta, period: Period
) -> None:
    pieces = split(start, start + length, period)
    whole = prices.cost_micros(use, start, start + length)
    parts = sum(prices.cost_micros(use, a, b) for a, b in pieces)
    assert abs(whole - parts) <= len(pieces)
    storage_parts = sum(prices.storage_cost_micros(7, a, b) for a, b in pieces)
    assert abs(prices.storage_cost_micros(7, start, start + length) - storage_parts) <= len(pieces)


@settings(max_examples=150, deadline=None, database=None)
@given(
    prices=price_books(),
    start=instants,
    length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
    price=prices,
)
def test_a_new_price_change_never_reprices_time_before_it(
    prices: PriceBook, start: datetime, length: timedelta, price: str
) -> None:
    end = start + length
    last = prices.tariffs[-1].effective_from
    change = max(end, last) + timedelta(seconds=1)
    text = (
        "currency: USD\nprices:\n"
        + "".join(
            f"  - effective_from: {t.effective_from.isoformat()}\n"
            f"    gpu_hour: {{h200: {t.gpu_hour['h200']}}}\n    cpu_hour: {t.cpu_hour}\n"
            for t in prices.tariffs
        )
        + f"  - effective_from: {change.isoformat()}\n    cpu_hour: {price}\n    gpu_hour: {{h200: {price}}}\n"
    )
    extended = parse_pricebook(text, "extended.yaml")
    for use in (H200, CPU):
        assert extended.cost_micros(use, start, end) == prices.cost_micros(use, start, end)
