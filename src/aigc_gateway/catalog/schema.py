"""The template schema. One YAML file describes one version of one engine.

Validation errors name the file, the field and the problem; see :mod:`.loader`.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aigc_gateway.dashboard.ui import icons

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
PLACEHOLDERS = ("port", "data_dir", "instance_id", "socket", "python", "install_dir")
"""What ``{…}`` may name in a launch command, env value, working_dir or requirement: the runtime
fills the first three when it starts the engine, the loader the last two. Anything else would
reach the engine as text, so it is refused."""


def check_placeholders(text: str, *, known: tuple[str, ...] = PLACEHOLDERS) -> str:
    """Raise ``ValueError`` naming the first placeholder in ``text`` that is not ``known``
    (with the close match, if any); return ``text``."""
    for name in PLACEHOLDER.findall(text):
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" (did you mean {{{close[0]}}}?)" if close else ""
        allowed = ", ".join(f"{{{k}}}" for k in known) or "none"
        raise ValueError(
            f"unknown placeholder {{{name}}} in {text!r}{hint}; the known ones are: {allowed}"
        )
    return text


def check_env_name(name: str) -> str:
    if not ENV_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid environment variable name (letters, digits and _, "
            "not starting with a digit)"
        )
    return name


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Localized(Strict):
    """A text in English and Simplified Chinese; ``zh-CN`` falls back to English."""

    en: str = Field(min_length=1)
    zh_CN: str | None = Field(default=None, alias="zh-CN")

    def get(self, lang: str) -> str:
        return self.zh_CN if lang.lower().startswith("zh") and self.zh_CN else self.en


class Display(Strict):
    name: Localized
    description: Localized | None = None
    icon: str | None = None
    """The name of an icon the gateway serves (``dashboard/ui/static/icons/<name>.svg``: ``demo``,
    ``jupyterlab``, ``comfyui``, …); default: the family's icon if there is one, else
    ``default``."""

    @field_validator("icon")
    @classmethod
    def _shipped_icon(cls, v: str | None) -> str | None:
        if v is None or v in icons.shipped():
            return v
        close = difflib.get_close_matches(v, sorted(icons.shipped()), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        names = ", ".join(sorted(icons.shipped()))
        raise ValueError(
            f"{v!r} is not an icon the gateway serves{hint}; name one of: {names} "
            "(emoji are not used: they show as empty boxes without an emoji font)"
        )


class Launch(Strict):
    command: Annotated[list[str], Field(min_length=1)]
    """argv; may use ``{port}``, ``{data_dir}``, ``{instance_id}``, ``{python}`` (the gateway's
    Python) and ``{install_dir}``."""
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str = "{data_dir}"
    port: int | None = Field(default=None, ge=1, le=65535)
    """The engine's fixed port; empty: the runtime picks one and passes it as ``{port}``."""
    port_env: str | None = "PORT"
    install_dir: str | None = None
    """Where a third-party engine is installed on the host. If set and missing, the template is
    listed as "not installed on this host" instead of failing at start."""
    requires: list[str] = Field(default_factory=list)
    """What must be present for the engine to count as installed: paths (may use
    ``{install_dir}``), or ``python:<module>`` for a module importable by the gateway's Python."""
    network: Literal["none", "outbound"] = "none"
    """What the engine may reach: ``none`` (default), only its own loopback inside its
    sandbox. ``outbound``: the internet too, through a user-mode network stack (pasta), with
    the host, private ranges and metadata addresses refused (an admin's
    ``sandbox_outbound_allow`` lets chosen private networks through). Needs Debian's ``passt``
    and ``nftables`` on the host; unsandboxed engines share the host's network either way."""
    stop_grace_s: float | None = Field(default=None, ge=0, le=600)
    """Seconds between the stop signal (SIGTERM) and the kill; empty: the gateway's
    ``stop_grace_s`` setting."""

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            check_env_name(name)
            check_placeholders(value)
        return v

    @field_validator("command", "requires")
    @classmethod
    def _list_placeholders(cls, v: list[str]) -> list[str]:
        for arg in v:
            check_placeholders(arg)
        return v

    @field_validator("working_dir")
    @classmethod
    def _text_placeholders(cls, v: str) -> str:
        return check_placeholders(v)

    @field_validator("port_env")
    @classmethod
    def _port_env_name(cls, v: str | None) -> str | None:
        return None if v is None else check_env_name(v)

    @model_validator(mode="after")
    def _install_dir_set(self) -> Launch:
        texts = [*self.command, *self.env.values(), self.working_dir, *self.requires]
        if self.install_dir is None and any("{install_dir}" in t for t in texts):
            raise ValueError("{install_dir} is used but launch.install_dir is not set")
        return self


class Readiness(Strict):
    http: str | None = "/"
    """Ready when GET on this path answers below 500."""
    tcp: bool = False
    """Ready when the port accepts a connection (set ``http: null``)."""
    timeout_s: float = Field(default=120.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _one_kind(self) -> Readiness:
        if self.tcp == (self.http is not None):
            raise ValueError("set exactly one of `http: <path>` or `tcp: true`")
        if self.http is not None and not self.http.startswith("/"):
            raise ValueError("`http` must be a path starting with '/'")
        if self.http is not None:
            check_placeholders(self.http, known=())  # nothing fills them in a readiness path
        return self


class GpuRequest(Strict):
    count: int = Field(default=0, ge=0, le=16)
    """Whole GPUs."""
    memory_gib: float | None = Field(default=None, gt=0)
    """A memory share of one GPU instead of whole GPUs."""
    types: list[str] = Field(default_factory=list)
    """Accepted GPU types (empty: any)."""
    preferred_types: list[str] = Field(default_factory=list)
    priority: int = Field(default=0, ge=-100, le=100)
    """Place in the GPU queue: higher goes first; equal priorities are first in, first out."""

    @model_validator(mode="after")
    def _count_or_share(self) -> GpuRequest:
        if self.count and self.memory_gib is not None:
            raise ValueError(
                "ask for either whole GPUs (`count`) or a share (`memory_gib`), not both"
            )
        return self

    @property
    def wanted(self) -> bool:
        return self.count > 0 or self.memory_gib is not None


class Resources(Strict):
    cpu: float = Field(default=1.0, gt=0)
    memory_gib: float = Field(default=2.0, gt=0)
    gpu: GpuRequest = GpuRequest()


class Storage(Strict):
    quota_gib: float = Field(default=20.0, gt=0)
    data_env: str | None = None
    """An environment variable that receives the data folder, for engines that read one."""

    @field_validator("data_env")
    @classmethod
    def _data_env_name(cls, v: str | None) -> str | None:
        return None if v is None else check_env_name(v)


class AccessPolicy(Strict):
    path_mode: bool = False
    """Also serve the engine at ``/i/<slug>/`` on the gateway's host (engines that support a
    root path, given as ``{base_path}``). The engine's pages then share the gateway's origin:
    turn this on only for engines you trust."""
    wake_on_request: bool = True
    """A request for a paused instance starts it (if the user may)."""


class IdlePolicy(Strict):
    pause_after_minutes: float | None = Field(default=60.0, gt=0)
    """Pause an instance nobody used for this long (null: never)."""


class Template(Strict):
    """One engine version an admin offers."""

    id: str = Field(pattern=ID_PATTERN)
    family: str = Field(pattern=ID_PATTERN)
    """Engine family; all versions of a family share the user's data volume."""
    version: str = Field(min_length=1, max_length=64)
    display: Display
    launch: Launch
    readiness: Readiness = Readiness()
    resources: Resources = Resources()
    storage: Storage = Storage()
    idle: IdlePolicy = IdlePolicy()
    access: AccessPolicy = AccessPolicy()
    price_class: str = "cpu"
    enabled: bool = True
    schema_version: Literal[1] = 1

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v: object) -> object:
        # YAML reads `version: 1.10` as the number 1.1: what the admin meant is already lost, so
        # ask for quotes instead of guessing. Whole numbers are unambiguous.
        if isinstance(v, bool | float):
            raise ValueError(
                f'write the version in quotes, e.g. version: "{v}" (YAML reads it as a number)'
            )
        return str(v) if isinstance(v, int) else v
