"""The catalog's tables (SQLAlchemy 2 typed ORM). Schema changes go through Alembic migrations only.

The catalog lives in its own SQLite file (or PostgreSQL database), separate from the workflow engine's
system database. Secrets are never stored here in plain text: a column that refers to a secret holds the
name of a :class:`SecretRecord`, whose value is sealed by :mod:`frieze.coordinator.vault`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from frieze.core.clock import now


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ApiToken(Base):
    """An API token: only its SHA-256 is kept."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class SecretRecord(Base):
    """A sealed secret (repository password, S3 key, database password)."""

    __tablename__ = "secrets"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(20), index=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Host(Base):
    """A host and its agent."""

    __tablename__ = "hosts"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    address: Mapped[str | None] = mapped_column(String(300), nullable=True)
    state: Mapped[str] = mapped_column(String(20), default="pending")  # pending|online|offline|maintenance
    agent_version: Mapped[str | None] = mapped_column(String(50), nullable=True)
    cert_fingerprint: Mapped[str | None] = mapped_column(String(100), nullable=True)
    last_heartbeat: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False)
    #: at most this many backups touching this host are admitted at once (coordinator.limits)
    max_concurrent: Mapped[int] = mapped_column(Integer, default=2)


class EnrollmentToken(Base):
    """A one-time enrollment token for a host: only its hash is kept."""

    __tablename__ = "enrollment_tokens"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used: Mapped[bool] = mapped_column(Boolean, default=False)


class Volume(Base):
    """Where data lives on a host, with the provider that snapshots it."""

    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("host_id", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id"))
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(String(1000))
    provider: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class App(Base):
    """An application instance on a host, on one volume."""

    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("host_id", "name"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id"))
    volume_id: Mapped[str | None] = mapped_column(ForeignKey("volumes.id"), nullable=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(50))
    data_dir: Mapped[str] = mapped_column(String(1000))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: names of SecretRecords handed to the agent for this app only ({"password": "app/<id>/password"})
    secret_refs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Repository(Base):
    """A repository the coordinator writes (the mover). Its password and S3 keys are secrets."""

    __tablename__ = "repositories"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    url: Mapped[str] = mapped_column(String(1000))
    password_ref: Mapped[str] = mapped_column(String(200))
    #: e.g. {"access_key_id": "<secret name>", "secret_access_key": "<secret name>"}
    secret_refs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: at most this many backups into this repository are admitted at once (coordinator.limits)
    max_concurrent: Mapped[int] = mapped_column(Integer, default=2)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class ProtectionSet(Base):
    """Apps and volumes captured at one consistent instant."""

    __tablename__ = "protection_sets"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    app_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    volume_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Policy(Base):
    """Schedule, consistency level, retention and target repository of a protection set."""

    __tablename__ = "policies"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    protection_set_id: Mapped[str] = mapped_column(ForeignKey("protection_sets.id"))
    repository_id: Mapped[str] = mapped_column(ForeignKey("repositories.id"))
    cron: Mapped[str | None] = mapped_column(String(200), nullable=True)
    timezone: Mapped[str] = mapped_column(String(100), default="UTC")
    consistency: Mapped[str] = mapped_column(String(30), default="application")  # application|crash
    on_quiesce_failure: Mapped[str] = mapped_column(String(20), default="abort")  # abort|continue
    lease_s: Mapped[float] = mapped_column(Float, default=60.0)
    retention: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    keep_host_snapshots: Mapped[int] = mapped_column(Integer, default=0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: at most this many of this policy's kind of backups at once on each host / on the repository (None: the
    #: host's and the repository's own ``max_concurrent`` only); see coordinator.limits
    max_per_host: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_per_repository: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class RestorePoint(Base):
    """What the vault keeps of one capture, with its honest consistency label."""

    __tablename__ = "restore_points"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    operation_id: Mapped[str] = mapped_column(String(200), unique=True)
    protection_set_id: Mapped[str] = mapped_column(ForeignKey("protection_sets.id"))
    repository_id: Mapped[str] = mapped_column(ForeignKey("repositories.id"))
    policy_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    consistency: Mapped[str] = mapped_column(String(40))
    #: {"reason": ..., "members": [...]} for quiesce-skipped; freeze windows per app
    label: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: per volume: {"volume_id", "host_id", "path", "snapshot_id" (repository), "bytes", ...}
    volumes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    freeze_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bytes_total: Mapped[int] = mapped_column(Integer, default=0)
    bytes_new: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    forgotten: Mapped[bool] = mapped_column(Boolean, default=False)


class Counter(Base):
    """Monotonic counters (freeze epochs), advanced in one transaction."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


class OpResult(Base):
    """What a finished workflow produced (restore point id, restore target, figures), by operation id."""

    __tablename__ = "op_results"
    op_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class ScheduleRun(Base):
    """One tick of one policy's schedule. The primary key makes each tick start exactly once, whichever
    coordinator inserts it first; ``op_id`` is filled once the operation is submitted."""

    __tablename__ = "schedule_runs"
    policy_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tick: Mapped[str] = mapped_column(String(40), primary_key=True)
    claimed_by: Mapped[str] = mapped_column(String(200))
    op_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: bumped by each takeover of an orphaned claim (compare-and-set: one coordinator wins a takeover)
    claim_no: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
