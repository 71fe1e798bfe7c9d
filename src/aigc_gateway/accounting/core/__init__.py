"""Cost accounting.

:mod:`.pricebook` is the admin's price book and the pure maths of pricing resource use over time;
:mod:`.periods` cuts time into UTC days, ISO weeks and months for reports; :mod:`.rounding` rounds
a report's exact figures once, with the parts still adding up. None does I/O beyond reading the
price book file.
"""

from __future__ import annotations

from aigc_gateway.accounting.core.periods import (
    PERIODS,
    Period,
    as_utc,
    next_period_start,
    period_label,
    period_start,
    split,
    split_at,
)
from aigc_gateway.accounting.core.pricebook import (
    HOURS_PER_MONTH,
    MICROS,
    MissingPrice,
    PriceBook,
    PriceBookError,
    PriceBookFile,
    PriceChange,
    ResourceUse,
    Tariff,
    UseKind,
    format_money,
    load_pricebook,
    parse_pricebook,
)
from aigc_gateway.accounting.core.rounding import apportion, apportion_within

__all__ = [
    "HOURS_PER_MONTH",
    "MICROS",
    "PERIODS",
    "MissingPrice",
    "Period",
    "PriceBook",
    "PriceBookError",
    "PriceBookFile",
    "PriceChange",
    "ResourceUse",
    "Tariff",
    "UseKind",
    "apportion",
    "apportion_within",
    "as_utc",
    "format_money",
    "load_pricebook",
    "next_period_start",
    "parse_pricebook",
    "period_label",
    "period_start",
    "split",
    "split_at",
]
