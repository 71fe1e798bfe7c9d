"""Bar charts for the usage pages, as geometry: data in, rectangles and label positions out.

Pure (no I/O, no markup): ``html/_charts.html`` draws a :class:`BarChart` as inline SVG,
so the pages need no chart library and no script. Coordinates are SVG user units in a
``0 0 width height`` view box. Negative values (a correction can credit money) are drawn as
empty bars; the bar's text still says the value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Orientation = Literal["horizontal", "vertical"]

FONT = 12
"""Label font size, in user units."""
CHAR = 7
"""The width of an average character at :data:`FONT`: how many fit where a label goes."""


@dataclass(frozen=True, slots=True)
class Datum:
    label: str
    value: float
    """What the bar's length is proportional to."""
    text: str
    """The value as people read it (``"12.35 USD"``): shown by the bar and in its ``<title>``."""
    tick: str = ""
    """A shorter label to draw (``"11-28"`` for ``"2026-11-28"``); the label where empty."""


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    """The full label (the ``<title>``)."""
    short: str
    """The label as drawn, clipped to fit; empty where this bar's label is not drawn."""
    text: str
    value: float
    x: float
    y: float
    width: float
    height: float
    label_x: float
    label_y: float
    text_x: float
    """Where the value text goes; a vertical chart draws values only in the titles."""
    text_y: float


@dataclass(frozen=True, slots=True)
class BarChart:
    orientation: Orientation
    title: str
    width: int
    height: int
    bars: tuple[Bar, ...]
    top_text: str = ""
    """A vertical chart's scale: the largest value, written above the plot."""
    baseline: float = 0
    """A vertical chart's axis line (y)."""

    @property
    def description(self) -> str:
        """Every bar in words, for screen readers (``<desc>``)."""
        return "; ".join(f"{b.label}: {b.text}" for b in self.bars)


def clip(label: str, chars: int) -> str:
    """``label`` shortened to ``chars`` characters, ending in an ellipsis when cut."""
    if chars < 1:
        return ""
    return label if len(label) <= chars else label[: chars - 1] + "…"


def _scale(data: Sequence[Datum]) -> float:
    """The largest value, or 1 where none is positive (every bar then has length 0)."""
    top = max((d.value for d in data), default=0.0)
    return top if top > 0 else 1.0


def _fraction(value: float, top: float) -> float:
    return min(1.0, max(0.0, value / top))


def horizontal(
    data: Sequence[Datum],
    *,
    title: str,
    width: int = 480,
    row: int = 22,
    gap: int = 8,
    label_width: int = 136,
    text_width: int = 150,
) -> BarChart:
    """One row per datum, top to bottom: the label on the left (right-aligned), the bar, then
    its text. The largest value fills the space between label and text columns."""
    plot = max(1, width - label_width - text_width)
    top = _scale(data)
    chars = max(1, label_width // CHAR - 1)
    bars = []
    for n, d in enumerate(data):
        y = gap + n * (row + gap)
        length = round(plot * _fraction(d.value, top), 1)
        middle = y + row / 2 + FONT / 3
        bars.append(
            Bar(
                label=d.label,
                short=clip(d.tick or d.label, chars),
                text=d.text,
                value=d.value,
                x=label_width,
                y=y,
                width=length,
                height=row,
                label_x=label_width - 6,
                label_y=round(middle, 1),
                text_x=round(label_width + length + 6, 1),
                text_y=round(middle, 1),
            )
        )
    height = gap + len(bars) * (row + gap)
    return BarChart("horizontal", title, width, height, tuple(bars))


def vertical(
    data: Sequence[Datum],
    *,
    title: str,
    width: int = 640,
    height: int = 200,
    max_labels: int = 8,
) -> BarChart:
    """One column per datum, left to right, from a common baseline. Only every k-th label is
    drawn (at most ``max_labels``, always the first); each bar's ``<title>`` has its own. The
    largest datum's text is written above the plot as the scale."""
    head, foot, side = FONT + 8, FONT + 10, 18
    plot_h = max(1, height - head - foot)
    baseline = head + plot_h
    slot = (width - 2 * side) / max(1, len(data))
    bar_w = max(1.0, slot * 0.75)
    every = max(1, math.ceil(len(data) / max(1, max_labels)))
    chars = max(1, int(slot * every // CHAR) - 1)
    top = _scale(data)
    bars = []
    for n, d in enumerate(data):
        x = side + n * slot + (slot - bar_w) / 2
        length = round(plot_h * _fraction(d.value, top), 1)
        centre = round(x + bar_w / 2, 1)
        bars.append(
            Bar(
                label=d.label,
                short=clip(d.tick or d.label, chars) if n % every == 0 else "",
                text=d.text,
                value=d.value,
                x=round(x, 1),
                y=round(baseline - length, 1),
                width=round(bar_w, 1),
                height=length,
                label_x=centre,
                label_y=baseline + FONT + 4,
                text_x=centre,
                text_y=round(baseline - length - 4, 1),
            )
        )
    highest = max(data, key=lambda d: d.value, default=None)
    scale = highest.text if highest is not None and highest.value > 0 else ""
    return BarChart(
        "vertical", title, width, height, tuple(bars), top_text=scale, baseline=baseline
    )
