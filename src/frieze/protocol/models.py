"""The agent protocol's bodies (docs/design/agent-protocol.md §3, §5): requests, the Task, results.

Requests forbid unknown fields (a typo is a 400, not a silently ignored option). Secrets travel only in
``AppCall.secrets`` and are excluded from ``repr``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PROTOCOL_VERSION = 1

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(NAME_RE)

TaskState = Literal["pending", "running", "done", "failed"]


def valid_name(s: str) -> bool:
    return bool(_NAME.match(s))


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AppCall(_Req):
    """Body of every app call. ``kind``/``data_dir``: what the coordinator believes (checked against the
    host's configuration); ``secrets``: for this one call only."""

    kind: str | None = Field(default=None, max_length=32)
    data_dir: str | None = Field(default=None, max_length=4096)
    secrets: dict[str, str] = Field(default_factory=dict, repr=False)


#: The lease a quiesce gets when the request names none (docs/design/agent-protocol.md §4).
DEFAULT_APP_LEASE_S = 60.0
DEFAULT_FS_LEASE_S = 10.0


class QuiesceRequest(AppCall):
    epoch: int = Field(ge=1)
    lease_s: float | None = Field(default=None, gt=0, le=3600,
                                  description="lease in seconds, > 0; omitted: 10 s for a file system freeze "
                                              "(files), 60 s for an application quiesce")

    def lease_for(self, kind: str) -> float:
        """The effective lease for an app of ``kind``."""
        if self.lease_s is not None:
            return float(self.lease_s)
        return DEFAULT_FS_LEASE_S if kind == "files" else DEFAULT_APP_LEASE_S


class UnquiesceRequest(AppCall):
    epoch: int = Field(ge=1)


class RecoverRequest(AppCall):
    """Exactly one of ``time`` (RFC 3339), ``position`` (LSN, binlog file:pos), ``name`` (restore point)
    or ``all_logs=true``."""

    time: str | None = Field(default=None, max_length=64)
    position: str | None = Field(default=None, max_length=128)
    name: str | None = Field(default=None, max_length=128)
    all_logs: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> RecoverRequest:
        n = sum(x is not None for x in (self.time, self.position, self.name)) + int(self.all_logs)
        if n != 1:
            raise ValueError("give exactly one of time, position, name or all_logs=true")
        return self


class SnapshotRequest(_Req):
    snap_id: str = Field(pattern=NAME_RE)
    epoch: int = Field(ge=0, description="the freeze epoch this snapshot belongs to (0: no freeze)")


class Empty(_Req):
    pass


class TargetRequest(_Req):
    target: str = Field(min_length=1, max_length=4096)


class ErrorBody(BaseModel):
    code: str
    message: str
    retryable: bool = False
    details: dict[str, Any] = Field(default_factory=dict)


class Task(BaseModel):
    id: str
    action: str
    target: str
    state: TaskState
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    changed: bool | None = None
    message: str = ""
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


class FileEntry(BaseModel):
    """One entry of a snapshot listing (the mover's ``FileEntry``)."""

    path: str
    type: Literal["file", "dir", "symlink"]
    size: int = 0
    mode: int = 0o644
    mtime_ns: int = 0
    digest: str | None = None
    target: str | None = None
    uid: int | None = None  # numeric owner on the host (kept through backup and restore)
    gid: int | None = None


class VersionInfo(BaseModel):
    version: str
    protocol: int = PROTOCOL_VERSION
    python: str
    install_root: str | None = None
    current: str | None = None
    rolled_back_from: str | None = None


class EnrollRequest(_Req):
    token: str = Field(min_length=8, max_length=256, repr=False)
    csr_pem: str = Field(min_length=64, max_length=16384)
    address: str | None = Field(default=None, max_length=300)
    version: str | None = Field(default=None, max_length=50)


class EnrollResponse(BaseModel):
    host: str
    cert_pem: str
    ca_pem: str
    fingerprint: str
