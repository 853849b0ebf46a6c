"""Shared machinery of the application plug-ins: lease bookkeeping, idempotence, subprocess and secret helpers.

:class:`PluginBase` implements the epoch/lease/idempotence part of the port once:

- ``quiesce(spec, epoch, lease_s)``: ``lease_s <= 0`` → :class:`UsageError`. The same epoch while its lease is
  live returns the existing :class:`QuiesceHandle`; the same epoch after its lease ran out → :class:`LeaseExpired`;
  another epoch while one is live → :class:`Conflict`; an epoch not newer than the last one used (after its
  unquiesce) → :class:`StaleEpoch`. Otherwise it calls the engine's ``_engine_quiesce`` and
  arms an in-process watchdog that calls ``_engine_release(expired=True)`` at the lease's end. Engines also set
  their own server-side bound (session timeouts, ``CLIENT PAUSE`` timeout) so the freeze ends even if this
  process dies; the freeze guardian is the separate process that owns the lease in production.
- ``unquiesce(spec, epoch)``: not quiesced → ``changed=False``; an older/other epoch → :class:`StaleEpoch`;
  at or after the lease's end → ``changed=False`` with ``info["lease_expired"] = True`` (the engine was already
  released; whatever the snapshot needed from the release, e.g. a PostgreSQL backup label, is missing).
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from frieze.core.errors import (
    Conflict,
    DeadlineExceeded,
    FriezeError,
    LeaseExpired,
    NotSupported,
    StaleEpoch,
    UsageError,
)
from frieze.host.apps.base import ActionResult, AppCapabilities, AppSpec, QuiesceHandle, RecoveryTarget


class AppCommandFailed(FriezeError):
    """An engine tool or hook exited with an error."""

    code = "app.command_failed"
    exit_code = 14
    http_status = 502


@dataclass
class _Held:
    handle: QuiesceHandle
    resource: Any
    spec: AppSpec
    deadline: float
    timer: threading.Timer | None = None
    state: str = "held"  # held | released | expired
    expired: bool = False
    expired_info: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


MAX_LEASE_S = 24 * 3600.0


def check_lease(lease_s: float, kind: str, name: str) -> None:
    """A lease is a finite number of seconds in (0, 24 h]."""
    if (isinstance(lease_s, bool) or not isinstance(lease_s, int | float) or not math.isfinite(lease_s)
            or lease_s <= 0 or lease_s > MAX_LEASE_S):
        raise UsageError(f"{kind} app {name!r}: the quiesce lease must be > 0 and <= {MAX_LEASE_S:.0f} seconds,"
                         f" got {lease_s!r}", app=name, lease_s=lease_s)


def check_epoch(epoch: int, kind: str, name: str) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise UsageError(f"{kind} app {name!r}: the freeze epoch must be an integer >= 0, got {epoch!r}",
                         app=name, epoch=epoch)


class PluginBase:
    """Base of every plug-in: subclasses set ``kind``/``capabilities`` and implement the ``_engine_*`` hooks."""

    kind: str = ""
    capabilities: AppCapabilities = AppCapabilities(kind="")

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()  # guards the two dicts only
        self._app_locks: dict[str, threading.Lock] = {}

    def _app_lock(self, name: str) -> threading.Lock:
        """Serializes quiesce/unquiesce of one app; different apps proceed in parallel."""
        with self._lock:
            return self._app_locks.setdefault(name, threading.Lock())

    # ----------------------------------------------------------------------------------------- not supported
    def unsupported(self, call: str) -> NotSupported:
        return NotSupported(f"the {self.kind} plug-in does not support {call}", plugin=self.kind, call=call)

    def status(self, spec: AppSpec) -> dict[str, Any]:
        self._check_spec(spec)
        out = {"kind": self.kind, "name": spec.name, **self._quiesce_status(spec)}
        out.update(self._engine_status(spec))
        return out

    def start(self, spec: AppSpec) -> ActionResult:
        raise self.unsupported("start")

    def stop(self, spec: AppSpec) -> ActionResult:
        raise self.unsupported("stop")

    def recover(self, spec: AppSpec, target: RecoveryTarget) -> ActionResult:
        raise self.unsupported("recover")

    def verify(self, spec: AppSpec) -> ActionResult:
        raise self.unsupported("verify")

    def thaw_orphan(self, spec: AppSpec) -> ActionResult:
        """End a freeze whose holder died, from a process that holds no state about it (the freeze guardian after
        the agent — or its own previous incarnation — died). Not part of the port: session-bound freezes
        (PostgreSQL, MariaDB, SQLite) already ended with their session, so the default does nothing."""
        self._check_spec(spec)
        return ActionResult(False, f"{self.kind} app {spec.name!r}: the freeze is bound to its session and ended"
                            " with its holder")

    # ----------------------------------------------------------------------------------------- quiesce
    def _quiesce_status(self, spec: AppSpec) -> dict[str, Any]:
        with self._lock:
            h = self._held.get(spec.name)
        if h is None or h.state != "held":
            return {"quiesced": False}
        return {"quiesced": True, "epoch": h.handle.epoch, "lease_left_s": round(h.deadline - time.monotonic(), 3)}

    def quiesce(self, spec: AppSpec, *, epoch: int, lease_s: float) -> QuiesceHandle:
        check_lease(lease_s, self.kind, spec.name)
        check_epoch(epoch, self.kind, spec.name)
        self._check_spec(spec)
        with self._app_lock(spec.name):
            with self._lock:
                cur = self._held.get(spec.name)
            if cur is not None and cur.state == "held":
                if cur.handle.epoch == epoch:
                    return cur.handle
                raise Conflict(f"{self.kind} app {spec.name!r} is already quiesced under epoch {cur.handle.epoch}",
                               app=spec.name, epoch=epoch, current_epoch=cur.handle.epoch)
            if cur is not None and cur.expired and cur.handle.epoch == epoch:
                raise LeaseExpired(f"the quiesce of {self.kind} app {spec.name!r} under epoch {epoch} already ran"
                                   " out; quiesce again with a new epoch", app=spec.name, epoch=epoch)
            if cur is not None and epoch <= cur.handle.epoch:
                raise StaleEpoch(f"epoch {epoch} is not newer than the last quiesce epoch {cur.handle.epoch} of"
                                 f" {self.kind} app {spec.name!r}", app=spec.name, epoch=epoch)
            started = time.monotonic()
            deadline = started + lease_s
            info, resource = self._engine_quiesce(spec, epoch=epoch, lease_s=lease_s, deadline=deadline)
            info.setdefault("quiesce_ms", round((time.monotonic() - started) * 1000, 1))
            handle = QuiesceHandle(app=spec.name, epoch=epoch, lease_s=lease_s, started_monotonic=started, info=info)
            held = _Held(handle=handle, resource=resource, spec=spec, deadline=deadline)
            held.timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire, args=(held,))
            held.timer.daemon = True
            held.timer.name = f"frieze-lease-{self.kind}-{spec.name}"
            with self._lock:
                self._held[spec.name] = held
            held.timer.start()
            return handle

    def _expire(self, held: _Held) -> None:
        with held.lock:
            if held.state != "held":
                return
            held.state = "expired"
            held.expired = True
            try:
                held.expired_info = self._engine_release(held.spec, held.resource, expired=True)
            except Exception as e:  # the engine's own timeout is the backstop
                held.expired_info = {"release_error": f"{type(e).__name__}: {e}"}

    def unquiesce(self, spec: AppSpec, *, epoch: int) -> ActionResult:
        with self._app_lock(spec.name):
            return self._unquiesce(spec, epoch)

    #: True where dropping the held session ends the freeze faster than a clean release (PostgreSQL: no
    #: ``pg_backup_stop`` waiting for the WAL archiver); :meth:`abort` then drops it.
    abort_by_dropping: bool = False

    def abort(self, spec: AppSpec, *, epoch: int) -> ActionResult:
        """End a quiesce whose result nobody will use (its holder died, its lease ran out) the fastest way the
        engine allows. Not part of the port (the freeze guardian uses it when present); the default is
        :meth:`unquiesce`. The result says ``lease_expired``/``aborted`` so nobody mistakes it for a clean end."""
        with self._app_lock(spec.name):
            with self._lock:
                held = self._held.get(spec.name)
            if (not self.abort_by_dropping or held is None or held.state != "held"
                    or held.handle.epoch != epoch):
                return self._unquiesce(spec, epoch)
            if held.timer is not None:
                held.timer.cancel()
            self._expire(held)
            res = self._unquiesce(spec, epoch)
            res.info["aborted"] = True
            return res

    def _unquiesce(self, spec: AppSpec, epoch: int) -> ActionResult:
        with self._lock:
            held = self._held.get(spec.name)
        if held is None or held.state == "released":
            return ActionResult(False, f"{self.kind} app {spec.name!r} is not quiesced")
        if held.handle.epoch != epoch:
            raise StaleEpoch(f"epoch {epoch} is not the current quiesce epoch {held.handle.epoch} of"
                             f" {self.kind} app {spec.name!r}", app=spec.name, epoch=epoch)
        if held.timer is not None:
            held.timer.cancel()
        with held.lock:
            if held.state == "expired":
                held.state = "released"
                held.expired = True
                return ActionResult(False, f"the lease of {self.kind} app {spec.name!r} (epoch {epoch}) ran out;"
                                    " the engine was already released",
                                    {"lease_expired": True, **held.expired_info})
            if held.state == "released":
                return ActionResult(False, f"{self.kind} app {spec.name!r} is not quiesced")
            held.state = "released"
            late = time.monotonic() >= held.deadline  # the engine's own timeout may already have ended it
            held.expired = late
            try:
                info = self._engine_release(spec, held.resource, expired=False)
            except Exception:
                # Still held as far as we know: keep the lease (and its watchdog) so a retry or expiry thaws.
                held.state = "held"
                held.timer = threading.Timer(max(0.0, held.deadline - time.monotonic()), self._expire, args=(held,))
                held.timer.daemon = True
                held.timer.start()
                raise
        window = time.monotonic() - held.handle.started_monotonic
        info.setdefault("held_ms", round(window * 1000, 1))
        if late:
            info["lease_expired"] = True
        if info.get("lease_expired"):
            held.expired = True
            return ActionResult(False, f"the lease of {self.kind} app {spec.name!r} ran out before unquiesce", info)
        return ActionResult(True, f"{self.kind} app {spec.name!r} unquiesced (epoch {epoch})", info)

    # ----------------------------------------------------------------------------------------- engine hooks
    def _check_spec(self, spec: AppSpec) -> None:
        """Raise NotFound/UsageError if the spec cannot name a real instance (no side effects)."""

    def _engine_status(self, spec: AppSpec) -> dict[str, Any]:
        return {}

    def _engine_quiesce(self, spec: AppSpec, *, epoch: int, lease_s: float,
                        deadline: float) -> tuple[dict[str, Any], Any]:
        raise self.unsupported("quiesce")

    def _engine_release(self, spec: AppSpec, resource: Any, *, expired: bool) -> dict[str, Any]:
        raise self.unsupported("unquiesce")


def remaining(deadline: float, floor: float = 0.05) -> float:
    return max(floor, deadline - time.monotonic())


def run_tool(argv: Sequence[str], *, what: str, timeout: float, input_text: str | None = None,
             check: bool = True, user: str | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run an engine tool (argv list, no shell). ``user``: run as that OS user via runuser when we are root.
    Output is returned, never logged; errors name ``what`` and carry the tool's stderr tail (tools here never
    echo secrets)."""
    full = list(argv)
    if user and os.geteuid() == 0 and user != "root":
        full = ["runuser", "-u", user, "--", *full]
    try:
        r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input_text, cwd=cwd)
    except FileNotFoundError as e:
        raise NotSupported(f"{what}: the tool {argv[0]!r} is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise DeadlineExceeded(f"{what}: {os.path.basename(argv[0])} did not finish within {timeout:.0f}s") from e
    if check and r.returncode != 0:
        tail = (r.stderr or r.stdout).strip()[-800:]
        raise AppCommandFailed(f"{what}: {os.path.basename(argv[0])} exited {r.returncode}: {tail}",
                               returncode=r.returncode)
    return r


@contextlib.contextmanager
def secret_file(content: str, prefix: str = "frieze-") -> Iterator[str]:
    """A 0600 temp file holding ``content`` (e.g. a client defaults file with a password); removed on exit."""
    fd, path = tempfile.mkstemp(prefix=prefix, dir=os.environ.get("FRIEZE_RUNTIME_DIR") or None)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(content)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
