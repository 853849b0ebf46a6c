"""An in-process stand-in for an agent, for unit tests of the coordinator's workflow logic only.

It drives a real SQLite database (a held ``BEGIN IMMEDIATE`` write lock after a WAL checkpoint as the
quiesce, with a lease enforced by a timer) and makes plain-copy snapshots of real directories. The end to
end proof with the real agent process is tests/coordinator/test_demo_flow.py.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import blake3

from frieze.coordinator.agents import AppRef, VolumeRef
from frieze.coordinator.mover import FileEntry
from frieze.core.errors import AlreadyExists, StaleEpoch


class _Source:
    def __init__(self, root: Path, corrupt: str | None = None, snap_id: str | None = None) -> None:
        self.root = root
        self.corrupt = corrupt
        self.snap_id = snap_id  # as the agent's source has it: the mirror then knows which snapshot it holds

    def entries(self) -> list[FileEntry]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            for n in sorted(dirnames + filenames):
                p = Path(dirpath) / n
                rel = p.relative_to(self.root).as_posix()
                st = os.lstat(p)
                if p.is_symlink():
                    out.append(FileEntry(rel, "symlink", target=os.readlink(p), mtime_ns=st.st_mtime_ns))
                elif p.is_dir():
                    out.append(FileEntry(rel, "dir", mode=st.st_mode & 0o7777, mtime_ns=st.st_mtime_ns))
                else:
                    out.append(FileEntry(rel, "file", st.st_size, st.st_mode & 0o7777, st.st_mtime_ns,
                                         blake3.blake3(p.read_bytes()).hexdigest()))
        return out

    def read(self, path: str) -> Iterator[bytes]:
        data = (self.root / path).read_bytes()
        if self.corrupt == path:
            data = b"X" + data[1:]
        yield data


class _Sink:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, entry: FileEntry, chunks: Iterable[bytes] | None) -> None:
        p = self.root / entry.path
        if entry.type == "dir":
            p.mkdir(parents=True, exist_ok=True)
        elif entry.type == "symlink":
            assert entry.target is not None
            os.symlink(entry.target, p)
        else:
            assert chunks is not None
            data = b"".join(chunks)
            assert blake3.blake3(data).hexdigest() == entry.digest
            p.write_bytes(data)
            os.chmod(p, entry.mode)


class LocalPort:
    """One host, in-process."""

    def __init__(self, host: str, snaps: Path, *, fail_quiesce: set[str] | None = None,
                 corrupt: str | None = None, version: str = "0.1.0", slow_snapshot_s: float = 0.0) -> None:
        self.host = host
        self.snaps = snaps
        self.fail_quiesce = fail_quiesce or set()
        self.corrupt = corrupt
        self._version = version
        self.slow_snapshot_s = slow_snapshot_s
        self.frozen: dict[str, tuple[sqlite3.Connection, int, float, threading.Timer]] = {}
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def version(self) -> str:
        return self._version

    def quiesce(self, app: AppRef, *, epoch: int, lease_s: float) -> dict[str, Any]:
        self.calls.append(f"quiesce {app.name} {epoch}")
        if app.name in self.fail_quiesce:
            from frieze.core.errors import DeadlineExceeded

            raise DeadlineExceeded(f"quiesce of {app.name} timed out")
        with self._lock:
            if app.id in self.frozen:
                return {"changed": False}
            db = Path(app.data_dir) / app.options.get("db", "app.db")
            conn = sqlite3.connect(db, timeout=10, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("BEGIN IMMEDIATE")
            t = threading.Timer(lease_s, self._expire, args=(app.id,))
            t.start()
            self.frozen[app.id] = (conn, epoch, time.monotonic(), t)
        return {"changed": True}

    def _expire(self, app_id: str) -> None:
        with self._lock:
            item = self.frozen.pop(app_id, None)
        if item is not None:
            item[0].execute("ROLLBACK")
            item[0].close()

    def unquiesce(self, app: AppRef, *, epoch: int) -> dict[str, Any]:
        self.calls.append(f"unquiesce {app.name} {epoch}")
        with self._lock:
            item = self.frozen.get(app.id)
            if item is not None and item[1] > epoch:
                raise StaleEpoch(f"epoch {epoch} is stale")
            item = self.frozen.pop(app.id, None)
        if item is None:
            return {"changed": False, "frozen_ms": None}
        conn, _e, t0, timer = item
        timer.cancel()
        conn.execute("ROLLBACK")
        conn.close()
        return {"changed": True, "frozen_ms": (time.monotonic() - t0) * 1000, "lease_held": True}

    def _snap(self, volume: VolumeRef, snap_id: str) -> Path:
        return self.snaps / volume.id / snap_id

    def snapshot(self, volume: VolumeRef, *, snap_id: str, epoch: int) -> dict[str, Any]:
        self.calls.append(f"snapshot {volume.name}")
        time.sleep(self.slow_snapshot_s)
        p = self._snap(volume, snap_id)
        if not p.exists():
            tmp = p.with_name(p.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(volume.path, tmp, symlinks=True)
            tmp.rename(p)
        return {"snap_id": snap_id, "path": str(p)}

    def prepare_snapshot(self, volume: VolumeRef, snap_id: str) -> dict[str, Any]:
        self.calls.append(f"prepare_snapshot {volume.name}")
        return {"changed": False, "prepared": False}

    def snapshot_exists(self, volume: VolumeRef, snap_id: str) -> bool:
        return self._snap(volume, snap_id).is_dir()

    def delete_snapshot(self, volume: VolumeRef, snap_id: str) -> None:
        self.calls.append(f"delete_snapshot {volume.name}")
        shutil.rmtree(self._snap(volume, snap_id), ignore_errors=True)

    def source(self, volume: VolumeRef, snap_id: str) -> _Source:
        return _Source(self._snap(volume, snap_id), self.corrupt, snap_id)

    def target_state(self, path: str) -> dict[str, Any]:
        p = Path(path)
        return {"exists": p.exists(), "empty": not p.exists() or not any(p.iterdir())}

    def sink(self, path: str, *, overwrite: bool) -> _Sink:
        p = Path(path)
        if p.exists() and any(p.iterdir()) and not overwrite:
            raise AlreadyExists(f"{path} exists")
        p.mkdir(parents=True, exist_ok=True)
        return _Sink(p)

    def remove_target(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def app_status(self, app: AppRef) -> dict[str, Any]:
        return {"running": True}

    def upgrade(self, data: bytes, sha256: str, filename: str) -> dict[str, Any]:
        import hashlib

        assert hashlib.sha256(data).hexdigest() == sha256
        self.calls.append(f"upgrade {filename}")
        old, self._version = self._version, "0.1.0"
        return {"from": old, "to": self._version}

    def recover(self, app: AppRef, *, time: str | None, position: str | None, name: str | None) -> dict[str, Any]:
        from frieze.core.errors import NotSupported

        raise NotSupported(f"sqlite app {app.name} cannot recover to a point in time")
