"""script plug-in: user-supplied quiesce/unquiesce hooks.

Spec ``options``: ``quiesce`` and ``unquiesce`` (argv lists, run without a shell), optional ``verify`` (argv),
``timeout_s`` (per hook, default 30; a quiesce hook is also bounded by the lease), ``on_error`` (``fail``, the
default, or ``continue``). ``data_dir`` (if it exists) is the hooks' working directory.

Hooks get a clean environment (``PATH``, ``LANG`` and non-secret ``FRIEZE_APP``, ``FRIEZE_PHASE``,
``FRIEZE_EPOCH``, ``FRIEZE_LEASE_S``) and, on stdin, one JSON object ``{"app", "phase", "epoch", "lease_s",
"secrets"}`` — secrets never go into argv or the environment. A hook that runs past its timeout is killed
with its whole process group.

A failing quiesce hook (non-zero exit or timeout): with ``on_error = fail`` the unquiesce hook runs (undo) and
:class:`HookFailed` is raised; with ``continue`` the quiesce succeeds with ``info["hook_failed"] = True`` and
``info["consistency"] = "crash"`` so the caller labels the restore point honestly. The lease is enforced by an
in-process watchdog that runs the unquiesce hook when it runs out (the guardian in production). Start, stop
and recover are not supported; verify only when ``options.verify`` is given.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from typing import Any

from frieze.core.errors import FriezeError, NotFound, UsageError
from frieze.host.apps._common import PluginBase, remaining
from frieze.host.apps.base import ActionResult, AppCapabilities, AppSpec


class HookFailed(FriezeError):
    """A user hook failed or timed out."""

    code = "app.hook_failed"
    exit_code = 14
    http_status = 502


def _argv(spec: AppSpec, key: str, required: bool) -> list[str] | None:
    v = spec.options.get(key)
    if v is None:
        if required:
            raise UsageError(f"script app {spec.name!r}: options.{key} (an argv list) is required", app=spec.name)
        return None
    if not isinstance(v, list | tuple) or not v or not all(isinstance(a, str) for a in v):
        raise UsageError(f"script app {spec.name!r}: options.{key} must be a non-empty list of strings (argv,"
                         " no shell)", app=spec.name)
    exe = v[0]
    if shutil.which(exe) is None:
        raise NotFound(f"script app {spec.name!r}: the {key} hook {exe!r} is not an executable", app=spec.name)
    return list(v)


def run_hook(spec: AppSpec, argv: list[str], *, phase: str, epoch: int | None, lease_s: float | None,
             timeout: float) -> dict[str, Any]:
    """Run one hook; returns {"rc", "seconds", "stdout_tail", "stderr_tail", "timed_out"} (no secrets)."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8",
           "FRIEZE_APP": spec.name, "FRIEZE_PHASE": phase, "FRIEZE_EPOCH": "" if epoch is None else str(epoch),
           "FRIEZE_LEASE_S": "" if lease_s is None else str(lease_s)}
    payload = json.dumps({"app": spec.name, "phase": phase, "epoch": epoch, "lease_s": lease_s,
                          "secrets": dict(spec.secrets)})
    cwd = spec.data_dir if spec.data_dir and os.path.isdir(spec.data_dir) else None
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=cwd, text=True, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(payload, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    except BrokenPipeError:  # the hook did not read stdin
        out, err = proc.communicate()
    return {"rc": proc.returncode, "seconds": round(time.monotonic() - t0, 3), "timed_out": timed_out,
            "stdout_tail": (out or "")[-500:], "stderr_tail": (err or "")[-500:]}


def _failed(r: dict[str, Any]) -> bool:
    return bool(r["timed_out"] or r["rc"] != 0)


def _describe(r: dict[str, Any], timeout: float) -> str:
    if r["timed_out"]:
        return f"timed out after {timeout:.1f}s (killed)"
    return f"exited {r['rc']}: {r['stderr_tail'].strip()[-300:]}"


class ScriptPlugin(PluginBase):
    kind = "script"
    capabilities = AppCapabilities(
        kind="script", start_stop=False, quiesce=True, verify=True,
        notes="user hooks (argv, no shell) with timeout and on_error fail|continue; verify needs options.verify",
    )

    def _check_spec(self, spec: AppSpec) -> None:
        if spec.data_dir and not os.path.exists(spec.data_dir):
            raise NotFound(f"script app {spec.name!r}: {spec.data_dir} does not exist", app=spec.name)
        mode = spec.options.get("on_error", "fail")
        if mode not in ("fail", "continue"):
            raise UsageError(f"script app {spec.name!r}: on_error must be 'fail' or 'continue', not {mode!r}")
        _argv(spec, "quiesce", True)
        _argv(spec, "unquiesce", True)

    def _timeout(self, spec: AppSpec) -> float:
        t = spec.options.get("timeout_s", 30)
        if not isinstance(t, int | float) or t <= 0:
            raise UsageError(f"script app {spec.name!r}: timeout_s must be > 0")
        return float(t)

    def _engine_quiesce(self, spec: AppSpec, *, epoch: int, lease_s: float,
                        deadline: float) -> tuple[dict[str, Any], Any]:
        argv = _argv(spec, "quiesce", True)
        assert argv is not None
        timeout = min(self._timeout(spec), remaining(deadline))
        r = run_hook(spec, argv, phase="quiesce", epoch=epoch, lease_s=lease_s, timeout=timeout)
        info: dict[str, Any] = {"method": "hook", "hook": r}
        if _failed(r):
            if spec.options.get("on_error", "fail") == "fail":
                undo = _argv(spec, "unquiesce", True)
                assert undo is not None
                run_hook(spec, undo, phase="unquiesce", epoch=epoch, lease_s=lease_s, timeout=self._timeout(spec))
                raise HookFailed(f"script app {spec.name!r}: quiesce hook {argv[0]!r} {_describe(r, timeout)}",
                                 app=spec.name)
            info.update(hook_failed=True, consistency="crash",
                        error=f"quiesce hook {argv[0]!r} {_describe(r, timeout)}")
        return info, epoch

    def _engine_release(self, spec: AppSpec, resource: Any, *, expired: bool) -> dict[str, Any]:
        argv = _argv(spec, "unquiesce", True)
        assert argv is not None
        timeout = self._timeout(spec)
        r = run_hook(spec, argv, phase="unquiesce", epoch=int(resource), lease_s=None, timeout=timeout)
        info: dict[str, Any] = {"hook": r}
        if expired:
            info["released_by"] = "watchdog"
        if _failed(r):
            msg = f"script app {spec.name!r}: unquiesce hook {argv[0]!r} {_describe(r, timeout)}"
            if spec.options.get("on_error", "fail") == "fail" and not expired:
                raise HookFailed(msg, app=spec.name)
            info.update(hook_failed=True, error=msg)
        return info

    def thaw_orphan(self, spec: AppSpec) -> ActionResult:
        """Run the unquiesce hook once more (hooks should be idempotent: thawing a thawed app is a no-op)."""
        self._check_spec(spec)
        info = self._engine_release(spec, -1, expired=True)
        return ActionResult(True, f"script app {spec.name!r}: unquiesce hook run", info)

    def verify(self, spec: AppSpec) -> ActionResult:
        argv = _argv(spec, "verify", False)
        if argv is None:
            raise self.unsupported("verify (no options.verify hook)")
        timeout = self._timeout(spec)
        r = run_hook(spec, argv, phase="verify", epoch=None, lease_s=None, timeout=timeout)
        if _failed(r):
            raise HookFailed(f"script app {spec.name!r}: verify hook {argv[0]!r} {_describe(r, timeout)}")
        return ActionResult(False, f"script app {spec.name!r}: verify hook passed", {"ok": True, "hook": r})
