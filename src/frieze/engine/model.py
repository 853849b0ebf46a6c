"""Plain data of the engine's public API: states, status, log lines, resources, limits, configuration."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class OpState(enum.StrEnum):
    """State of an operation. ``canceled``, ``failed`` and ``complete`` are final.

    - ``queued``: accepted, waiting for admission or for a worker of its pool;
    - ``running``: a worker runs its forward tasks;
    - ``paused``: a task asked to be looked at again later; no worker is held meanwhile;
    - ``aborting``: a cancel was accepted or a task failed; the current task finishes, then the undo path runs;
    - ``canceled``: a cancel was asked for and the undo path has run (or it was still queued);
    - ``failed``: a task failed and the undo path has run (``error`` and ``undo_errors`` say what happened);
    - ``complete``: every forward task and checkpoint passed.
    """

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    ABORTING = "aborting"
    CANCELED = "canceled"
    FAILED = "failed"
    COMPLETE = "complete"

    @property
    def final(self) -> bool:
        """True for canceled, failed and complete."""
        return self in FINAL_STATES


FINAL_STATES = frozenset({OpState.CANCELED, OpState.FAILED, OpState.COMPLETE})
ACTIVE_STATES = frozenset({OpState.QUEUED, OpState.RUNNING, OpState.PAUSED, OpState.ABORTING})


@dataclass(frozen=True)
class OpStatus:
    """A snapshot of one operation, as the API shows it (arguments redacted, no secrets)."""

    id: str
    type: str
    state: OpState
    step: str | None
    steps_done: int
    steps_total: int
    bytes_done: int
    bytes_total: int
    error: dict[str, Any] | None
    undo_errors: list[dict[str, Any]]
    created: datetime
    updated: datetime
    finished: datetime | None
    cancel_requested: bool
    checkpoint: str | None
    args: dict[str, Any]
    resources: Resources
    executor_id: str | None
    has_diagnostics: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready projection (for the HTTP API)."""
        return {
            "id": self.id,
            "type": self.type,
            "state": self.state.value,
            "step": self.step,
            "steps_done": self.steps_done,
            "steps_total": self.steps_total,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "error": self.error,
            "undo_errors": self.undo_errors,
            "created": self.created.isoformat(),
            "updated": self.updated.isoformat(),
            "finished": self.finished.isoformat() if self.finished else None,
            "cancel_requested": self.cancel_requested,
            "checkpoint": self.checkpoint,
            "args": self.args,
            "resources": self.resources.to_dict(),
            "executor_id": self.executor_id,
            "has_diagnostics": self.has_diagnostics,
        }


@dataclass(frozen=True)
class LogLine:
    """One log line of an operation (``seq`` increases; use it to page with ``since``)."""

    seq: int
    ts: datetime
    level: str
    step: str | None
    message: str


@dataclass(frozen=True)
class Resources:
    """What an operation uses, for admission control.

    ``host`` and ``target`` (a storage target, e.g. a repository) feed the per-host and per-type-per-target
    limits. ``exclusive`` names resources only one admitted operation may hold at a time (e.g. ``"vol:db01"``);
    if one is held, the operation is delayed (``Limits.busy_delay_s``) and tried again. ``counted`` are
    ``(key, limit)`` pairs: the operation is admitted only while fewer than ``limit`` admitted operations hold
    ``key`` (each operation brings its own limit for the key, so a narrower policy can share a key with a wider
    one); until then it waits in the queue like an operation under a soft limit.
    """

    host: str | None = None
    target: str | None = None
    exclusive: tuple[str, ...] = ()
    counted: tuple[tuple[str, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "target": self.target, "exclusive": list(self.exclusive),
                "counted": [[k, n] for k, n in self.counted]}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Resources:
        d = d or {}
        return cls(host=d.get("host"), target=d.get("target"), exclusive=tuple(d.get("exclusive") or ()),
                   counted=tuple((str(k), int(n)) for k, n in d.get("counted") or ()))

    def to_json(self) -> str:
        """The stored form (column ``exclusive_json``): exclusive names as strings, counted as ``[key, limit]``."""
        return json.dumps([*self.exclusive, *([k, n] for k, n in self.counted)])

    @staticmethod
    def parse_json(s: str | None) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
        """(exclusive, counted) from the stored form (rows written before ``counted`` hold only strings)."""
        items = json.loads(s or "[]")
        return (tuple(x for x in items if isinstance(x, str)),
                tuple((str(x[0]), int(x[1])) for x in items if isinstance(x, list) and len(x) == 2))


@dataclass(frozen=True)
class Limit:
    """A soft and a hard limit on a count of operations (``None``: no limit).

    ``soft``: at most this many *admitted* (started and not finished, paused included) operations; more wait
    in the queue, in order. ``hard``: at most this many *active* (queued, running, paused, aborting) ones; a
    submit beyond it is rejected with :class:`~frieze.engine.errors.LimitExceeded` and nothing is recorded.
    """

    soft: int | None = None
    hard: int | None = None


@dataclass(frozen=True)
class Limits:
    """Admission limits. Keys of ``per_type`` and ``per_type_target`` are operation types."""

    per_type: dict[str, Limit] = field(default_factory=dict)
    per_type_target: dict[str, Limit] = field(default_factory=dict)
    per_host: Limit = field(default_factory=Limit)
    busy_delay_s: float = 2.0


CheckpointHook = Callable[[str, str], None]


@dataclass(frozen=True)
class EngineConfig:
    """Configuration of an :class:`~frieze.engine.Engine`.

    ``database_url``: ``sqlite:///path/engine.sqlite`` (default, put in WAL mode) or ``postgresql://...``
    (needed for several coordinators; DBOS tables go to schema ``dbos``, ours are ``frieze_engine_*``).
    ``executor_id``: stable per coordinator (a restarted coordinator recovers its own operations by it).
    ``pools``: worker threads per operation type in this process (others: ``default_pool``).
    """

    database_url: str
    executor_id: str = "coord-1"
    limits: Limits = field(default_factory=Limits)
    pools: dict[str, int] = field(default_factory=dict)
    default_pool: int = 4
    dispatch_interval_s: float = 0.1
    queue_poll_s: float = 0.1
    heartbeat_s: float = 1.0
    peer_timeout_s: float = 10.0
    retention_s: float = 7 * 24 * 3600.0
    janitor_interval_s: float = 600.0
    app_version: str = "frieze-engine-1"
    #: Called in the worker after a checkpoint is durably recorded: ``hook(op_id, checkpoint_name)`` (tests).
    on_checkpoint: CheckpointHook | None = None
    #: Called in the worker after any step of a run is durably recorded (executed here, not replayed):
    #: ``hook(op_id, step)`` with ``step`` one of ``start``, ``task:<name>``, ``checkpoint:<name>``, ``pause``,
    #: ``begin_undo``, ``undo:<name>``, ``finish`` (fault-injection tests).
    on_step: CheckpointHook | None = None
