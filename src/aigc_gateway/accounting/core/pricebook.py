"""The admin's price book: what GPU, CPU, suspended and storage time costs, in which currency, since when.

Pure: parsing text, looking up prices and integrating them over time. Reading the file is the only
I/O (:func:`load_pricebook`). The file is YAML (``deploy/pricebook.example.yaml`` is a commented
copy)::

    currency: USD                 # ISO 4217 code, three capital letters
    prices:                       # price changes, oldest first
      - effective_from: 2026-01-01
        gpu_hour: {rtx4090: 0.40, h200: 3.50}   # per whole GPU-hour, by GPU type
        gpu_hour_default: 1.00                  # GPU types not listed (optional)
        share_gib_hour: {h200: 0.03}            # per GiB-hour of a GPU memory share, by GPU type
        share_gib_hour_default: 0.02            # GPU types not listed (optional)
        cpu_hour: 0.05                          # an instance running without a GPU
        suspended_gib_hour: 0.0                 # an instance suspended in host memory, per GiB-hour
        storage_gib_month: 0.10                 # user data, per GiB-month (a month is 720 h)

The rules an admin can rely on:

- Each entry applies from its ``effective_from`` until the next entry's; the first entry also prices
  anything earlier. A plain date means 00:00 UTC; a date-time must carry its zone (``Z`` or
  ``+02:00``). Dates must strictly increase.
- Adding an entry never changes the cost of time before its date: intervals are cut at every
  ``effective_from`` and each piece is priced at the rate in force then.
- An entry only lists what changes. An omitted (or ``null``) field keeps the previous entry's value;
  ``gpu_hour`` and ``share_gib_hour`` are merged type by type, so ``gpu_hour: {h200: 4.00}`` changes
  the H200 price and keeps every other type's. A price never given is 0, except per-type prices:
  a GPU type with no price and no ``*_default`` is an error at lookup (:class:`MissingPrice`), so a
  new GPU type is never silently free.
- Prices are decimal numbers >= 0. Costs are integers in micro-units of the currency (1e-6), exact
  until one final round-half-even per :meth:`PriceBook.cost_micros` call.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from aigc_gateway.accounting.core.periods import as_utc, split_at
from aigc_gateway.errors import UserError

UseKind = Literal["gpu", "gpu_share", "cpu", "suspended"]
PerTypeTable = Literal["gpu_hour", "share_gib_hour"]
_T = TypeVar("_T")

MICROS = 1_000_000
HOURS_PER_MONTH = 720
"""Storage is priced per GiB-month; a month is 30 days for pro-rating, whatever the calendar says."""

EXAMPLE = "deploy/pricebook.example.yaml"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EXACT = Context(prec=100)  # products of two prices/sizes never need rounding
_CURRENCY = re.compile(r"[A-Z]{3}")

# ISO 4217 minor units where they are not 2; enough for display, not a full table.
MINOR_DIGITS: Mapping[str, int] = {
    **dict.fromkeys(("JPY", "KRW", "VND", "CLP", "ISK", "PYG", "UGX", "XAF", "XOF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}

Price = Annotated[Decimal, Field(ge=0)]


class PriceBookError(UserError):
    """The price book file is invalid; the message names the file, each bad field and the fix."""

    code = "invalid_price_book"


class MissingPrice(UserError):
    """The price book has no price for a GPU type in use; the message says what to add."""

    code = "price_missing"


# --- the file ---------------------------------------------------------------------------------


def _instant(value: object) -> object:
    """Turn a YAML date, date-time or ISO string into a UTC datetime; pydantic reports the rest."""
    bad = PydanticCustomError(
        "bad_date", "expected a date like 2026-03-01 or a date-time like 2026-03-01T12:00:00Z"
    )
    if isinstance(value, int | float):  # pydantic would read 20260301 as a Unix timestamp
        raise bad
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value) if len(value) == 10 else datetime.fromisoformat(value)
        except ValueError:
            raise bad from None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise PydanticCustomError(
                "naive_datetime",
                "a date-time needs a time zone, like 2026-03-01T12:00:00Z "
                "(a plain date such as 2026-03-01 means 00:00 UTC)",
            )
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


class PriceChange(BaseModel):
    """One entry of ``prices``: the prices that change from ``effective_from`` on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    effective_from: datetime
    gpu_hour: dict[str, Price] | None = None
    gpu_hour_default: Price | None = None
    share_gib_hour: dict[str, Price] | None = None
    share_gib_hour_default: Price | None = None
    cpu_hour: Price | None = None
    suspended_gib_hour: Price | None = None
    storage_gib_month: Price | None = None

    _check_instant = field_validator("effective_from", mode="before")(_instant)


class PriceBookFile(BaseModel):
    """The whole file, as written; :class:`PriceBook` is what the gateway prices with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str
    prices: list[PriceChange] = Field(min_length=1)

    @field_validator("currency", mode="after")
    @classmethod
    def _iso_4217(cls, value: str) -> str:
        if not _CURRENCY.fullmatch(value):
            raise PydanticCustomError(
                "currency", "must be an ISO 4217 code of three capital letters, like USD or EUR"
            )
        return value


# --- the resolved price book ------------------------------------------------------------------


def _keep(new: _T | None, old: _T) -> _T:
    """An omitted (None) field inherits; note 0 is a price, not an omission."""
    return old if new is None else new


@dataclass(frozen=True, slots=True, kw_only=True)
class Tariff:
    """Every price in force from ``effective_from`` until the next tariff, inheritance resolved."""

    effective_from: datetime
    gpu_hour: Mapping[str, Decimal] = field(default_factory=dict)
    gpu_hour_default: Decimal | None = None
    share_gib_hour: Mapping[str, Decimal] = field(default_factory=dict)
    share_gib_hour_default: Decimal | None = None
    cpu_hour: Decimal = Decimal(0)
    suspended_gib_hour: Decimal = Decimal(0)
    storage_gib_month: Decimal = Decimal(0)

    def then(self, change: PriceChange) -> Tariff:
        """This tariff with ``change`` applied: given fields replace, per-type tables merge."""

        return Tariff(
            effective_from=change.effective_from,
            gpu_hour={**self.gpu_hour, **(change.gpu_hour or {})},
            gpu_hour_default=_keep(change.gpu_hour_default, self.gpu_hour_default),
            share_gib_hour={**self.share_gib_hour, **(change.share_gib_hour or {})},
            share_gib_hour_default=_keep(
                change.share_gib_hour_default, self.share_gib_hour_default
            ),
            cpu_hour=_keep(change.cpu_hour, self.cpu_hour),
            suspended_gib_hour=_keep(change.suspended_gib_hour, self.suspended_gib_hour),
            storage_gib_month=_keep(change.storage_gib_month, self.storage_gib_month),
        )

    def per_type(self, table: PerTypeTable, gpu_type: str) -> Decimal | None:
        """The per-type price of ``gpu_type`` in ``table``, else the table's default, else None."""
        if table == "gpu_hour":
            return self.gpu_hour.get(gpu_type, self.gpu_hour_default)
        return self.share_gib_hour.get(gpu_type, self.share_gib_hour_default)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceUse:
    """What an instance holds while it is billed.

    - ``gpu``: ``gpu_count`` (>= 1) whole GPUs of ``gpu_type``;
    - ``gpu_share``: a ``memory_gib`` slice of one GPU of ``gpu_type``;
    - ``cpu``: running without a GPU;
    - ``suspended``: suspended, holding ``memory_gib`` of host memory.
    """

    kind: UseKind
    gpu_type: str | None = None
    gpu_count: int = 0
    memory_gib: float | None = None

    def __post_init__(self) -> None:
        if self.kind in ("gpu", "gpu_share") and not self.gpu_type:
            raise ValueError(f"a {self.kind} use needs a gpu_type")
        if self.kind == "gpu" and self.gpu_count < 1:
            raise ValueError(f"a gpu use needs gpu_count >= 1, got {self.gpu_count}")
        if self.kind in ("gpu_share", "suspended") and self.memory_gib is None:
            raise ValueError(f"a {self.kind} use needs memory_gib")
        if self.memory_gib is not None and not 0 <= self.memory_gib < float("inf"):
            raise ValueError(f"memory_gib must be a finite number >= 0, got {self.memory_gib}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceBook:
    """Prices over time in one ``currency``; ``tariffs`` are non-empty and strictly increasing.

    ``source`` names where the prices came from (a file path), for error messages.
    """

    currency: str
    tariffs: tuple[Tariff, ...]
    source: str = "price book"

    def __post_init__(self) -> None:
        if not self.tariffs:
            raise ValueError("a price book needs at least one tariff")
        dates = [t.effective_from for t in self.tariffs]
        if any(b <= a for a, b in pairwise(dates)):
            raise ValueError("tariffs must be in strictly increasing effective_from order")

    @classmethod
    def default(cls) -> PriceBook:
        """Everything free, in USD: what the gateway uses when the admin configured no price book."""
        free = Decimal(0)
        tariff = Tariff(effective_from=_EPOCH, gpu_hour_default=free, share_gib_hour_default=free)
        return cls(currency="USD", tariffs=(tariff,), source="built-in free price book")

    @classmethod
    def from_file(cls, book: PriceBookFile, *, source: str) -> PriceBook:
        """Resolve inheritance; the entries' order must already be checked (see parse_pricebook)."""
        tariffs: list[Tariff] = []
        current = Tariff(effective_from=_EPOCH)
        for change in book.prices:
            current = current.then(change)
            tariffs.append(current)
        return cls(currency=book.currency, tariffs=tuple(tariffs), source=source)

    def tariff_at(self, at: datetime) -> Tariff:
        """The tariff in force at ``at`` (the first one before its date); ``at`` must be aware."""
        index = bisect_right([t.effective_from for t in self.tariffs], as_utc(at, name="at"))
        return self.tariffs[max(index - 1, 0)]

    def hourly_rate(self, use: ResourceUse, at: datetime) -> Decimal:
        """What ``use`` costs per hour at instant ``at``, in currency units.

        gpu: count * per-GPU price; gpu_share: GiB * per-GiB price; cpu: ``cpu_hour``;
        suspended: GiB * ``suspended_gib_hour``. :class:`MissingPrice` if a GPU type has no price.
        """
        tariff = self.tariff_at(at)
        if use.kind == "gpu":
            return _EXACT.multiply(Decimal(use.gpu_count), self._per_type(tariff, "gpu_hour", use))
        if use.kind == "gpu_share":
            return _EXACT.multiply(
                _gib(use.memory_gib), self._per_type(tariff, "share_gib_hour", use)
            )
        if use.kind == "cpu":
            return tariff.cpu_hour
        return _EXACT.multiply(_gib(use.memory_gib), tariff.suspended_gib_hour)

    def cost_micros(self, use: ResourceUse, start: datetime, end: datetime) -> int:
        """The cost of holding ``use`` over ``[start, end)``, in micro-units of the currency.

        The interval is cut at every price change and each piece priced at the rate in force at its
        start; the exact sum is rounded once, half to even. ``ValueError`` for naive datetimes or
        ``end < start``; an empty interval costs 0.
        """
        return self._integrate(start, end, lambda at: self.hourly_rate(use, at), hours_per_unit=1)

    def storage_cost_micros(self, gib: float | Decimal, start: datetime, end: datetime) -> int:
        """The cost of storing ``gib`` GiB of user data over ``[start, end)``, in micro-units.

        Priced per GiB-month of 720 h; cut at price changes and rounded like :meth:`cost_micros`.
        """
        size = _gib(gib)
        return self._integrate(
            start,
            end,
            lambda at: _EXACT.multiply(size, self.tariff_at(at).storage_gib_month),
            hours_per_unit=HOURS_PER_MONTH,
        )

    def _integrate(
        self,
        start: datetime,
        end: datetime,
        rate_at: Callable[[datetime], Decimal],
        *,
        hours_per_unit: int,
    ) -> int:
        cuts = [t.effective_from for t in self.tariffs[1:]]
        total = Fraction(0)
        for a, b in split_at(start, end, cuts):
            total += Fraction(rate_at(a)) * _microseconds(b - a)
        # rate [currency/unit] * us / (us per unit) * MICROS; the two 1e6 factors cancel.
        return round(total / (hours_per_unit * 3600))

    def _per_type(self, tariff: Tariff, table: PerTypeTable, use: ResourceUse) -> Decimal:
        gpu_type = use.gpu_type or ""
        price = tariff.per_type(table, gpu_type)
        if price is None:
            since = tariff.effective_from.isoformat()
            raise MissingPrice(
                f"{self.source}: no {table} price for GPU type {gpu_type!r} in the prices "
                f"effective from {since}, and no {table}_default. Add {gpu_type}: <price> under "
                f"{table}, or set {table}_default."
            )
        return price


def _gib(value: float | Decimal | None) -> Decimal:
    """A size as an exact Decimal of what was written (0.1 → 0.1, not its binary neighbour)."""
    size = Decimal(str(value)) if isinstance(value, float) else Decimal(value or 0)
    if not size.is_finite() or size < 0:
        raise ValueError(f"a size in GiB must be a finite number >= 0, got {value}")
    return size


def _microseconds(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


# --- loading ----------------------------------------------------------------------------------


def _field_path(loc: Iterable[int | str]) -> str:
    """``("prices", 1, "gpu_hour", "h200")`` → ``prices[1].gpu_hour.h200``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("["):
            path += part
        else:
            path += f".{part}" if path else part
    return path


def _describe(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        return f"unknown field (check its spelling; {EXAMPLE} lists every field)"
    return error["msg"]


def _order_problems(book: PriceBookFile) -> list[str]:
    problems = []
    for i, (a, b) in enumerate(pairwise(book.prices), start=1):
        if b.effective_from <= a.effective_from:
            problems.append(
                f"prices[{i}].effective_from: {b.effective_from.isoformat()} is not after "
                f"prices[{i - 1}] ({a.effective_from.isoformat()}); list price changes oldest "
                "first, at most one per date"
            )
    return problems


def _invalid(source: str, problems: list[str]) -> PriceBookError:
    lines = "\n".join(f"  {p}" for p in problems)
    return PriceBookError(
        f"price book {source} is invalid:\n{lines}\nFix the file; {EXAMPLE} documents every field."
    )


def parse_pricebook(text: str, source: str) -> PriceBook:
    """Parse a price book's YAML ``text``; ``source`` (the file name) appears in every error.

    :class:`PriceBookError` (a :class:`UserError`) lists every bad field as ``path: problem``.
    """
    try:
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise _invalid(source, [f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    if not isinstance(raw, dict):
        raise _invalid(source, ["the file must be a YAML mapping with `currency` and `prices`"])
    try:
        book = PriceBookFile.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{_field_path(e['loc']) or '(top)'}: {_describe(e)}" for e in exc.errors()]
        raise _invalid(source, problems) from exc
    if problems := _order_problems(book):
        raise _invalid(source, problems)
    return PriceBook.from_file(book, source=source)


def load_pricebook(path: Path | str) -> PriceBook:
    """Read and parse the price book at ``path``; :class:`PriceBookError` if unreadable or invalid."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise PriceBookError(f"cannot read price book {path}: {reason}") from exc
    return parse_pricebook(text, str(path))


def format_money(micros: int, currency: str) -> str:
    """``12_345_678, "USD"`` → ``"12.35 USD"``: the currency's minor digits, rounded half to even.

    Two decimals unless :data:`MINOR_DIGITS` says otherwise (``"1235 JPY"``, ``"1.235 KWD"``).
    """
    digits = MINOR_DIGITS.get(currency, 2)
    amount = Decimal(micros).scaleb(-6).quantize(Decimal(1).scaleb(-digits), ROUND_HALF_EVEN)
    if amount.is_zero():
        amount = abs(amount)  # no "-0.00" for a tiny credit
    return f"{amount:f} {currency}"
