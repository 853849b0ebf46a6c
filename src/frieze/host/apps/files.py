"""files plug-in: no application, only the file system: ``fsfreeze -f`` / ``fsfreeze -u`` of the mount.

Spec: ``data_dir`` is the mount point to freeze (must be a mount point, never ``/``). No secrets.

A Linux freeze never thaws on its own and a writer blocked on a frozen mount cannot even be killed, so in
production the freeze guardian — a separate process — calls this plug-in and owns the lease; this process
must do no I/O on the mount while it is frozen. As a second line, this plug-in arms an in-process watchdog
that thaws at the lease's end. ``fsfreeze`` itself runs with a timeout (a freeze waits for in-flight writes).
Capabilities: quiesce only; start/stop/recover/verify raise :class:`NotSupported`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from typing import Any

from frieze.core.errors import DeadlineExceeded, NotFound, UsageError
from frieze.host.apps._common import AppCommandFailed, PluginBase, remaining
from frieze.host.apps.base import ActionResult, AppCapabilities, AppSpec


def _fsfreeze(flag: str, mount: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["fsfreeze", flag, mount], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise DeadlineExceeded(f"fsfreeze {flag} {mount} did not return within {timeout:.1f}s") from e


class FilesPlugin(PluginBase):
    kind = "files"
    capabilities = AppCapabilities(
        kind="files", start_stop=False, quiesce=True, verify=False,
        notes="fsfreeze of the mount; the freeze guardian (a separate process) must own the lease",
    )

    def _check_spec(self, spec: AppSpec) -> None:
        mount = os.path.realpath(spec.data_dir)
        if not os.path.isdir(mount):
            raise NotFound(f"files app {spec.name!r}: {spec.data_dir} does not exist", app=spec.name)
        if mount == "/":
            raise UsageError(f"files app {spec.name!r}: refusing to freeze the root file system", app=spec.name)
        if not os.path.ismount(mount):
            raise NotFound(f"files app {spec.name!r}: {spec.data_dir} is not a mount point", app=spec.name)

    def _engine_status(self, spec: AppSpec) -> dict[str, Any]:
        self._check_spec(spec)
        return {"mount": os.path.realpath(spec.data_dir)}

    def _engine_quiesce(self, spec: AppSpec, *, epoch: int, lease_s: float,
                        deadline: float) -> tuple[dict[str, Any], Any]:
        mount = os.path.realpath(spec.data_dir)
        # Flush dirty data first while writers still run (syncfs), so the freeze itself has little left to do
        # and the window writers see is shorter. Best effort, bounded by half the lease.
        t_sync = time.monotonic()
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["sync", "-f", mount], capture_output=True, timeout=remaining(deadline) / 2)
        sync_ms = round((time.monotonic() - t_sync) * 1000, 1)
        t_freeze = time.monotonic()
        try:
            r = _fsfreeze("-f", mount, remaining(deadline))
        except DeadlineExceeded:
            _fsfreeze("-u", mount, 10)  # the freeze may have completed after all: never leave it frozen
            raise
        if r.returncode != 0:
            raise AppCommandFailed(f"files app {spec.name!r}: fsfreeze -f {mount} failed: {r.stderr.strip()}",
                                   app=spec.name)
        return {"method": "fsfreeze", "mount": mount, "presync_ms": sync_ms,
                "freeze_ms": round((time.monotonic() - t_freeze) * 1000, 1)}, mount

    def _engine_release(self, spec: AppSpec, resource: Any, *, expired: bool) -> dict[str, Any]:
        mount = str(resource)
        r = _fsfreeze("-u", mount, 30)
        if r.returncode != 0 and "Invalid argument" not in r.stderr:
            raise AppCommandFailed(f"files app {spec.name!r}: fsfreeze -u {mount} failed: {r.stderr.strip()}",
                                   app=spec.name)
        out: dict[str, Any] = {"released_by": "watchdog"} if expired else {}
        if r.returncode != 0:
            out["already_thawed"] = True  # someone (the guardian) thawed it first
        return out

    def thaw_orphan(self, spec: AppSpec) -> ActionResult:
        """``fsfreeze -u`` of the mount, whoever froze it (changed=False if it was not frozen)."""
        self._check_spec(spec)
        mount = os.path.realpath(spec.data_dir)
        r = _fsfreeze("-u", mount, 30)
        if r.returncode == 0:
            return ActionResult(True, f"files app {spec.name!r}: {mount} thawed")
        if "Invalid argument" in r.stderr:
            return ActionResult(False, f"files app {spec.name!r}: {mount} was not frozen")
        raise AppCommandFailed(f"files app {spec.name!r}: fsfreeze -u {mount} failed: {r.stderr.strip()}")
