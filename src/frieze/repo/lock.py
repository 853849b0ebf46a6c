"""Leases: write-once lock objects with an expiry, renewed by the holder, fenced on a monotonic clock.

Contract (docs/design/repository-format.md section 8):

- The holder starts counting on ``CLOCK_BOOTTIME`` (keeps counting through suspend) *before* it puts each
  generation of its lock object. Its lease is valid while both that clock and the wall clock say less than
  ``lease_s`` has passed since the last successful renewal started. Past that, :meth:`Lease.renew` and
  :meth:`Lease.ensure_valid` raise :class:`LeaseExpired`; a lost lease is never revived.
- Others treat a lock object as live until its ``expires`` + ``skew_s``; an unreadable lock object is live
  until its store mtime + ``UNREADABLE_LIVE_S``.
- Acquisition puts its own lock first, then lists the others: of two racing parties at least one sees the
  other and backs off with :class:`Busy`. A writer conflicts with a live exclusive lease; an exclusive lease
  conflicts with any other live lease.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from frieze.core.clock import iso, parse_iso
from frieze.core.errors import Busy, FriezeError, LeaseExpired
from frieze.repo.blobstore.base import BlobStore
from frieze.repo.crypto import MAGIC_LOCK, KeyRing, open_object, seal_object

LOCK_PREFIX = "locks/"
UNREADABLE_LIVE_S = 3600.0
WRITER = "writer"
EXCLUSIVE = "exclusive"


def _pid_start(pid: int) -> int:
    """Start time (clock ticks since boot) of process ``pid``, or -1 if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat.rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return -1


def break_stale_locks(store: BlobStore, ring: KeyRing) -> list[str]:
    """Delete lock objects whose holder process on this machine no longer exists; return their keys."""
    out = []
    for r in read_locks(store, ring):
        if r.stale_local():
            store.delete(r.key)
            out.append(r.key)
    return out


def remove_all_locks(store: BlobStore) -> list[str]:
    """Delete every lock object (operator override: only when no frieze process uses the repository)."""
    keys = [b.key for b in store.list(LOCK_PREFIX)]
    for k in keys:
        store.delete(k)
    return keys


def boottime() -> float:
    """Seconds on a clock that never goes backwards and counts through suspend (Linux CLOCK_BOOTTIME)."""
    clk = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clk) if clk is not None else time.monotonic()


@dataclass(frozen=True)
class LockRecord:
    key: str
    lease: str
    generation: int
    kind: str
    host: str
    pid: int
    created: datetime
    expires: datetime
    readable: bool = True
    hostname: str = ""
    pid_start: int = 0

    def stale_local(self) -> bool:
        """True when the holder ran on this machine and its process is gone (safe to break)."""
        if not self.readable or not self.hostname or self.hostname != socket.gethostname():
            return False
        return _pid_start(self.pid) != self.pid_start

    def live(self, wall_now: float, skew_s: float) -> bool:
        return self.expires.timestamp() + skew_s > wall_now


def read_locks(store: BlobStore, ring: KeyRing) -> list[LockRecord]:
    """Every lock object; unreadable ones become records that stay live for UNREADABLE_LIVE_S after mtime."""
    out = []
    for b in store.list(LOCK_PREFIX):
        name = b.key[len(LOCK_PREFIX):]
        try:
            d = json.loads(open_object(ring, MAGIC_LOCK, b.key, store.get(b.key)))
            out.append(LockRecord(b.key, str(d["lease"]), int(d["generation"]), str(d["kind"]), str(d["host"]),
                                  int(d["pid"]), parse_iso(d["created"]), parse_iso(d["expires"]),
                                  hostname=str(d.get("hostname", "")), pid_start=int(d.get("pid_start", 0))))
        except FriezeError as e:
            if e.code == "not_found":
                continue  # released meanwhile
            exp = datetime.fromtimestamp(b.mtime + UNREADABLE_LIVE_S, UTC)
            out.append(LockRecord(b.key, name.split(".")[0], 0, "unreadable", "?", 0, exp, exp, readable=False))
        except (ValueError, KeyError, TypeError):
            exp = datetime.fromtimestamp(b.mtime + UNREADABLE_LIVE_S, UTC)
            out.append(LockRecord(b.key, name.split(".")[0], 0, "unreadable", "?", 0, exp, exp, readable=False))
    return out


class Lease:
    """One lease held by this process. Use :meth:`acquire`, then :meth:`release` (or as a context manager)."""

    def __init__(self, store: BlobStore, ring: KeyRing, kind: str, host: str, lease_s: float = 300.0, *,
                 skew_s: float = 30.0, auto_renew: bool = True,
                 clock: Callable[[], float] = boottime, wall: Callable[[], float] = time.time) -> None:
        if kind not in (WRITER, EXCLUSIVE):
            raise ValueError(kind)
        self.store, self.ring, self.kind, self.host = store, ring, kind, host
        self.lease_s, self.skew_s = lease_s, skew_s
        self.id = secrets.token_hex(16)
        self.generation = -1
        self._clock, self._wall = clock, wall
        self._mono0 = 0.0
        self._wall0 = 0.0
        self._lost = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._auto = auto_renew
        self._thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return f"{LOCK_PREFIX}{self.id}.{self.generation:06d}"

    def _put_generation(self) -> None:
        m0, w0 = self._clock(), self._wall()
        gen = self.generation + 1
        d = {"lease": self.id, "generation": gen, "kind": self.kind, "host": self.host, "pid": os.getpid(),
             "hostname": socket.gethostname(), "pid_start": _pid_start(os.getpid()),
             "created": iso(datetime.fromtimestamp(w0, UTC)),
             "expires": iso(datetime.fromtimestamp(w0 + self.lease_s, UTC)), "lease_s": self.lease_s}
        key = f"{LOCK_PREFIX}{self.id}.{gen:06d}"
        self.store.put(key, seal_object(self.ring, MAGIC_LOCK, key, json.dumps(d).encode()))
        old = self.key if self.generation >= 0 else None
        self.generation, self._mono0, self._wall0 = gen, m0, w0
        if old is not None:
            self._delete(old)

    def _delete(self, key: str) -> None:
        try:
            self.store.delete(key)
        except FriezeError:
            pass  # append-only stores keep lock objects; they expire on their own

    def conflicts(self) -> list[LockRecord]:
        now = self._wall()
        out = []
        for r in read_locks(self.store, self.ring):
            if r.lease == self.id or not r.live(now, self.skew_s):
                continue
            if self.kind == EXCLUSIVE or r.kind in (EXCLUSIVE, "unreadable"):
                out.append(r)
        return out

    def acquire(self) -> Lease:
        self._put_generation()
        others = self.conflicts()
        if others:
            self.release()
            o = others[0]
            raise Busy(f"repository is locked: {o.kind} lease {o.key} held by {o.host} (pid {o.pid}) "
                       f"until {iso(o.expires)}", lock=o.key, kind=o.kind, host=o.host)
        if self._auto:
            self._thread = threading.Thread(target=self._renew_loop, name="frieze-lease", daemon=True)
            self._thread.start()
        return self

    def valid(self) -> bool:
        with self._lock:
            if self._lost or self.generation < 0:
                return False
            ok = (self._clock() - self._mono0) < self.lease_s and (self._wall() - self._wall0) < self.lease_s
            if not ok:
                self._lost = True
            return ok

    def ensure_valid(self, what: str) -> None:
        """Fence: raise LeaseExpired (naming ``what`` was refused) unless the lease is still ours."""
        if not self.valid():
            raise LeaseExpired(f"{self.kind} lease {self.id} expired before {what}; refused (nothing was "
                               f"published). The process was paused or could not renew for {self.lease_s:g} s",
                               lease=self.id)

    def renew(self) -> None:
        self.ensure_valid("renewal")
        self._put_generation()

    def _renew_loop(self) -> None:
        period = max(self.lease_s / 3.0, 0.05)
        while not self._stop.wait(period):
            try:
                self.renew()
            except LeaseExpired:
                return
            except FriezeError:
                continue  # transient: retry until the lease runs out

    def release(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=10)
        if self.generation >= 0:
            self._delete(self.key)
        with self._lock:
            self._lost = True

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
