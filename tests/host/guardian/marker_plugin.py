"""A tiny AppPlugin for the guardian tests: its "quiesce" takes an exclusive ``flock`` on ``<data_dir>/lock``.

The lock is held by whatever process runs the plug-in (the guardian), like a database session's lock, so
a test can see from outside (``flock(LOCK_NB)``) whether the app is still quiesced. ``unquiesce`` releases
it and appends ``<epoch> <held_ms>`` to ``<data_dir>/unquiesced``.
"""

from __future__ import annotations

import fcntl
import os
import time
from typing import Any

from frieze.core.errors import NotSupported, StaleEpoch, UsageError
from frieze.host.apps.base import ActionResult, AppCapabilities, AppSpec, QuiesceHandle, RecoveryTarget


class MarkerPlugin:
    kind = "marker"
    capabilities = AppCapabilities(kind="marker", quiesce=True)

    def __init__(self) -> None:
        self.held: dict[str, tuple[int, int, float]] = {}  # app -> (fd, epoch, started)

    def status(self, spec: AppSpec) -> dict[str, Any]:
        return {"quiesced": spec.name in self.held}

    def start(self, spec: AppSpec) -> ActionResult:
        raise NotSupported("marker: start")

    def stop(self, spec: AppSpec) -> ActionResult:
        raise NotSupported("marker: stop")

    def quiesce(self, spec: AppSpec, *, epoch: int, lease_s: float) -> QuiesceHandle:
        if lease_s <= 0:
            raise UsageError("marker: lease must be > 0")
        if spec.options.get("fail_quiesce"):
            raise UsageError("marker: asked to fail")
        if spec.name in self.held:
            fd, ep, started = self.held[spec.name]
            return QuiesceHandle(spec.name, ep, lease_s, started, {"pid": os.getpid()})
        fd = os.open(os.path.join(spec.data_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        self.held[spec.name] = (fd, epoch, started)
        return QuiesceHandle(spec.name, epoch, lease_s, started, {"pid": os.getpid(), "label": f"marker-{epoch}"})

    def unquiesce(self, spec: AppSpec, *, epoch: int) -> ActionResult:
        if spec.name not in self.held:
            return ActionResult(False, "not quiesced")
        fd, ep, started = self.held[spec.name]
        if ep != epoch:
            raise StaleEpoch(f"marker: epoch {epoch} is not {ep}")
        del self.held[spec.name]
        os.close(fd)  # releases the flock
        held_ms = (time.monotonic() - started) * 1000
        with open(os.path.join(spec.data_dir, "unquiesced"), "a", encoding="ascii") as f:
            f.write(f"{epoch} {held_ms:.1f}\n")
        return ActionResult(True, "unquiesced", {"stop_label": f"marker-stop-{epoch}"})

    def recover(self, spec: AppSpec, target: RecoveryTarget) -> ActionResult:
        raise NotSupported("marker: recover")

    def verify(self, spec: AppSpec) -> ActionResult:
        raise NotSupported("marker: verify")
