"""Plain data the dashboard pages show, and the filters that format it. The page routes
(``dashboard/routes/user.py``) fill these from the store and services; this module imports neither."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote

STABLE_STATES = frozenset({"queued", "running", "paused", "failed", "deleted"})
STATES = (
    "pending",
    "queued",
    "starting",
    "running",
    "stopping",
    "paused",
    "failed",
    "deleting",
    "deleted",
)
START_STEPS = 5


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking at the page, and where: for the top navigation."""

    name: str
    is_admin: bool
    csrf_token: str | None
    lang: str
    path: str
    """The page's path and query (where the language switch comes back to)."""
    local_account: bool = True

    @property
    def here(self) -> str:
        return quote(self.path, safe="")


@dataclass(frozen=True, slots=True)
class ShareView:
    id: str
    target: str
    kind: str
    """``user`` or ``team``."""


@dataclass(frozen=True, slots=True)
class CardGpu:
    """The GPUs an instance holds."""

    count: int
    types: list[str]
    """The cards' types (their ids where a card left the inventory)."""
    share_gib: float | None
    """A memory share of one card; None for whole cards."""
    placement: str
    """Why these cards were chosen (the scheduler's words)."""
    memory_used_mib: int | None
    """GPU memory the engine holds now; None where unknown."""


@dataclass(frozen=True, slots=True)
class CardQueue:
    """A queued instance's place in the GPU queue."""

    position: int
    length: int
    estimate_s: float | None
    """None: no release seen yet, so no estimate."""

    @property
    def minutes(self) -> int | None:
        return minutes(self.estimate_s)


@dataclass(frozen=True, slots=True)
class InstanceCard:
    id: str
    name: str
    state: str
    desired_state: str
    reason: str
    exit_code: int | None
    url: str
    template_id: str
    template_name: str
    icon: str
    """The URL of the engine's icon (``dashboard.ui.icons``)."""
    family: str
    owner_name: str
    is_owner: bool
    after: int
    """The newest stored event's id: the live stream continues from there."""
    created_at: datetime
    shares: list[ShareView] = field(default_factory=list)
    gpu: CardGpu | None = None
    queue: CardQueue | None = None
    actions: tuple[str, ...] = ()
    """What the state allows (``domain.actions``); the card shows only these buttons."""

    @property
    def progress(self) -> int:
        return START_STEPS if self.state == "running" else 0


@dataclass(frozen=True, slots=True)
class TemplateCard:
    id: str
    name: str
    description: str
    icon: str
    """The URL of the engine's icon (``dashboard.ui.icons``)."""
    version: str
    family: str
    installed: bool
    install_problem: str
    gpu_count: int
    gpu_memory_gib: float | None
    """A memory share of one GPU instead of whole GPUs."""
    cpu: float
    memory_gib: float
    quota_gib: float
    source: str = ""


@dataclass(frozen=True, slots=True)
class AdminInstanceRow:
    id: str
    name: str
    owner: str
    template_id: str
    state: str
    desired_state: str
    reason: str
    url: str
    created_at: datetime
    actions: tuple[str, ...] = ()
    """What the state allows: the batch buttons act only on rows that allow their action."""


@dataclass(frozen=True, slots=True)
class UserRow:
    id: str
    name: str
    display_name: str
    is_admin: bool
    disabled: bool
    sign_in: str
    teams: list[tuple[str, str]]
    """(team id, team name)."""
    created_at: datetime


@dataclass(frozen=True, slots=True)
class HealthCheck:
    key: str
    """Catalog key of the check's name."""
    ok: bool
    detail: str


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC") if at is not None else ""


def num(x: float) -> str:
    """``0.5`` → ``0.5``, ``2.0`` → ``2``."""
    return f"{x:g}"


def minutes(seconds: float | None) -> int | None:
    """A wait in whole minutes, at least 1 (app.js rounds the same way); None stays None."""
    return None if seconds is None else max(1, round(seconds / 60))


def percent(used: int, total: int) -> int:
    return min(100, round(100 * used / total)) if total > 0 else 0


@dataclass(frozen=True, slots=True)
class FileRow:
    name: str
    path: str
    is_dir: bool
    size: int
    modified: datetime
    image: bool
    is_link: bool = False
    """A symbolic link: shown, never followed or downloaded."""


@dataclass(frozen=True, slots=True)
class FamilyRow:
    family: str
    used_bytes: int
    quota_bytes: int
    level: str = "ok"
    """``ok``, ``warn`` (90 % of the quota or more) or ``over`` (new starts refused)."""


def crumbs(path: str) -> list[tuple[str, str]]:
    """``"a/b"`` → ``[("a", "a"), ("b", "a/b")]``: the folders down to ``path``."""
    parts = [p for p in path.split("/") if p]
    return [(name, "/".join(parts[: i + 1])) for i, name in enumerate(parts)]
