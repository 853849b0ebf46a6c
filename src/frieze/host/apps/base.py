"""The application plug-in port.

One plug-in drives one kind of engine (postgres, mariadb, sqlite, redis, files, script). The agent knows
nothing engine-specific: it calls these methods with an :class:`AppSpec` (kind, data directory,
connection settings and secrets handed to it by the coordinator).

Contract (every implementation must pass ``tests/host/apps/test_conformance.py``):

- Every call is one idempotent action. Asked for a state the app is already in (start when running,
  unquiesce when not quiesced) it does nothing and returns ``ActionResult(changed=False, ...)`` saying so.
- A call the plug-in does not support raises :class:`frieze.core.errors.NotSupported` naming the plug-in
  and the call; it never silently succeeds. :attr:`AppPlugin.capabilities` lists what is supported.
- ``quiesce`` takes a lease in seconds (> 0); the plug-in must make the engine itself give up the freeze
  when the lease runs out even if this process dies (session timeouts, ``CLIENT PAUSE`` timeouts, a
  guardian-held session), and returns a :class:`QuiesceHandle` whose ``info`` records what the engine
  said (backup label, LSN, binlog position).
- ``unquiesce`` is safe after a partial or failed ``quiesce``, and after the lease already ran out.
- Errors are from :mod:`frieze.core.errors`; secrets never appear in messages or argv.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class AppSpec:
    """Where an application lives and how to reach it."""

    name: str
    kind: str
    data_dir: str
    #: Connection settings: host, port, socket, user, database... (no secrets here)
    options: dict[str, Any] = field(default_factory=dict)
    #: Secrets (passwords). Never logged; never put on a command line or in a child's environment.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class AppCapabilities:
    kind: str
    start_stop: bool = False
    quiesce: bool = True
    recover_to_time: bool = False
    recover_to_position: bool = False
    recover_to_named_point: bool = False
    recover_all_logs: bool = False
    verify: bool = False
    notes: str = ""


@dataclass
class ActionResult:
    changed: bool
    message: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuiesceHandle:
    app: str
    epoch: int
    lease_s: float
    started_monotonic: float
    #: What the engine reported: backup label, LSN, binlog file/position, files to add to the snapshot.
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecoveryTarget:
    """Exactly one of the fields is set; all None means 'to the end of all available logs'."""

    time: str | None = None  # RFC 3339
    position: str | None = None  # LSN for postgres, "binlog.000003:1234" for mariadb
    name: str | None = None  # named restore point


@runtime_checkable
class AppPlugin(Protocol):
    kind: str
    capabilities: AppCapabilities

    def status(self, spec: AppSpec) -> dict[str, Any]: ...
    def start(self, spec: AppSpec) -> ActionResult: ...
    def stop(self, spec: AppSpec) -> ActionResult: ...
    def quiesce(self, spec: AppSpec, *, epoch: int, lease_s: float) -> QuiesceHandle: ...
    def unquiesce(self, spec: AppSpec, *, epoch: int) -> ActionResult: ...
    def recover(self, spec: AppSpec, target: RecoveryTarget) -> ActionResult: ...
    def verify(self, spec: AppSpec) -> ActionResult: ...
