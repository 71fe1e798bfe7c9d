"""Gateway settings: one pydantic-settings model, from ``AIGC_*`` environment variables and an
optional YAML or TOML file (``AIGC_CONFIG`` or ``--config``). Environment variables win over the file.

Outside dev mode, a secret left at its default is refused at start, with the variable to set.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from aigc_gateway.errors import UserError

DEV_SECRET = "dev-only-insecure-secret"

PACKAGE_ROOT = Path(__file__).resolve().parent


def default_templates_dir() -> Path:
    """The shipped ``templates/`` folder: beside the source tree, or packaged with the code."""
    repo = PACKAGE_ROOT.parent.parent / "templates"
    return repo if repo.is_dir() else PACKAGE_ROOT / "builtin_templates"


class DeclaredGpu(BaseModel):
    """One GPU in a declared inventory (``gpus:`` in the config file).

    An entry whose ``id`` is the UUID of a card NVML finds on this host annotates that card (its
    pool, rank, price, labels, cordon); the card's type and memory then come from NVML and may be
    left out. Other entries add cards NVML cannot see (other hosts, planning, tests)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    """Stable id, e.g. the card's UUID (``GPU-…``), which engines get in CUDA_VISIBLE_DEVICES."""
    host: str = "local"
    index: int = Field(default=0, ge=0)
    type: str | None = Field(default=None, min_length=1, description="e.g. rtx4090, a100-80g")
    memory_gib: float | None = Field(default=None, gt=0)
    labels: dict[str, str] = Field(default_factory=dict)
    pool: str = "local"
    pool_rank: int = Field(
        default=1, ge=0, description="lower ranks are used first (on-prem before cloud)"
    )
    price_per_hour: float = Field(default=0.0, ge=0)
    cordoned: bool = False


class Settings(BaseSettings):
    """All of the gateway's configuration. Field docs are the reference for each variable."""

    model_config = SettingsConfigDict(env_prefix="AIGC_", extra="forbid")

    dev: bool = False
    """Demo/dev mode: allows default secrets, creates a first admin with a printed password."""
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    data_dir: Path = Path("var")
    """Root of everything the gateway writes: the SQLite store, user volumes, runtime state."""
    database_url: str | None = None
    """SQLAlchemy async URL; default ``sqlite+aiosqlite:///<data_dir>/gateway.db``.
    PostgreSQL: ``postgresql+asyncpg://user:pass@host/db``."""
    templates_dir: Path = Field(default_factory=default_templates_dir)
    watch_templates: bool = True
    """Re-read the templates folder when a file changes (needs inotify; SIGHUP always works)."""
    runtime: str = "local"
    """The runtime that runs engines, by name: ``local`` (shipped), or one a package registers
    in the ``aigc_gateway.runtimes`` entry-point group."""
    ray_address: str | None = None
    """``runtime: ray``: the Ray cluster to join as a driver (``ray://head:10001``, ``head:6379``
    or ``auto``); unset: ``auto`` (the cluster this host's ``ray start`` joined). docs/ray.md."""
    ray_namespace: str = "aigc-gateway"
    """``runtime: ray``: the Ray namespace of the engines' supervisor actors; gateways sharing one
    cluster and one store use the same one, separate deployments different ones."""
    ray_relay_port: int = Field(default=0, ge=0, le=65535)
    """``runtime: ray``: the port of each node's relay (the gateway's way to its engines; open it
    to the gateways' hosts only); 0: any free port, which changes when a relay restarts."""
    ray_node_dir: str | None = None
    """``runtime: ray``: each node's own data folder (its engines' state and logs, its users'
    volumes), on that node; ``{node}`` is replaced by the first 12 hex digits of the Ray node
    id (several nodes on one machine). Unset: ``<data_dir>/ray-nodes/{node}``."""
    sandbox: Literal["auto", "on", "off"] = "auto"
    """Run every engine in its own sandbox (bubblewrap namespaces, a per-user uid, cgroup
    limits, only its granted GPUs, reached only over a Unix socket; docs/security.md).
    ``auto``: where the host supports it; where it does not, engines are refused, except in
    ``--dev`` mode, which runs them unsandboxed with a warning. ``on``: always (starts fail,
    saying what is missing, where the host cannot). ``off``: never (engines are then NOT
    isolated from each other or from the gateway)."""
    sandbox_uid_range: str = "200000-265535"
    """The OS uids given to users' engines, one per user for good (``first-last``); nothing
    else on the host may use them."""
    sandbox_pids_max: int = Field(default=1024, ge=16)
    """Most processes (and threads) one sandboxed engine may have."""
    sandbox_tmp_mib: int = Field(default=1024, ge=16)
    """Size of each sandboxed engine's private ``/tmp`` and ``/dev/shm`` (memory-backed)."""
    sandbox_outbound_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Private networks (``10.1.2.0/24``; in the environment, comma-separated) that engines of
    ``network: outbound`` templates may reach although every private, link-local and host
    address is refused to them otherwise: an internal model mirror or package index."""
    gpus: list[DeclaredGpu] = Field(default_factory=list)
    """A declared GPU inventory; empty: discover this host's cards with NVML."""
    gpu_discovery: bool = True
    gpu_pool: str = "local"
    """Pool of discovered cards no declared entry annotates."""
    gpu_pool_rank: int = Field(default=1, ge=0)
    gpu_prices: dict[str, float] = Field(default_factory=dict)
    """Price per hour of discovered cards by type (e.g. ``{h100: 2.5}``), for placement."""
    mps_control: str = "nvidia-cuda-mps-control"
    """The NVIDIA MPS control program that enforces GPU memory shares (a name on PATH or a
    path). Where it is missing, shares run unenforced and ``doctor`` says so."""
    pricebook: Path | None = None
    """The price book (YAML; see deploy/pricebook.example.yaml). None: everything costs 0 USD,
    and usage is still recorded in hours."""
    metrics_token: str | None = None
    """Bearer token that ``/metrics`` requires from every client not in
    ``metrics_trusted_addresses``."""
    metrics_trusted_addresses: list[IPvAnyNetwork] = Field(default_factory=list)
    """Client addresses (``10.0.0.5``) or networks (``10.0.0.0/24``) that may read ``/metrics``
    without the token. Default none: every engine runs on this host, so "loopback" trusts them all."""
    secret_key: str = DEV_SECRET
    """Signs sessions and one-time tokens. Must be set (32+ characters) outside dev mode."""
    public_url: str | None = None
    """The gateway's address as browsers see it (e.g. ``https://ai.example.com``); default
    ``http://<host>:<port>``. OIDC redirect and logout URIs are built from it."""
    apps_domain: str = "localhost"
    """Instances are served at ``<slug>.<apps_domain>`` (with the gateway's port, if any)."""
    local_login: bool = True
    """Allow sign-in with a local account (user name and password)."""
    oidc_issuer: str | None = None
    """Single sign-on: the provider's issuer URL (discovery at ``/.well-known/openid-configuration``)."""
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_provider_name: str = "single sign-on"
    """Shown on the sign-in button: "Sign in with <name>"."""
    oidc_scopes: str = "openid profile email"
    oidc_username_claim: str = "preferred_username"
    oidc_groups_claim: str = "groups"
    """The claim (ID token or userinfo) whose values become team names."""
    oidc_admin_group: str | None = None
    """Members of this provider group are gateway administrators."""
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Reverse proxies in front of the gateway (IP addresses or CIDR networks; in the environment,
    comma-separated) whose ``X-Forwarded-For``/``-Proto`` are believed. Empty (the default): no
    client's forwarding header is, so engines, the audit log and the sign-in limits see the peer."""
    proxy_connect_timeout_s: float = Field(default=10.0, gt=0)
    proxy_read_timeout_s: float = Field(default=3600.0, gt=0)
    """Longest silence from an engine in the middle of an answer."""
    proxy_max_body_bytes: int = Field(default=0, ge=0)
    """Largest request body passed to an engine (0: no limit; uploads of models are large)."""
    proxy_fast_path: bool = True
    """Relay instance requests at the connection level (``proxy/front.py``); off: every request
    goes through the ASGI proxy (slower; the same behaviour)."""
    access_cache_ttl_s: float = Field(default=5.0, ge=0)
    """How long the proxy may reuse an "allowed" answer; changes made on this gateway clear it
    at once, the TTL bounds how long another replica's change takes to be seen."""
    session_idle_minutes: float = Field(default=8 * 60, gt=0)
    session_max_hours: float = Field(default=7 * 24, gt=0)
    login_max_failures_per_account: int = Field(default=5, ge=1)
    login_max_failures_per_address: int = Field(default=20, ge=1)
    login_failure_window_minutes: float = Field(default=15, gt=0)
    max_instances_per_user: int = Field(default=3, ge=0)
    reconcile_interval_s: float = Field(default=5.0, gt=0)
    """Full resync period; user actions are reconciled at once regardless."""
    lease_ttl_s: float = Field(default=15.0, ge=1)
    """How long a gateway process's lease on an instance lasts unless renewed (every third of
    it). Several gateways on one PostgreSQL: when one dies, another takes its instances over
    within this time plus ``reconcile_interval_s``."""
    stop_grace_s: float = Field(default=10.0, ge=0)
    storage_check_s: float = Field(default=60.0, ge=0)
    """How often the data of running instances is measured against their storage quota (a
    warning at 90 %, refused starts at 100 %)."""
    launch_timeout_s: float = Field(default=120.0, gt=0)
    """How long the runtime's start may take to hand an engine over (not its readiness, which
    the template's ``readiness.timeout_s`` bounds); a start past it fails the instance."""
    log_max_bytes: int = Field(default=4 * 1024 * 1024, ge=4096)

    @field_validator("runtime")
    @classmethod
    def _installed_runtime(cls, value: str) -> str:
        from aigc_gateway.runtime.plugins import check_name

        try:
            return check_name(value)
        except UserError as exc:
            raise ValueError(exc.message) from exc

    @field_validator("trusted_proxies", "sandbox_outbound_allow", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        return (
            [part.strip() for part in value.split(",") if part.strip()]
            if isinstance(value, str)
            else value
        )

    @field_validator("trusted_proxies", "sandbox_outbound_allow")
    @classmethod
    def _check_networks(cls, value: list[str], info: ValidationInfo) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{info.field_name}: {entry!r} is not an IP address or network "
                    "(e.g. 10.0.0.5 or 10.0.0.0/24)"
                ) from None
        return value

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        if not self.dev and (self.secret_key == DEV_SECRET or len(self.secret_key) < 32):
            raise ValueError(
                "AIGC_SECRET_KEY must be set to a random string of 32+ characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
                "or run with --dev for a local demo"
            )
        return self

    @field_validator("sandbox_uid_range")
    @classmethod
    def _check_uid_range(cls, value: str) -> str:
        from aigc_gateway.runtime.sandbox.uids import parse_range

        return str(parse_range(value))

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        given = [self.oidc_issuer, self.oidc_client_id, self.oidc_client_secret]
        if any(given) and not all(given):
            raise ValueError(
                "single sign-on needs all of AIGC_OIDC_ISSUER, AIGC_OIDC_CLIENT_ID and "
                "AIGC_OIDC_CLIENT_SECRET"
            )
        return self

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer)

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def instance_url(self, slug: str) -> str:
        """Where a browser opens an instance: its own host on the gateway's port."""
        base = urlsplit(self.base_url)
        port = f":{base.port}" if base.port else ""
        return f"{base.scheme}://{slug}.{self.apps_domain}{port}/"

    @property
    def oidc_redirect_uri(self) -> str:
        return f"{self.base_url}/auth/oidc/callback"

    @property
    def oidc_post_logout_redirect_uri(self) -> str:
        return f"{self.base_url}/auth/logged-out"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'gateway.db'}"

    @property
    def volumes_dir(self) -> Path:
        return self.data_dir.resolve() / "volumes"

    @property
    def runtime_dir(self) -> Path:
        return self.data_dir.resolve() / "runtime" / self.runtime


def signing_secret(settings: Settings) -> str:
    """The secret that signs short-lived browser state (OIDC login). Outside dev mode it is
    ``secret_key``; in dev mode a random one is made once and kept in the data folder, so it
    is not regenerated on restart."""
    if settings.secret_key != DEV_SECRET:
        return settings.secret_key
    path = settings.data_dir / "secret_key"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or TOML settings file into a dict; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: not valid {path.suffix.lstrip('.')}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the config file must be a mapping of setting names to values")
    return data


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from (lowest first) the config file, the environment, then ``overrides``.

    Raises :class:`UserError` naming the file or variable and the problem.
    """
    path = config_file or (
        Path(os.environ["AIGC_CONFIG"]) if os.environ.get("AIGC_CONFIG") else None
    )
    file_values = read_config_file(path) if path else {}
    # pydantic-settings reads variable names case-insensitively; so must this filter.
    env_keys = {k[5:].lower() for k in os.environ if k.upper().startswith("AIGC_")}
    values = {k: v for k, v in file_values.items() if k not in env_keys}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        source = f"{path} / environment" if path else "environment"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise UserError(f"invalid settings ({source}): {problems}") from exc
