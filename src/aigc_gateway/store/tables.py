"""Tables. Table rows are store-internal; the API has its own schemas."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone; this puts UTC back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_users_issuer_subject"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    display_name: Mapped[str] = mapped_column(String(256), default="")
    email: Mapped[str | None] = mapped_column(String(320))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    password_hash: Mapped[str | None] = mapped_column(String(256))
    max_instances: Mapped[int | None] = mapped_column(Integer)
    issuer: Mapped[str | None] = mapped_column(String(512))
    """For single sign-on users: the provider; with ``subject`` the user's stable key."""
    subject: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime]


class TeamMember(Base):
    __tablename__ = "team_members"
    team_id: Mapped[str] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    source: Mapped[str] = mapped_column(String(16), default="admin")
    """``admin`` (set by an administrator) or ``oidc`` (synced from the provider's groups)."""


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class TemplateRevision(Base):
    """Every distinct content of a template file ever applied, so instances name what they ran."""

    __tablename__ = "template_revisions"
    __table_args__ = (
        UniqueConstraint("template_id", "digest", name="uq_template_revisions_digest"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    template_id: Mapped[str] = mapped_column(String(64), index=True)
    family: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    spec: Mapped[dict[str, Any]]
    loaded_at: Mapped[datetime]


class Volume(Base):
    """One user's data folder for one engine family."""

    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("user_id", "family", name="uq_volumes_user_family"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    family: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        # Names are unique per owner among instances that are not deleted.
        Index(
            "uq_instances_owner_name_live",
            "owner_id",
            "name",
            unique=True,
            sqlite_where=text("state != 'deleted'"),
            postgresql_where=text("state != 'deleted'"),
        ),
        UniqueConstraint("owner_id", "request_id", name="uq_instances_owner_request"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    slug: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    request_id: Mapped[str | None] = mapped_column(String(128))
    template_id: Mapped[str] = mapped_column(String(64), index=True)
    template_revision_id: Mapped[int] = mapped_column(ForeignKey("template_revisions.id"))
    family: Mapped[str] = mapped_column(String(64))
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"))
    desired_state: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    generation: Mapped[int] = mapped_column(Integer, default=1)
    """Bumped by start/resume/restart; a launch records the generation it ran."""
    launched_generation: Mapped[int] = mapped_column(Integer, default=0)
    delete_data: Mapped[bool] = mapped_column(Boolean, default=False)
    runtime: Mapped[str] = mapped_column(String(32))
    pid: Mapped[int | None] = mapped_column(Integer)
    endpoint: Mapped[str | None] = mapped_column(String(1024))
    """How the gateway reaches the engine (``unix:/path`` or ``host:port``: the runtime's
    ``Endpoint.describe``); None while none runs."""
    exit_code: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    ready_at: Mapped[datetime | None]
    last_activity_at: Mapped[datetime | None]
    gpu_ids: Mapped[list[str] | None] = mapped_column(JSON)
    """GPUs held while the engine may run (starting, running, stopping); None otherwise."""
    gpu_memory_gib: Mapped[float | None] = mapped_column(Float)
    """For a GPU share: its size (``gpu_ids`` then names one card)."""
    gpu_since: Mapped[datetime | None]
    placement: Mapped[str | None] = mapped_column(Text)
    """Why the scheduler chose these GPUs (or why the instance waits), for people."""
    queued_at: Mapped[datetime | None]
    """When the instance joined the GPU queue (its place in it, with the priority)."""
    queue_priority: Mapped[int] = mapped_column(Integer, default=0)


class GpuCordon(Base):
    """A GPU taken out of placement by an administrator (``drain`` also moved its engines)."""

    __tablename__ = "gpu_cordons"
    gpu_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    by: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[datetime]


class InstanceLease(Base):
    """Which gateway process drives an instance, until when (see :mod:`aigc_gateway.store.leases`).

    Several gateways may share one database; only the holder of an unexpired lease starts, stops
    or moves the instance. A holder renews its leases well before they expire; one that dies
    stops renewing, and another process takes the lease over once it has expired."""

    __tablename__ = "instance_leases"
    instance_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    """The process: ``host:pid:random`` (see :func:`aigc_gateway.store.leases.new_holder`)."""
    expires_at: Mapped[datetime] = mapped_column(index=True)


class UsageInterval(Base):
    """One stretch of time an instance held a resource: the ledger.

    Written from lifecycle transitions in the same transaction (opened on the move to starting,
    closed on the move that ends the engine), never sampled. Open rows (``end_at`` NULL) carry
    ``observed_at``, the last time the gateway saw the engine alive, so an interval left open by a
    crash is closed there on recovery. Rows are cut at UTC midnight (``closed_by = "day"``), so
    each lies inside one day and reports group without splitting. A closed row is never edited:
    corrections are new rows (``closed_by = "correction"``, negative amounts allowed).
    """

    __tablename__ = "usage_intervals"
    __table_args__ = (
        Index("ix_usage_intervals_open", "instance_id", "end_at"),
        Index("ix_usage_intervals_day_user", "day", "user_id"),
        Index("ix_usage_intervals_day_team", "day", "team_id"),
        Index("ix_usage_intervals_user_day", "user_id", "day"),
        Index("ix_usage_intervals_team_month", "team_id", "month"),
    )
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    instance_id: Mapped[str] = mapped_column(String(32))
    instance_name: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(32))
    team_id: Mapped[str | None] = mapped_column(String(32))
    """The owner's team when the interval began (the first by name if several)."""
    template_id: Mapped[str] = mapped_column(String(64))
    template_version: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(16))
    """``gpu`` (whole GPUs), ``gpu_share`` (memory share), ``cpu`` (no GPU), ``storage`` (a
    day of a user's data folder: ``share_gib`` is its size, ``duration_ms`` 0, cost only)."""
    gpu_type: Mapped[str | None] = mapped_column(String(64))
    gpu_pool: Mapped[str | None] = mapped_column(String(64))
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    share_gib: Mapped[float | None] = mapped_column(Float)
    start_at: Mapped[datetime]
    end_at: Mapped[datetime | None]
    observed_at: Mapped[datetime]
    day: Mapped[str] = mapped_column(String(10))
    """UTC day of ``start_at`` (``2026-11-28``); with ``week`` and ``month``, for grouping."""
    week: Mapped[str] = mapped_column(String(8))
    month: Mapped[str] = mapped_column(String(7))
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    """Set when closed: ``end_at - start_at`` in milliseconds, exact (rounding to seconds happens
    once, in a report; rounding each row would lose up to half a second per row)."""
    active_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    """Milliseconds with proxy activity (whole minutes with a request or message), at most
    ``duration_ms``."""
    last_active_minute: Mapped[int | None] = mapped_column(BigInteger)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    """Set when closed, at the prices in force over the interval (millionths of ``currency``)."""
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    closed_by: Mapped[str | None] = mapped_column(String(16))
    """``stop``, ``day`` (cut at midnight), ``storage``, ``correction``."""


ROLLUP_GRAIN = (
    "month",
    "week",
    "instance_id",
    "instance_name",
    "user_id",
    "team_id",
    "template_id",
    "resource",
    "gpu_type",
    "gpu_pool",
)


class UsageRollup(Base):
    """Sums of closed ledger rows per month, ISO week, instance and resource: what reports by
    week, month or none over whole months read instead of the ledger (about a quarter of its
    rows). Added to in the transaction that closes each ledger row, which is never edited after,
    so the two always agree. Unknown values are ``""`` (not NULL) so the grain is a unique key."""

    __tablename__ = "usage_rollup"
    __table_args__ = (
        UniqueConstraint(*ROLLUP_GRAIN, name="uq_usage_rollup_grain"),
        Index("ix_usage_rollup_user_month", "user_id", "month"),
    )
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    month: Mapped[str] = mapped_column(String(7))
    week: Mapped[str] = mapped_column(String(8))
    instance_id: Mapped[str] = mapped_column(String(32))
    instance_name: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(32))
    team_id: Mapped[str] = mapped_column(String(32))
    template_id: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(16))
    gpu_type: Mapped[str] = mapped_column(String(64))
    gpu_pool: Mapped[str] = mapped_column(String(64))
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    active_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    gpu_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    """``duration_ms`` times whole GPUs held."""


class Budget(Base):
    """A monthly spending limit for a team or a user, and a team's GPU limit."""

    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("scope", "subject_id", name="uq_budgets_scope_subject"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    scope: Mapped[str] = mapped_column(String(8))
    """``team`` or ``user``."""
    subject_id: Mapped[str] = mapped_column(String(32))
    soft_micros: Mapped[int | None] = mapped_column(BigInteger)
    """Past this, a warning (once a month): an event and a banner."""
    hard_micros: Mapped[int | None] = mapped_column(BigInteger)
    """Past this, new starts are refused."""
    pause_when_over: Mapped[bool] = mapped_column(Boolean, default=False)
    """Past the hard limit, also pause what runs."""
    max_gpus: Mapped[int | None] = mapped_column(Integer)
    """Teams: GPUs the team's members may hold at once."""
    updated_at: Mapped[datetime]


class BudgetWarning(Base):
    """A soft limit reached in a month: recorded once, so the warning is given once."""

    __tablename__ = "budget_warnings"
    budget_id: Mapped[str] = mapped_column(
        ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True
    )
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    at: Mapped[datetime]
    spent_micros: Mapped[int] = mapped_column(BigInteger)


class Event(Base):
    """One thing that happened to an instance: a transition, a progress step, an action."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_instance_id_id", "instance_id", "id"),)
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    instance_id: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    source_state: Mapped[str | None] = mapped_column(String(16))
    target_state: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str | None] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    elapsed_s: Mapped[float | None] = mapped_column(Float)


class Session(Base):
    """A signed-in browser. The cookie holds a random secret; only its hash is stored."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    auth_method: Mapped[str] = mapped_column(String(16))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    id_token: Mapped[str | None] = mapped_column(Text)
    """The provider's ID token, kept as the hint for RP-initiated logout."""


class InstanceShare(Base):
    """An owner lets a user, or every member of a team, open and operate an instance."""

    __tablename__ = "instance_shares"
    __table_args__ = (
        UniqueConstraint("instance_id", "user_id", "team_id", name="uq_instance_shares_target"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[str | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]


class HandoverToken(Base):
    """A one-time, short-lived token that carries a signed-in user to an instance host."""

    __tablename__ = "handover_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class InstanceSession(Base):
    """The instance-scoped cookie on one instance host; it lives only while its parent session
    does, so signing out (or being disabled) ends access to every instance at once."""

    __tablename__ = "instance_sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    created_at: Mapped[datetime]


class AuditEvent(Base):
    """Who did what, when, from where. Append-only."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_action_at", "action", "at"),
        Index("ix_audit_events_actor_name_at", "actor_name", "at"),
        Index("ix_audit_events_ip_at", "ip", "at"),
    )
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime]
    actor_id: Mapped[str | None] = mapped_column(String(32))
    actor_name: Mapped[str | None] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(48))
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
