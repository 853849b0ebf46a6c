"""The freeze guardian server: owns every freeze, its lease and its epoch.

Invariants (tested in ``tests/host/guardian``; the protocol is ``docs/design/freeze-guardian.md``):

- G1 Every freeze is owned by the connection that asked for it. When that connection closes (the agent
  died: the kernel closes its socket) or its peer process is gone (checked every 0.25 s through
  ``SO_PEERCRED``'s pid), every freeze it owns is thawed at once.
- G2 Every freeze thaws by its lease: the watchdog thaws it ``LEASE_MARGIN_S`` before the deadline, so the
  window (monotonic freeze start → thaw done) stays within the lease. Leases are > 0 and bounded.
- G3 Epochs are per target and single-use: a freeze needs an epoch greater than every epoch used before on
  that target (else StaleEpoch); thaw and commit must name the freeze's own epoch (else StaleEpoch). A
  refused or failed freeze (nothing frozen) does not use up its epoch.
- G4 A target is frozen at most once at a time: a second freeze with another epoch is Busy; the same
  epoch on a live freeze returns it (idempotent).
- G5 Thaw is idempotent: thawing a thawed freeze returns its recorded window and reason, ``changed=false``.
- G6 The guardian never does I/O on a mount it froze: it refuses to freeze ``/`` or the mount holding its
  own state directory or socket, its cwd is ``/``, and its journal lives on another file system.
- G7 (journal) With ``state_dir``, each live fs freeze is journaled before FIFREEZE and removed after
  thaw; a guardian that starts finds the journal and thaws what is listed (a guardian killed with the
  agent thaws on restart).

App quiesce runs an :class:`~frieze.host.apps.base.AppPlugin` in this process (loaded from the entry point
group ``frieze.apps``, or given explicitly), so the database session and its locks live here, not in the
agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from frieze.core.errors import (
    Busy,
    FriezeError,
    InternalError,
    LeaseExpired,
    NotFound,
    NotSupported,
    StaleEpoch,
    UsageError,
)
from frieze.host.apps.base import AppPlugin, AppSpec
from frieze.host.guardian import fsfreeze
from frieze.host.guardian.protocol import (
    DEFAULT_APP_LEASE_S,
    DEFAULT_FS_LEASE_S,
    MAX_LINE,
    PROTOCOL_VERSION,
    check_epoch,
    check_lease,
    decode,
    encode,
    error_to_wire,
)

LEASE_MARGIN_S = 0.05
PEER_CHECK_S = 0.25
RETRY_S = 0.5
KEEP_FINISHED = 256


_LOGQ: queue.SimpleQueue[str] = queue.SimpleQueue()
_LOGGER: list[threading.Thread] = []


def _log_writer() -> None:
    while True:
        msg = _LOGQ.get()
        with contextlib.suppress(Exception):
            print(f"frieze-guardian: {msg}", file=sys.stderr, flush=True)


def _log(msg: str) -> None:
    """Log without ever blocking the caller: if stderr goes to a file on a frozen mount, only the log thread
    waits, never a thaw."""
    if not _LOGGER:
        t = threading.Thread(target=_log_writer, name="log", daemon=True)
        _LOGGER.append(t)
        t.start()
    _LOGQ.put(msg)


@dataclass
class Freeze:
    freeze_id: str
    kind: str  # "fs" | "app"
    target: str  # "fs:/mnt/x" | "app:<name>"
    epoch: int
    lease_s: float
    owner: int  # connection number
    started: float  # monotonic, before FIFREEZE / quiesce
    deadline: float
    mount: str = ""
    spec: AppSpec | None = None
    plugin: AppPlugin | None = None
    info: dict[str, Any] = field(default_factory=dict)
    state: str = "freezing"  # freezing | frozen | thawing | thawed
    frozen_ms: float = 0.0  # how long FIFREEZE / quiesce took
    window_ms: float | None = None
    thaw_reason: str = ""
    thaw_info: dict[str, Any] = field(default_factory=dict)
    thaw_error: str = ""
    committed: bool = False
    expiring: bool = False  # the watchdog has started a thaw for it
    prev_epoch: int | None = None  # the target's last epoch before this one (restored if the freeze fails)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def public(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "freeze_id": self.freeze_id, "kind": self.kind, "target": self.target, "epoch": self.epoch,
            "lease_s": self.lease_s, "state": self.state, "frozen_ms": round(self.frozen_ms, 3),
            "window_ms": None if self.window_ms is None else round(self.window_ms, 3),
            "lease_left_s": round(max(0.0, self.deadline - now), 3) if self.state == "frozen" else 0.0,
            "thaw_reason": self.thaw_reason, "thaw_error": self.thaw_error, "committed": self.committed,
            "info": self.info, "thaw_info": self.thaw_info,
        }


PluginFactory = Callable[[], AppPlugin]


def entry_point_plugins() -> dict[str, PluginFactory]:
    """``kind -> factory`` from the ``frieze.apps`` entry point group (loaded lazily)."""
    from importlib.metadata import entry_points

    out: dict[str, PluginFactory] = {}
    for ep in entry_points(group="frieze.apps"):
        def factory(ep: Any = ep) -> AppPlugin:
            obj: AppPlugin = ep.load()()
            return obj
        out[ep.name] = factory
    return out


def load_object(spec: str) -> Any:
    """``module:attr`` → the object."""
    import importlib

    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise UsageError(f"guardian: plug-in {spec!r} is not 'module:Class'")
    return getattr(importlib.import_module(mod), attr)


class Guardian:
    """The state and the actions; :meth:`serve` runs the socket server."""

    def __init__(self, socket_path: str, *, state_dir: str | None = None,
                 plugins: dict[str, PluginFactory] | None = None) -> None:
        self.socket_path = os.path.abspath(socket_path)
        self.state_dir = os.path.abspath(state_dir) if state_dir else None
        self.factories = entry_point_plugins()
        self.factories.update(plugins or {})
        self.plugins: dict[str, AppPlugin] = {}
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.freezes: dict[str, Freeze] = {}
        self.live: dict[str, Freeze] = {}  # target -> live freeze
        self.epochs: dict[str, int] = {}  # target -> highest epoch used
        self.finished: list[str] = []
        self.conns: dict[int, socket.socket] = {}
        self.next_conn = 0
        self.stopping = threading.Event()
        self.server: socket.socket | None = None

    # ------------------------------------------------------------------------------------------- journal
    def _journal_path(self) -> str | None:
        return os.path.join(self.state_dir, "freezes.json") if self.state_dir else None

    def _journal_write(self) -> None:
        p = self._journal_path()
        if p is None:
            return
        live = [{"freeze_id": f.freeze_id, "mount": f.mount, "epoch": f.epoch}
                for f in self.live.values() if f.kind == "fs"]
        tmp = p + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"live": live, "epochs": self.epochs}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)

    def recover_journal(self) -> list[str]:
        """Thaw every fs freeze a previous guardian left in the journal; returns the mounts thawed."""
        p = self._journal_path()
        if p is None or not os.path.exists(p):
            return []
        with open(p, encoding="utf-8") as fh:
            data = json.load(fh)
        self.epochs.update({str(k): int(v) for k, v in data.get("epochs", {}).items()})
        thawed = []
        for rec in data.get("live", []):
            try:
                if fsfreeze.thaw(rec["mount"]):
                    thawed.append(rec["mount"])
                    _log(f"thawed {rec['mount']} left frozen by a previous guardian (epoch {rec['epoch']})")
            except (FriezeError, OSError) as e:
                _log(f"could not thaw {rec.get('mount')!r} from the journal: {e}")
        with self.lock:
            self._journal_write()
        return thawed

    # ------------------------------------------------------------------------------------------- freezing
    def _forbidden_mounts(self) -> set[str]:
        from frieze.host.providers._fs import mount_of

        out = {"/"}
        for p in (self.state_dir, os.path.dirname(self.socket_path)):
            if p and os.path.exists(p):
                out.add(mount_of(p).mount_point)
        return out

    def _begin(self, kind: str, target: str, epoch: int, lease_s: float, owner: int) -> Freeze | None:
        """Register a new freeze (state freezing) or return the live one of the same epoch (idempotent)."""
        with self.lock:
            cur = self.live.get(target)
            if cur is not None:
                if cur.epoch == epoch and cur.owner == owner:
                    return None if cur.state == "freezing" else cur
                if cur.epoch == epoch:
                    raise Busy(f"guardian: {target} is frozen under epoch {epoch} by another connection",
                               target=target, epoch=epoch)
                raise Busy(f"guardian: {target} is already frozen under epoch {cur.epoch}", target=target,
                           epoch=epoch, current_epoch=cur.epoch)
            last = self.epochs.get(target)
            if last is not None and epoch <= last:
                raise StaleEpoch(f"guardian: epoch {epoch} of {target} is stale (epochs up to {last} were used)",
                                 target=target, epoch=epoch, last_epoch=last)
            if owner not in self.conns:
                raise UsageError("guardian: the requesting connection is gone")
            now = time.monotonic()
            f = Freeze(freeze_id=f"f-{secrets.token_hex(6)}", kind=kind, target=target, epoch=epoch,
                       lease_s=lease_s, owner=owner, started=now, deadline=now + lease_s, prev_epoch=last)
            self.epochs[target] = epoch
            self.live[target] = f
            self.freezes[f.freeze_id] = f
            return f

    def _abort(self, f: Freeze, err: BaseException) -> None:
        with self.lock:
            f.state, f.thaw_reason, f.thaw_error = "thawed", "freeze_failed", str(err)
            f.window_ms = (time.monotonic() - f.started) * 1000
            self.live.pop(f.target, None)
            if self.epochs.get(f.target) == f.epoch:  # nothing was frozen: the epoch stays usable
                if f.prev_epoch is None:
                    self.epochs.pop(f.target, None)
                else:
                    self.epochs[f.target] = f.prev_epoch
            self._finish(f)

    def _armed(self, f: Freeze) -> dict[str, Any]:
        with self.lock:
            f.frozen_ms = (time.monotonic() - f.started) * 1000
            f.state = "frozen"
            self.cond.notify_all()
            gone = f.owner not in self.conns
        if gone:  # the agent died while we were freezing: thaw now
            self.thaw_now(f, "client_gone")
        return f.public()

    def freeze_fs(self, mount: Any, lease_s: Any, epoch: Any, owner: int) -> dict[str, Any]:
        lease = check_lease(lease_s, DEFAULT_FS_LEASE_S, f"a freeze of {mount!r}")
        ep = check_epoch(epoch)
        real = fsfreeze.check_mount(mount)
        if real in self._forbidden_mounts():
            raise UsageError(f"guardian: refusing to freeze {real!r}: the guardian itself (or the system) lives "
                             "there", mount=real)
        f = self._begin("fs", f"fs:{real}", ep, lease, owner)
        if f is None or f.state != "freezing":
            return self._existing(f, f"fs:{real}")
        f.mount = real
        try:
            with self.lock:
                self._journal_write()
            fsfreeze.freeze(real)
        except BaseException as e:
            self._abort(f, e)
            with self.lock:
                self._journal_write()
            raise
        return self._armed(f)

    def _existing(self, f: Freeze | None, target: str) -> dict[str, Any]:
        if f is None:
            raise Busy(f"guardian: {target} is being frozen by this connection right now", target=target)
        return f.public()

    def _plugin(self, kind: str) -> AppPlugin:
        with self.lock:
            p = self.plugins.get(kind)
            if p is None:
                fac = self.factories.get(kind)
                if fac is None:
                    raise NotFound(f"guardian: no app plug-in of kind {kind!r} (entry point group frieze.apps)",
                                   kind=kind)
                try:
                    p = fac()
                except FriezeError:
                    raise
                except Exception as e:
                    raise InternalError(f"guardian: loading the {kind!r} plug-in failed: {type(e).__name__}: {e}",
                                        kind=kind) from e
                self.plugins[kind] = p
            return p

    def quiesce_app(self, spec: Any, lease_s: Any, epoch: Any, owner: int) -> dict[str, Any]:
        if not isinstance(spec, dict) or not spec.get("name") or not spec.get("kind"):
            raise UsageError("guardian: an app spec needs at least 'name' and 'kind'")
        app = AppSpec(name=str(spec["name"]), kind=str(spec["kind"]), data_dir=str(spec.get("data_dir", "")),
                      options=dict(spec.get("options") or {}), secrets=dict(spec.get("secrets") or {}))
        lease = check_lease(lease_s, DEFAULT_APP_LEASE_S, f"a quiesce of app {app.name!r}")
        ep = check_epoch(epoch)
        plugin = self._plugin(app.kind)
        if not plugin.capabilities.quiesce:
            raise NotSupported(f"guardian: the {app.kind} plug-in cannot quiesce", kind=app.kind)
        f = self._begin("app", f"app:{app.name}", ep, lease, owner)
        if f is None or f.state != "freezing":
            return self._existing(f, f"app:{app.name}")
        f.spec, f.plugin = app, plugin
        try:
            # The plug-in's own lease ends a little after ours, so the guardian's thaw is the one that happens.
            handle = plugin.quiesce(app, epoch=ep, lease_s=lease + 1.0)
        except BaseException as e:
            self._abort(f, e)
            with contextlib.suppress(Exception):
                plugin.unquiesce(app, epoch=ep)
            raise
        f.info = dict(handle.info)
        return self._armed(f)

    # ------------------------------------------------------------------------------------------- thawing
    def _finish(self, f: Freeze) -> None:
        f.done.set()
        self.finished.append(f.freeze_id)
        while len(self.finished) > KEEP_FINISHED:
            self.freezes.pop(self.finished.pop(0), None)

    def thaw_now(self, f: Freeze, reason: str) -> None:
        """Thaw ``f`` (once; concurrent callers wait for the first one)."""
        with f.lock:
            with self.lock:
                if f.state != "frozen":
                    return
                f.state = "thawing"
            err = ""
            info: dict[str, Any] = {}
            try:
                if f.kind == "fs":
                    fsfreeze.thaw(f.mount)
                else:
                    assert f.plugin is not None and f.spec is not None
                    abort = getattr(f.plugin, "abort", None) if reason != "thawed" else None
                    # nobody will use what was captured under a freeze whose owner died or whose lease ran
                    # out: end it the fastest way the plug-in has (PostgreSQL: drop the backup session)
                    res = (abort(f.spec, epoch=f.epoch) if abort is not None
                           else f.plugin.unquiesce(f.spec, epoch=f.epoch))
                    info = dict(res.info)
            except Exception as e:
                err = f"{type(e).__name__}: {e}"
                _log(f"thawing {f.target} (epoch {f.epoch}) failed: {err}")
                if f.kind == "fs":  # still frozen: stay live, the watchdog retries in RETRY_S (journal kept)
                    with self.lock:
                        f.state, f.thaw_error, f.expiring = "frozen", err, False
                        f.deadline = time.monotonic() + RETRY_S
                        self.cond.notify_all()
                    return
                # an app: its plug-in's own lease / the engine's session timeout is the backstop
            end = time.monotonic()
            with self.lock:
                f.window_ms = (end - f.started) * 1000
                f.state, f.thaw_reason, f.thaw_error, f.thaw_info = "thawed", reason, err, info
                if self.live.get(f.target) is f:
                    del self.live[f.target]
                self._finish(f)
                with contextlib.suppress(OSError):
                    self._journal_write()
            _log(f"thawed {f.target} epoch {f.epoch} reason={reason} window_ms={f.window_ms:.1f}")

    def _get(self, freeze_id: Any, epoch: Any) -> Freeze:
        ep = check_epoch(epoch)
        with self.lock:
            f = self.freezes.get(str(freeze_id))
        if f is None:
            raise NotFound(f"guardian: no freeze {freeze_id!r}", freeze_id=str(freeze_id))
        if f.epoch != ep:
            raise StaleEpoch(f"guardian: epoch {ep} is not the epoch {f.epoch} of freeze {f.freeze_id}",
                             freeze_id=f.freeze_id, epoch=ep)
        return f

    def thaw(self, freeze_id: Any, epoch: Any) -> dict[str, Any]:
        f = self._get(freeze_id, epoch)
        changed = f.state == "frozen"
        self.thaw_now(f, "thawed")
        f.done.wait(30)
        return {**f.public(), "changed": changed}

    def commit(self, freeze_id: Any, epoch: Any) -> dict[str, Any]:
        """Confirm the freeze is still held under this epoch (what was captured under it is consistent)."""
        f = self._get(freeze_id, epoch)
        with self.lock:
            if f.state != "frozen" or time.monotonic() >= f.deadline:
                raise LeaseExpired(f"guardian: freeze {f.freeze_id} of {f.target} is no longer held "
                                   f"({f.thaw_reason or f.state})", freeze_id=f.freeze_id, reason=f.thaw_reason)
            f.committed = True
            return f.public()

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"pid": os.getpid(), "version": PROTOCOL_VERSION,
                    "freezes": [f.public() for f in self.freezes.values()],
                    "live": sorted(self.live), "connections": len(self.conns)}

    # ------------------------------------------------------------------------------------------- watchdogs
    def _lease_watchdog(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                now = time.monotonic()
                waiting = [f for f in self.live.values() if f.state == "frozen" and not f.expiring]
                due = [f for f in waiting if now >= f.deadline - min(LEASE_MARGIN_S, f.lease_s * 0.05)]
                if not due:
                    nxt = min((f.deadline - min(LEASE_MARGIN_S, f.lease_s * 0.05) for f in waiting),
                              default=now + 1.0)
                    self.cond.wait(timeout=max(0.001, min(1.0, nxt - now)))
                    continue
                for f in due:
                    f.expiring = True
            for f in due:
                threading.Thread(target=self.thaw_now, args=(f, "lease_expired"), daemon=True).start()
            time.sleep(0.001)

    def _owner_gone(self, owner: int) -> None:
        with self.lock:
            self.conns.pop(owner, None)
            mine = [f for f in self.live.values() if f.owner == owner and f.state == "frozen"]
        for f in mine:
            threading.Thread(target=self.thaw_now, args=(f, "client_gone"), daemon=True).start()

    def _peer_watch(self, owner: int, pid: int) -> None:
        while not self.stopping.is_set():
            with self.lock:
                if owner not in self.conns:
                    return
            if pid > 0 and not os.path.exists(f"/proc/{pid}"):
                self._owner_gone(owner)
                _log(f"connection {owner}: peer pid {pid} is gone")
                return
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[0] == "Z":  # a zombie agent is a dead agent
                        self._owner_gone(owner)
                        return
            except (OSError, IndexError):
                pass
            time.sleep(PEER_CHECK_S)

    # ------------------------------------------------------------------------------------------- serving
    def _dispatch(self, msg: dict[str, Any], owner: int) -> dict[str, Any]:
        op = msg.get("op")
        if op == "hello":
            return {"version": PROTOCOL_VERSION, "pid": os.getpid()}
        if op == "freeze_fs":
            return self.freeze_fs(msg.get("mount"), msg.get("lease_s"), msg.get("epoch"), owner)
        if op == "quiesce_app":
            return self.quiesce_app(msg.get("spec"), msg.get("lease_s"), msg.get("epoch"), owner)
        if op == "thaw":
            return self.thaw(msg.get("freeze_id"), msg.get("epoch"))
        if op == "commit":
            return self.commit(msg.get("freeze_id"), msg.get("epoch"))
        if op == "status":
            return self.status()
        raise UsageError(f"guardian: unknown op {op!r}", op=str(op))

    def _serve_conn(self, conn: socket.socket, owner: int) -> None:
        buf = b""
        try:
            while True:
                while b"\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    if len(buf) > MAX_LINE:
                        conn.sendall(encode({"id": None, "ok": False,
                                             "error": UsageError("guardian: request too long").to_dict()}))
                        return
                line, buf = buf.split(b"\n", 1)
                rid: Any = None
                try:
                    msg = decode(line)
                    rid = msg.get("id")
                    reply = {"id": rid, "ok": True, "result": self._dispatch(msg, owner)}
                except Exception as e:
                    reply = {"id": rid, "ok": False, "error": error_to_wire(e)}
                conn.sendall(encode(reply))
        except OSError:
            return
        finally:
            self._owner_gone(owner)
            with contextlib.suppress(OSError):
                conn.close()

    def _bind(self) -> socket.socket:
        path = self.socket_path
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale socket of a dead guardian
            else:
                probe.close()
                raise Busy(f"guardian: another guardian already listens on {path!r}", socket=path)
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        s.listen(16)
        return s

    def serve(self, ready: Callable[[], None] | None = None) -> None:
        """Run until :meth:`stop`; thaws everything live on the way out."""
        os.chdir("/")
        if self.state_dir:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            self.recover_journal()
        self.server = self._bind()
        threading.Thread(target=self._lease_watchdog, name="lease-watchdog", daemon=True).start()
        _log(f"listening on {self.socket_path} (pid {os.getpid()})")
        if ready:
            ready()
        try:
            while not self.stopping.is_set():
                try:
                    conn, _ = self.server.accept()
                except OSError:
                    if self.stopping.is_set():
                        break
                    raise
                pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                if uid not in (0, os.getuid()):
                    conn.close()
                    continue
                with self.lock:
                    owner = self.next_conn = self.next_conn + 1
                    self.conns[owner] = conn
                threading.Thread(target=self._serve_conn, args=(conn, owner), daemon=True).start()
                threading.Thread(target=self._peer_watch, args=(owner, pid), daemon=True).start()
        finally:
            self.shutdown()

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            with contextlib.suppress(OSError):
                self.server.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self.server.close()

    def shutdown(self) -> None:
        """Thaw every live freeze and remove the socket."""
        self.stopping.set()
        with self.lock:
            live = list(self.live.values())
        for f in live:
            self.thaw_now(f, "guardian_stopping")
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
