"""The typed client of the freeze guardian, and a way to start one.

A :class:`GuardianClient` holds **one** connection for its lifetime: every freeze it asks for is owned by
that connection, and the guardian thaws them all as soon as the connection closes (the agent died or closed
the client). Calls are serialized on the connection (thread-safe). Errors come back as the matching
:mod:`frieze.core.errors` class (StaleEpoch, Busy, UsageError, LeaseExpired, NotFound...).

The agent must do no I/O on a mount while it is frozen: it learns what is frozen from :meth:`status`
and leaves those mounts alone until :meth:`thaw` returned.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from frieze.core.errors import DeadlineExceeded, StorageError
from frieze.host.apps.base import AppSpec
from frieze.host.guardian.protocol import decode, encode, error_from_wire


@dataclass(frozen=True)
class FreezeInfo:
    freeze_id: str
    target: str
    epoch: int
    lease_s: float
    #: how long FIFREEZE / the plug-in's quiesce took (ms)
    frozen_ms: float
    #: what the plug-in reported (backup label, LSN, binlog position); {} for fs freezes
    info: dict[str, Any]


@dataclass(frozen=True)
class ThawResult:
    freeze_id: str
    #: monotonic freeze start -> thaw done, as measured by the guardian (ms)
    window_ms: float
    #: thawed | lease_expired | client_gone | guardian_stopping | freeze_failed
    reason: str
    #: False when it was already thawed (by lease, say) before this call
    changed: bool
    #: what the plug-in's unquiesce reported (e.g. PostgreSQL's backup label)
    info: dict[str, Any]
    error: str


class GuardianClient:
    def __init__(self, socket_path: str, *, timeout_s: float = 120.0) -> None:
        self.socket_path = socket_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        try:
            self._sock.connect(socket_path)
        except OSError as e:
            self._sock.close()
            raise StorageError(f"cannot connect to the freeze guardian at {socket_path!r}: {e.strerror}",
                               socket=socket_path) from e
        self._lock = threading.Lock()
        self._buf = b""
        self._next = 0
        self.guardian_pid = int(self._call("hello")["pid"])

    def close(self) -> None:
        """Close the connection: the guardian thaws every freeze this client still owns."""
        self._sock.close()

    def __enter__(self) -> GuardianClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, op: str, **kw: Any) -> dict[str, Any]:
        with self._lock:
            self._next += 1
            rid = self._next
            try:
                self._sock.sendall(encode({"id": rid, "op": op, **kw}))
                while b"\n" not in self._buf:
                    chunk = self._sock.recv(65536)
                    if not chunk:
                        raise StorageError("the freeze guardian closed the connection", socket=self.socket_path)
                    self._buf += chunk
            except TimeoutError as e:
                raise DeadlineExceeded(f"the freeze guardian did not answer {op}", op=op) from e
            except OSError as e:
                raise StorageError(f"talking to the freeze guardian failed: {e}", op=op) from e
            line, self._buf = self._buf.split(b"\n", 1)
        msg = decode(line)
        if msg.get("id") != rid:
            raise StorageError(f"the freeze guardian answered request {msg.get('id')!r}, expected {rid}")
        if not msg.get("ok"):
            raise error_from_wire(msg.get("error") or {})
        result: dict[str, Any] = msg["result"]
        return result

    @staticmethod
    def _freeze(r: dict[str, Any]) -> FreezeInfo:
        return FreezeInfo(freeze_id=r["freeze_id"], target=r["target"], epoch=r["epoch"], lease_s=r["lease_s"],
                          frozen_ms=r["frozen_ms"], info=r.get("info") or {})

    def freeze_fs(self, mount: str, lease_s: float | None = None, epoch: int = 0) -> FreezeInfo:
        """FIFREEZE ``mount`` under ``epoch`` for at most ``lease_s`` (default 10 s)."""
        return self._freeze(self._call("freeze_fs", mount=mount, lease_s=lease_s, epoch=epoch))

    def quiesce_app(self, spec: AppSpec, lease_s: float | None = None, epoch: int = 0) -> FreezeInfo:
        """Quiesce the app through its plug-in, in the guardian's process, for at most ``lease_s`` (60 s)."""
        wire = {"name": spec.name, "kind": spec.kind, "data_dir": spec.data_dir, "options": spec.options,
                "secrets": spec.secrets}
        return self._freeze(self._call("quiesce_app", spec=wire, lease_s=lease_s, epoch=epoch))

    def commit(self, freeze_id: str, epoch: int) -> None:
        """Check that the freeze is still held under ``epoch`` (LeaseExpired / StaleEpoch otherwise)."""
        self._call("commit", freeze_id=freeze_id, epoch=epoch)

    def thaw_result(self, freeze_id: str, epoch: int) -> ThawResult:
        r = self._call("thaw", freeze_id=freeze_id, epoch=epoch)
        return ThawResult(freeze_id=r["freeze_id"], window_ms=float(r["window_ms"]), reason=r["thaw_reason"],
                          changed=bool(r["changed"]), info=r.get("thaw_info") or {}, error=r.get("thaw_error", ""))

    def thaw(self, freeze_id: str, epoch: int) -> float:
        """Thaw (idempotent); returns the freeze window in ms."""
        return self.thaw_result(freeze_id, epoch).window_ms

    def status(self) -> dict[str, Any]:
        """``{"pid", "version", "live": [targets], "freezes": [...], "connections"}``."""
        return self._call("status")

    def frozen_mounts(self) -> list[str]:
        """The mounts frozen right now (by anyone through this guardian): do no I/O under them."""
        return [t[3:] for t in self.status()["live"] if t.startswith("fs:")]

    def is_frozen(self, path: str) -> bool:
        """True if ``path`` is on (or under) a mount this guardian holds frozen. Reads no file system."""
        real = os.path.realpath(path)
        return any(real == m or real.startswith(m.rstrip("/") + "/") for m in self.frozen_mounts())


def spawn_guardian(socket_path: str, *, state_dir: str | None = None, plugins: dict[str, str] | None = None,
                   python: str | None = None, env: dict[str, str] | None = None,
                   ready_timeout_s: float = 30.0, quiet: bool = False,
                   prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m frieze.host.guardian`` in its own session and wait until it accepts connections.

    The guardian gets its own session (``start_new_session``) so that killing the agent's process group
    does not kill it. ``plugins`` maps extra app kinds to ``module:Class``. The caller owns the process
    (terminate it with SIGTERM: that thaws everything live). ``quiet`` sends its log (stderr) to /dev/null.
    ``prefix``: argv before the interpreter (e.g. ``["ip", "netns", "exec", NS]``: a guardian in a network
    namespace; its socket is a file, so an agent outside can still reach it).
    """
    argv = [*(prefix or []), python or sys.executable, "-m", "frieze.host.guardian", "--socket", socket_path]
    if state_dir:
        argv += ["--state-dir", state_dir]
    for kind, target in (plugins or {}).items():
        argv += ["--plugin", f"{kind}={target}"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL if quiet else None, env=env, start_new_session=True)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StorageError(f"the freeze guardian exited at start with status {proc.returncode}",
                               socket=socket_path)
        if os.path.exists(socket_path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(socket_path)
                return proc
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise DeadlineExceeded(f"the freeze guardian did not start listening on {socket_path!r} in {ready_timeout_s} s")
