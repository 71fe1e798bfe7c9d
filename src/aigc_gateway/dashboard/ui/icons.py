"""The engine icons the gateway serves (``dashboard/ui/static/icons/<name>.svg``), so that no page depends
on the visitor's system having an emoji font. Templates name one (``display.icon``); without
one, the family's icon is used if the gateway ships it, else ``default``."""

from __future__ import annotations

from functools import cache
from pathlib import Path

ICONS_DIR = Path(__file__).resolve().parent / "static" / "icons"
DEFAULT = "default"


@cache
def shipped() -> frozenset[str]:
    """The icon names the gateway ships (read once: they are part of the package)."""
    return frozenset(p.stem for p in ICONS_DIR.glob("*.svg"))


def icon_name(icon: str | None, family: str) -> str:
    """The icon a template is shown with: its own, else its family's, else the default."""
    for name in (icon, family):
        if name and name in shipped():
            return name
    return DEFAULT


def icon_url(icon: str | None, family: str) -> str:
    return f"/static/icons/{icon_name(icon, family)}.svg"
