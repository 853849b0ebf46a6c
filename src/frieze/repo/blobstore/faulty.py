"""A fault-injecting wrapper around any blob store, for the repository's fault tests.

Without rules it is a transparent proxy (and passes the conformance suite). Faults are added with the
small builder methods below, or as :class:`Rule` objects to the constructor; each returns ``self`` so
they chain::

    fs = FaultyBlobStore(MemoryBlobStore())
    fs.fail("put", nth=3)                                  # the 3rd put raises TransientStorageError
    fs.fail("get", key_prefix="index/", error=StorageError, times=None)   # every get of index/* fails
    fs.no_space_after(1 << 20)                             # puts fail with NoSpace once 1 MiB was written
    fs.corrupt_reads("data/", flip=1)                      # flip one bit in each blob read from data/*
    fs.truncate_reads("snapshots/", keep=10)               # reads return only the first 10 bytes
    fs.delay("put", seconds=0.2)                           # slow storage
    fs.kill_at("after_put", nth=5)                         # SIGKILL this process right after the 5th put

Matching: a rule applies to calls of its ``op`` (``"put"``, ``"get"``, ``"stat"``, ``"list"``,
``"delete"`` or ``"*"``) whose key starts with ``key_prefix``. The rule counts the calls it matches
(1-based); ``nth`` makes it fire at that call only, or from that call on when ``times`` allows more;
``times`` bounds how often it fires (``None`` = no bound). A failing put happens *before* the inner store is
touched, so the inner store never holds a partial blob, exactly like a real store whose put failed.

Kill points: ``"before_put"`` (the blob is not stored) and ``"after_put"`` (the inner put returned: the
blob is stored and durable, but the caller never learns it). ``how="sigkill"`` (default) sends SIGKILL to
the own process, ``how="exit"`` calls ``os._exit(137)``. Use them in a child process.

Every call is recorded in :attr:`FaultyBlobStore.calls` as ``(op, key)``; :attr:`fired` records
``(rule.name, op, key)`` for each fault that fired. Thread-safe.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from frieze.core.errors import FriezeError, NoSpace, TransientStorageError
from frieze.repo.blobstore.base import BlobInfo, BlobStore, Capabilities, check_key

Op = Literal["put", "get", "stat", "list", "delete", "*"]
Action = Literal["raise", "no_space", "corrupt", "truncate", "delay", "kill"]


@dataclass
class Rule:
    """One fault. See the module docstring for how rules match and count."""

    op: Op
    action: Action
    key_prefix: str = ""
    #: fire first at the nth matching call (1-based); None = from the first
    nth: int | None = None
    #: how many times to fire; None = unbounded
    times: int | None = 1
    #: for "raise": the error class (a FriezeError subclass) or instance to raise
    error: type[FriezeError] | FriezeError = TransientStorageError
    #: for "corrupt": how many bits to flip (spread over the blob); for "truncate": bytes to keep
    amount: int = 1
    #: for "delay": seconds; for "no_space": the byte budget
    value: float = 0.0
    #: for "kill": "before_put" or "after_put", and "sigkill" or "exit"
    point: Literal["before_put", "after_put"] = "before_put"
    how: Literal["sigkill", "exit"] = "sigkill"
    name: str = ""
    seen: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def matches(self, op: str, key: str) -> bool:
        return (self.op == "*" or self.op == op) and key.startswith(self.key_prefix)

    def should_fire(self) -> bool:
        """Count one matching call; say whether the rule fires on it."""
        self.seen += 1
        if self.nth is not None and self.seen < self.nth:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


class FaultyBlobStore:
    """Wraps ``inner``; injects the faults of its rules; otherwise forwards every call unchanged."""

    def __init__(self, inner: BlobStore, *, rules: list[Rule] | tuple[Rule, ...] = ()) -> None:
        self.inner = inner
        self.append_only = inner.append_only
        c = inner.capabilities
        self.capabilities = Capabilities(name=f"faulty({c.name})", atomic_create=c.atomic_create,
                                         object_lock=c.object_lock, persistent=c.persistent,
                                         ranged_reads=c.ranged_reads)
        self.rules: list[Rule] = list(rules)
        self.calls: list[tuple[str, str]] = []
        self.fired: list[tuple[str, str, str]] = []
        self.bytes_written = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FaultyBlobStore({self.inner!r}, rules={len(self.rules)})"

    # -- builders ----------------------------------------------------------------------------------------

    def add(self, rule: Rule) -> FaultyBlobStore:
        """Add a rule; return self."""
        if not rule.name:
            rule.name = f"{rule.action}:{rule.op}#{len(self.rules) + 1}"
        with self._lock:
            self.rules.append(rule)
        return self

    def fail(self, op: Op, *, nth: int | None = None, times: int | None = 1, key_prefix: str = "",
             error: type[FriezeError] | FriezeError = TransientStorageError) -> FaultyBlobStore:
        """Raise ``error`` on matching calls (default: once, at the first or ``nth`` call)."""
        return self.add(Rule(op, "raise", key_prefix, nth, times, error=error))

    def no_space_after(self, budget: int, *, key_prefix: str = "") -> FaultyBlobStore:
        """Let puts store ``budget`` bytes in total; a put that would exceed it raises NoSpace (ENOSPC)."""
        return self.add(Rule("put", "no_space", key_prefix, None, None, value=float(budget)))

    def corrupt_reads(self, key_prefix: str = "", *, flip: int = 1, nth: int | None = None,
                      times: int | None = None) -> FaultyBlobStore:
        """Flip ``flip`` bits (spread evenly) in the bytes ``get`` returns; the stored blob is unchanged."""
        return self.add(Rule("get", "corrupt", key_prefix, nth, times, amount=flip))

    def truncate_reads(self, key_prefix: str = "", *, keep: int = 0, nth: int | None = None,
                       times: int | None = None) -> FaultyBlobStore:
        """Return only the first ``keep`` bytes of what ``get`` reads."""
        return self.add(Rule("get", "truncate", key_prefix, nth, times, amount=keep))

    def delay(self, op: Op, seconds: float, *, key_prefix: str = "", nth: int | None = None,
              times: int | None = None) -> FaultyBlobStore:
        """Sleep ``seconds`` before matching calls."""
        return self.add(Rule(op, "delay", key_prefix, nth, times, value=seconds))

    def kill_at(self, point: Literal["before_put", "after_put"], *, nth: int | None = None, key_prefix: str = "",
                how: Literal["sigkill", "exit"] = "sigkill") -> FaultyBlobStore:
        """Kill this process at ``point`` of the matching put (the ``nth``, or the first)."""
        return self.add(Rule("put", "kill", key_prefix, nth, 1, point=point, how=how))

    def clear(self) -> FaultyBlobStore:
        """Remove every rule (counters and the call log stay)."""
        with self._lock:
            self.rules.clear()
        return self

    # -- machinery -------------------------------------------------------------------------------------------

    def _firing(self, op: str, key: str, size: int = 0) -> list[Rule]:
        out: list[Rule] = []
        with self._lock:
            self.calls.append((op, key))
            for r in self.rules:
                if not r.matches(op, key):
                    continue
                if r.action == "no_space":
                    if self.bytes_written + size > r.value:
                        r.fired += 1
                        out.append(r)
                    continue
                if r.action == "kill" and op != "put":
                    continue
                if r.should_fire():
                    out.append(r)
            for r in out:
                self.fired.append((r.name, op, key))
        return out

    @staticmethod
    def _raise(r: Rule, op: str, key: str) -> None:
        if r.action == "raise":
            if isinstance(r.error, FriezeError):
                raise r.error
            raise r.error(f"injected fault ({r.name}) on {op} of blob {key!r}", key=key, injected=True)
        if r.action == "no_space":
            raise NoSpace(f"no space left on device (ENOSPC, injected after {int(r.value)} bytes) "
                          f"on put of blob {key!r}", key=key, errno="ENOSPC", injected=True)
        if r.action == "delay":
            time.sleep(r.value)

    @staticmethod
    def _kill(r: Rule) -> None:
        if r.how == "exit":
            os._exit(137)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # pragma: no cover - the signal is delivered before this returns

    @staticmethod
    def _damage(rules: list[Rule], data: bytes) -> bytes:
        for r in rules:
            if r.action == "truncate":
                data = data[: r.amount]
            elif r.action == "corrupt" and data:
                buf = bytearray(data)
                n = max(1, r.amount)
                for i in range(n):
                    pos = (i * len(buf)) // n
                    buf[pos] ^= 1 << (i % 8)
                data = bytes(buf)
        return data

    # -- the port --------------------------------------------------------------------------------------------

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        check_key(key)
        size = memoryview(data).nbytes
        rules = self._firing("put", key, size)
        for r in rules:
            if r.action == "kill" and r.point == "before_put":
                self._kill(r)
            self._raise(r, "put", key)
        self.inner.put(key, data)
        with self._lock:
            self.bytes_written += size
        for r in rules:
            if r.action == "kill" and r.point == "after_put":
                self._kill(r)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_key(key)
        rules = self._firing("get", key)
        for r in rules:
            self._raise(r, "get", key)
        return self._damage(rules, self.inner.get(key, offset, length))

    def stat(self, key: str) -> BlobInfo | None:
        check_key(key)
        for r in self._firing("stat", key):
            self._raise(r, "stat", key)
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        for r in self._firing("list", prefix):
            self._raise(r, "list", prefix)
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        check_key(key)
        for r in self._firing("delete", key):
            self._raise(r, "delete", key)
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()
