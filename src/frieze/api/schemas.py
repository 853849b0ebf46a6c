"""Request and response models of the REST API (pydantic v2; they make the OpenAPI 3.1 spec).

Secret-carrying request fields are :class:`pydantic.SecretStr`, so they never show in a repr, a log line or
a validation error. Responses never contain a secret value (only the names of stored secrets).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

Name = Field(min_length=1, max_length=200, pattern=r"^[^/\x00]+$")
AbsPath = Field(min_length=1, max_length=1000, pattern=r"^/[^\x00]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests -----------------------------------------------------------------------------------------
Limit = Field(default=2, ge=1, le=1000, description="at most this many backups at once (admission)")


class HostCreate(Strict):
    name: str = Name
    address: str | None = Field(default=None, max_length=300, description="https://host:port of its agent")
    max_concurrent: int = Limit


class LimitSet(Strict):
    max_concurrent: int = Field(ge=1, le=1000, description="at most this many backups at once (admission)")


class MaintenanceSet(Strict):
    maintenance: bool


class VolumeCreate(Strict):
    host: str = Name
    name: str = Name
    path: str = AbsPath
    provider: Literal["btrfs", "reflink", "copy", "helper"]


class AppCreate(Strict):
    host: str = Name
    name: str = Name
    kind: Literal["postgres", "mariadb", "sqlite", "redis", "files", "script"]
    data_dir: str = AbsPath
    volume: str | None = Field(default=None, min_length=1, max_length=200)
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    secrets: dict[str, SecretStr] = Field(default_factory=dict, description="e.g. {'password': ...}; kept in the vault")


class RepositoryCreate(Strict):
    name: str = Name
    url: str = Field(min_length=1, max_length=1000, description="file:///path or s3://bucket/prefix?endpoint=...")
    password: SecretStr = Field(min_length=1, max_length=1000, description="the repository password; kept in the vault")
    init: bool = Field(default=False, description="create the repository (else open it and check the password)")
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    max_concurrent: int = Limit


class PasswordSet(Strict):
    password: SecretStr = Field(min_length=1, max_length=1000, description="the new repository password")


class S3KeysSet(Strict):
    access_key_id: SecretStr = Field(min_length=1, max_length=200)
    secret_access_key: SecretStr = Field(min_length=1, max_length=1000)


class AppSecretsSet(Strict):
    secrets: dict[str, SecretStr] = Field(min_length=1, max_length=20,
                                          description="e.g. {'password': ...}; replaces these secrets in the vault")
    host: str | None = Field(default=None, min_length=1, max_length=200, description="host of the app")
    verify: bool = Field(default=True, description="first check through the agent that the app is reachable "
                                                   "with the new secrets")


class ProtectionSetCreate(Strict):
    name: str = Name
    apps: list[str] = Field(default_factory=list, max_length=100)
    volumes: list[str] = Field(default_factory=list, max_length=100)


class PolicyCreate(Strict):
    name: str = Name
    protection_set: str = Name
    repository: str = Name
    cron: str | None = Field(default=None, max_length=200, description="five-field cron, in `timezone`")
    timezone: str = Field(default="UTC", max_length=100)
    consistency: Literal["application", "crash"] = "application"
    on_quiesce_failure: Literal["abort", "continue"] = "abort"
    lease_s: float = Field(default=60.0, gt=0, le=3600)
    retention: dict[str, int | str] = Field(default_factory=dict)
    keep_host_snapshots: int = Field(default=0, ge=0, le=1000)
    max_per_host: int | None = Field(default=None, ge=1, le=1000,
                                     description="at most this many such backups at once on each host")
    max_per_repository: int | None = Field(default=None, ge=1, le=1000,
                                           description="at most this many such backups at once on the repository")


class BackupRequest(Strict):
    protection_set: str = Name
    policy: str | None = Field(default=None, min_length=1, max_length=200)
    repository: str | None = Field(default=None, min_length=1, max_length=200,
                                   description="required without a policy")
    consistency: Literal["application", "crash"] | None = None


class RestoreRequest(Strict):
    restore_point: str = Field(min_length=1, max_length=200)
    volume: str | None = Field(default=None, min_length=1, max_length=200,
                               description="which volume of the restore point (default: the only one)")
    target_host: str | None = Field(default=None, min_length=1, max_length=200)
    target_path: str | None = Field(default=None, min_length=1, max_length=1000, pattern=r"^/[^\x00]*$")
    paths: list[str] = Field(default_factory=list, max_length=1000)
    overwrite: bool = Field(default=False, description="allow writing into an existing, non-empty target")


class AccessRequest(Strict):
    restore_point: str = Field(min_length=1, max_length=200)
    volume: str | None = Field(default=None, min_length=1, max_length=200,
                               description="which volume of the restore point (default: the only one)")
    paths: list[str] = Field(default_factory=list, max_length=1000,
                             description="paths relative to the volume (default: all of it)")
    ttl_s: float = Field(default=86400.0, ge=60, le=30 * 86400, description="seconds the archive is kept")


class RecoverTarget(Strict):
    time: str | None = Field(default=None, max_length=64)
    position: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=200)


class RecoverRequest(Strict):
    app: str = Name
    host: str | None = Field(default=None, min_length=1, max_length=200)
    target: RecoverTarget = Field(default_factory=RecoverTarget)


class ProvisionRequest(Strict):
    """A declarative batch: each list takes the same items as its resource's own create call. References (a
    volume's host, an app's volume, a set's apps, a policy's set and repository) name a catalog row (id or name)
    or an item of the same batch (by name). Existing items that match are left unchanged; differing ones are a
    conflict."""
    hosts: list[HostCreate] = Field(default_factory=list, max_length=500)
    volumes: list[VolumeCreate] = Field(default_factory=list, max_length=500)
    repositories: list[RepositoryCreate] = Field(default_factory=list, max_length=100)
    apps: list[AppCreate] = Field(default_factory=list, max_length=500)
    protection_sets: list[ProtectionSetCreate] = Field(default_factory=list, max_length=500)
    policies: list[PolicyCreate] = Field(default_factory=list, max_length=500)


class EnrollmentTokenCreate(Strict):
    ttl_s: float = Field(default=3600.0, ge=60, le=7 * 86400, description="seconds the token stays valid")


class TokenCreate(Strict):
    name: str = Name
    role: Literal["admin", "operator", "read-only"]


# -- responses ----------------------------------------------------------------------------------------
class Host(BaseModel):
    id: str
    name: str
    address: str | None
    state: str
    agent_version: str | None
    last_heartbeat: str | None
    maintenance: bool
    max_concurrent: int
    created_at: str


class HostCreated(BaseModel):
    host: Host
    enrollment_token: str = Field(description="one-time token for `frieze agent enroll`; shown once")


class Volume(BaseModel):
    id: str
    host_id: str
    name: str
    path: str
    provider: str
    created_at: str


class App(BaseModel):
    id: str
    host_id: str
    volume_id: str | None
    name: str
    kind: str
    data_dir: str
    options: dict[str, Any]
    secrets: list[str]
    created_at: str


class Repository(BaseModel):
    id: str
    name: str
    url: str
    secrets: list[str]
    max_concurrent: int
    created_at: str


class RepositoryRotated(Repository):
    rotation: dict[str, Any]


class ProtectionSet(BaseModel):
    id: str
    name: str
    app_ids: list[str]
    volume_ids: list[str]
    created_at: str


class Policy(BaseModel):
    id: str
    name: str
    protection_set_id: str
    repository_id: str
    cron: str | None
    timezone: str
    consistency: str
    on_quiesce_failure: str
    lease_s: float
    retention: dict[str, Any]
    keep_host_snapshots: int
    enabled: bool
    next_runs: list[str]
    max_per_host: int | None
    max_per_repository: int | None
    created_at: str


class RestorePoint(BaseModel):
    id: str
    operation_id: str
    protection_set_id: str
    repository_id: str
    policy_id: str | None
    consistency: str
    label: dict[str, Any]
    volumes: list[dict[str, Any]]
    freeze_epoch: int | None
    bytes_total: int
    bytes_new: int
    created_at: str


class FileInfo(BaseModel):
    path: str
    type: str
    mode: str | None = None
    size: int | None = None
    mtime: str | None = None
    target: str | None = None


class OperationAccepted(BaseModel):
    operation_id: str
    state: str


class ProvisionPlanItem(BaseModel):
    kind: Literal["hosts", "volumes", "repositories", "apps", "protection_sets", "policies"]
    name: str
    id: str = Field(description="the catalog id (assigned now for an item to create)")
    action: Literal["create", "unchanged"]
    host: str | None = Field(default=None, description="host id (volumes and apps)")


class ProvisionAccepted(OperationAccepted):
    plan: list[ProvisionPlanItem]


class Operation(BaseModel):
    id: str
    type: str
    state: str
    step: str | None
    steps_done: int
    steps_total: int
    bytes_done: int
    bytes_total: int
    error: dict[str, Any] | None
    undo_errors: list[dict[str, Any]]
    created: str
    updated: str
    finished: str | None
    cancel_requested: bool
    checkpoint: str | None
    args: dict[str, Any]
    resources: dict[str, Any]
    executor_id: str | None
    has_diagnostics: bool
    result: dict[str, Any] | None = None


class LogLineOut(BaseModel):
    seq: int
    ts: str
    level: str
    step: str | None
    message: str


class Token(BaseModel):
    id: str
    name: str
    role: str
    created_at: str
    revoked: bool


class TokenCreated(BaseModel):
    token: Token
    secret: str = Field(description="the token itself; shown once, only its hash is kept")


class VaultRotated(BaseModel):
    key_id: str
    reencrypted: int
    retired: list[str]


class Health(BaseModel):
    status: str
    version: str
