"""SQLite plug-in: a held write lock after a WAL checkpoint; ``PRAGMA integrity_check``.

Spec: ``data_dir`` is the database file, or a directory with ``options["database"]`` (a file name in it).
No secrets. Uses the newer SQLite from the ``pysqlite3`` wheel when installed (older SQLite has the WAL-reset
bug, 3.7.0–3.51.2), else the stdlib module.

**Quiesce**: ``PRAGMA wal_checkpoint(TRUNCATE)`` (best effort: it cannot finish while readers hold old
snapshots), then ``BEGIN IMMEDIATE`` on a dedicated connection, holding the database's write lock: writers wait
(their busy timeout) and no transaction can commit. A ``PASSIVE`` checkpoint from a second connection then
copies what it can of the WAL into the main file. The consistent state is the main file plus its ``-wal`` file
(both must be in the snapshot; ``info["files"]`` lists them). The lease is bounded by a watchdog thread that
rolls back and closes the connection; if this process dies, the OS drops its locks at once.
**Unquiesce** = ``ROLLBACK`` (nothing was written) and close. With ``options.method = "backup_api"`` the quiesce
instead writes a consistent copy with SQLite's online backup API to ``options.backup_to`` (temp file, fsync,
rename) and holds nothing; ``info["files"]`` names the copy. No start/stop/recover (a file, not a server).
**Verify** = ``PRAGMA integrity_check`` on a read-only connection.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from frieze.core.errors import DeadlineExceeded, FriezeError, IntegrityError, NotFound, UsageError
from frieze.host.apps._common import PluginBase, remaining
from frieze.host.apps.base import ActionResult, AppCapabilities, AppSpec


def sqlite_module() -> ModuleType:
    try:
        import pysqlite3.dbapi2 as mod  # type: ignore[import-not-found,import-untyped,unused-ignore]

        return mod  # type: ignore[no-any-return,unused-ignore]
    except ImportError:  # pragma: no cover
        import sqlite3

        return sqlite3


class SQLiteError(FriezeError):
    """SQLite refused or failed a request."""

    code = "app.sqlite"


class _Lock:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.lock = threading.Lock()


class SQLitePlugin(PluginBase):
    kind = "sqlite"
    capabilities = AppCapabilities(
        kind="sqlite", start_stop=False, quiesce=True, verify=True,
        notes="quiesce = held BEGIN IMMEDIATE after wal_checkpoint(TRUNCATE); snapshot the db and its -wal file",
    )

    def db_path(self, spec: AppSpec) -> Path:
        p = Path(spec.data_dir)
        if "database" in spec.options:
            p = p / str(spec.options["database"])
        return p

    def _check_spec(self, spec: AppSpec) -> None:
        p = self.db_path(spec)
        if not p.is_file():
            raise NotFound(f"sqlite app {spec.name!r}: database file {p} does not exist", app=spec.name, path=str(p))
        with open(p, "rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise NotFound(f"sqlite app {spec.name!r}: {p} is not an SQLite database", app=spec.name, path=str(p))

    def _engine_status(self, spec: AppSpec) -> dict[str, Any]:
        self._check_spec(spec)
        p = self.db_path(spec)
        wal = Path(f"{p}-wal")
        return {"running": True, "path": str(p), "bytes": p.stat().st_size,
                "wal_bytes": wal.stat().st_size if wal.exists() else 0,
                "sqlite_version": sqlite_module().sqlite_version}

    def _engine_quiesce(self, spec: AppSpec, *, epoch: int, lease_s: float,
                        deadline: float) -> tuple[dict[str, Any], Any]:
        if spec.options.get("method") == "backup_api":
            return self._backup_api(spec, deadline), None
        sq = sqlite_module()
        p = self.db_path(spec)
        conn = sq.connect(str(p), isolation_level=None, check_same_thread=False, timeout=remaining(deadline))
        try:
            # Best effort: a full checkpoint into the main file, the WAL truncated (bounded by the lease).
            # Bounded: while it waits, it holds writers off; if it cannot finish the -wal file goes along.
            ck_ms = int(min(float(spec.options.get("checkpoint_wait_s", 0.2)), remaining(deadline) / 2) * 1000)
            conn.execute(f"PRAGMA busy_timeout = {max(ck_ms, 1)}")
            ck = None
            with contextlib.suppress(sq.OperationalError):
                ck = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            conn.execute(f"PRAGMA busy_timeout = {int(remaining(deadline) * 1000)}")
            conn.execute("BEGIN IMMEDIATE")
        except sq.OperationalError as e:
            conn.close()
            if "locked" in str(e) or "busy" in str(e):
                raise DeadlineExceeded(f"sqlite app {spec.name!r}: could not take the write lock of {p} within"
                                       f" the {lease_s}s lease", app=spec.name) from e
            raise SQLiteError(f"sqlite app {spec.name!r}: quiesce of {p} failed: {e}", app=spec.name) from e
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        passive = None
        if mode == "wal":
            side = sq.connect(str(p), isolation_level=None, timeout=0.1)
            try:
                passive = side.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sq.OperationalError:
                passive = None
            finally:
                side.close()
        wal = Path(f"{p}-wal")
        files = [str(p)] + ([str(wal)] if wal.exists() and wal.stat().st_size > 0 else [])
        info: dict[str, Any] = {"method": "BEGIN IMMEDIATE", "journal_mode": mode, "files": files,
                                "checkpoint_truncate": list(ck) if ck else None,
                                "checkpoint_passive": list(passive) if passive else None,
                                "wal_bytes": wal.stat().st_size if wal.exists() else 0,
                                "sqlite_version": sq.sqlite_version}
        return info, _Lock(conn)

    def _backup_api(self, spec: AppSpec, deadline: float) -> dict[str, Any]:
        """Online backup API into ``options.backup_to`` (a new file, e.g. on the volume being snapshotted):
        a consistent copy made without holding writers off for the whole snapshot."""
        sq = sqlite_module()
        p = self.db_path(spec)
        target = Path(str(spec.options.get("backup_to", "")))
        if not spec.options.get("backup_to") or not target.parent.is_dir():
            raise UsageError(f"sqlite app {spec.name!r}: method backup_api needs options.backup_to in an existing"
                             " directory", app=spec.name)
        tmp = target.with_name(target.name + ".frieze-tmp")
        src = sq.connect(f"file:{p}?mode=ro", uri=True, timeout=remaining(deadline))
        dst = sq.connect(str(tmp))
        try:
            src.backup(dst)  # all pages in one step: a single consistent read snapshot
        except sq.Error as e:
            tmp.unlink(missing_ok=True)
            raise SQLiteError(f"sqlite app {spec.name!r}: online backup of {p} failed: {e}", app=spec.name) from e
        finally:
            dst.close()
            src.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return {"method": "backup_api", "files": [str(target)], "bytes": target.stat().st_size,
                "sqlite_version": sq.sqlite_version}

    def _engine_release(self, spec: AppSpec, resource: Any, *, expired: bool) -> dict[str, Any]:
        if resource is None:  # backup_api: nothing held
            return {}
        lk: _Lock = resource
        with lk.lock:
            with contextlib.suppress(Exception):
                lk.conn.execute("ROLLBACK")
            with contextlib.suppress(Exception):
                lk.conn.close()
        return {"released_by": "watchdog"} if expired else {}

    def verify(self, spec: AppSpec) -> ActionResult:
        self._check_spec(spec)
        sq = sqlite_module()
        p = self.db_path(spec)
        t0 = time.monotonic()
        conn = sq.connect(f"file:{p}?mode=ro", uri=True, timeout=30)
        try:
            rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
        except sq.DatabaseError as e:
            raise IntegrityError(f"sqlite app {spec.name!r}: {p} cannot be checked: {e}", app=spec.name) from e
        finally:
            conn.close()
        if rows != ["ok"]:
            raise IntegrityError(f"sqlite app {spec.name!r}: integrity_check of {p}: {'; '.join(rows)[:1500]}",
                                 app=spec.name)
        return ActionResult(False, f"sqlite app {spec.name!r}: PRAGMA integrity_check ok",
                            {"ok": True, "seconds": round(time.monotonic() - t0, 3), "tool": "PRAGMA integrity_check"})
