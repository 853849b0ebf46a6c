"""PostgreSQL plug-in (15+): non-exclusive base backup on a held session, WAL-archive recovery, pg_amcheck.

Spec: ``data_dir`` is the cluster's data directory. ``options``: ``host`` (socket dir or address), ``port``,
``user`` (default ``postgres``), ``dbname`` (default ``postgres``), ``os_user`` (who runs ``pg_ctl``; default the
data dir's owner), ``bin_dir`` (default ``/usr/lib/postgresql/15/bin``), ``archive_dir`` (the WAL archive that
``recover`` restores from) or ``restore_command``, ``wait_for_archive`` (default True), ``recover_timeout_s``.
``secrets``: ``password`` (sent by the driver; for tools through a 0600 passfile, never argv/env values).

**Quiesce** = ``pg_backup_start(label, fast => true)`` on a dedicated autocommit session whose
``statement_timeout`` and ``idle_session_timeout`` are set to the rest of the lease, so the server itself ends
the session — and with it the backup — when the lease runs out or this process dies. It does not block
writers (PostgreSQL needs no write freeze): a copy of the data directory taken between quiesce and unquiesce
plus the returned ``backup_label``/``tablespace_map`` (written into the copy's root by the caller) and the
archived WAL up to ``stop_lsn`` restore to a consistent cluster.

**Unquiesce** = ``pg_backup_stop(wait_for_archive => ...)``; ``ActionResult.info`` holds ``backup_label``,
``tablespace_map``, ``start_lsn``, ``stop_lsn``.

**WAL archiving** (needed for recovery past the copy): ``wal_level = replica``, ``archive_mode = on`` and
``archive_command = 'test ! -f /archive/%f && cp %p /archive/%f'`` (or any tool that copies durably); point
``options.archive_dir`` at the same directory for ``recover``.

**Recover** (data dir stopped, e.g. a restored copy with its backup_label) writes ``restore_command``,
``recovery_target_{time,lsn,name}`` (none = to the end of all archived WAL), ``recovery_target_inclusive = on``,
``recovery_target_action = promote`` into ``postgresql.auto.conf``, creates ``recovery.signal``, starts the
server and waits until it has left recovery. A target beyond the archived WAL fails with
:class:`RecoveryTargetNotReached` (PostgreSQL refuses to promote there).

**Verify** = ``pg_amcheck --heapallindexed --install-missing --all`` (installs the amcheck extension).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from frieze.core.errors import Conflict, DeadlineExceeded, FriezeError, IntegrityError, NotFound, UsageError
from frieze.host.apps._common import PluginBase, remaining, run_tool, secret_file
from frieze.host.apps.base import ActionResult, AppCapabilities, AppSpec, RecoveryTarget

DEFAULT_BIN = "/usr/lib/postgresql/15/bin"


class RecoveryTargetNotReached(NotFound):
    """The recovery target lies beyond the available logs."""

    code = "not_found.recovery_target"


class PostgresError(FriezeError):
    """PostgreSQL refused or failed a request."""

    code = "app.postgres"
    http_status = 502


def _lsn_ok(s: str) -> bool:
    return re.fullmatch(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", s) is not None


class _Session:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.lock = threading.Lock()


class PostgresPlugin(PluginBase):
    kind = "postgres"
    capabilities = AppCapabilities(
        kind="postgres", start_stop=True, quiesce=True, recover_to_time=True, recover_to_position=True,
        recover_to_named_point=True, recover_all_logs=True, verify=True,
        notes="quiesce = non-exclusive pg_backup_start (writers are not blocked); unquiesce returns backup_label",
    )

    # ------------------------------------------------------------------------------------------ helpers
    def _check_spec(self, spec: AppSpec) -> None:
        if not (Path(spec.data_dir) / "PG_VERSION").is_file():
            raise NotFound(f"postgres app {spec.name!r}: {spec.data_dir} is not a PostgreSQL data directory",
                           app=spec.name, data_dir=spec.data_dir)

    def _bin(self, spec: AppSpec, tool: str) -> str:
        return str(Path(spec.options.get("bin_dir", DEFAULT_BIN)) / tool)

    def _os_user(self, spec: AppSpec) -> str:
        if "os_user" in spec.options:
            return str(spec.options["os_user"])
        return pwd.getpwuid(os.stat(spec.data_dir).st_uid).pw_name

    def _connect(self, spec: AppSpec, *, timeout_s: float = 10, dbname: str | None = None) -> Any:
        import psycopg

        o = spec.options
        kw: dict[str, Any] = {
            "host": o.get("host", "/var/run/postgresql"), "port": int(o.get("port", 5432)),
            "user": o.get("user", "postgres"), "dbname": dbname or o.get("dbname", "postgres"),
            "connect_timeout": max(1, int(timeout_s)), "autocommit": True, "application_name": "frieze-agent",
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
        }
        if "password" in spec.secrets:
            kw["password"] = spec.secrets["password"]
        try:
            return psycopg.connect(**kw)
        except psycopg.OperationalError as e:
            raise PostgresError(f"postgres app {spec.name!r}: cannot connect to {kw['host']}:{kw['port']}:"
                                f" {str(e).strip().splitlines()[0] if str(e).strip() else e}", app=spec.name) from e

    def _ctl(self, spec: AppSpec, *args: str, timeout: float = 120, check: bool = True) -> Any:
        log = spec.options.get("log_file") or str(Path(spec.data_dir).parent / f"{Path(spec.data_dir).name}.log")
        argv = [self._bin(spec, "pg_ctl"), "-D", spec.data_dir, *args]
        if args and args[0] == "start":
            argv += ["-l", str(log)]
        return run_tool(argv, what=f"postgres app {spec.name!r}: pg_ctl {args[0]}", timeout=timeout,
                        check=check, user=self._os_user(spec))

    def _running(self, spec: AppSpec) -> bool:
        r = self._ctl(spec, "status", timeout=30, check=False)
        return bool(r.returncode == 0)

    def _engine_status(self, spec: AppSpec) -> dict[str, Any]:
        self._check_spec(spec)
        running = self._running(spec)
        out: dict[str, Any] = {"running": running, "data_dir": spec.data_dir}
        if running:
            with contextlib.suppress(FriezeError), self._connect(spec, timeout_s=3) as c:
                row = c.execute("SELECT pg_is_in_recovery(), current_setting('server_version'),"
                                " current_setting('archive_mode'), current_setting('wal_level')").fetchone()
                out.update(in_recovery=row[0], version=row[1], archive_mode=row[2], wal_level=row[3])
        return out

    # ------------------------------------------------------------------------------------------ start/stop
    def start(self, spec: AppSpec) -> ActionResult:
        self._check_spec(spec)
        if self._running(spec):
            return ActionResult(False, f"postgres app {spec.name!r} is already running")
        self._ctl(spec, "start", "-w", "-t", str(int(spec.options.get("start_timeout_s", 120))))
        return ActionResult(True, f"postgres app {spec.name!r} started")

    def stop(self, spec: AppSpec) -> ActionResult:
        self._check_spec(spec)
        if not self._running(spec):
            return ActionResult(False, f"postgres app {spec.name!r} is not running")
        self._ctl(spec, "stop", "-m", str(spec.options.get("stop_mode", "fast")), "-w", "-t", "120")
        return ActionResult(True, f"postgres app {spec.name!r} stopped")

    # ------------------------------------------------------------------------------------------ quiesce
    def _engine_quiesce(self, spec: AppSpec, *, epoch: int, lease_s: float,
                        deadline: float) -> tuple[dict[str, Any], Any]:
        import psycopg

        conn = self._connect(spec, timeout_s=min(10.0, remaining(deadline)))
        try:
            ms = int(remaining(deadline) * 1000)
            conn.execute(f"SET statement_timeout = {max(ms, 1)}")
            conn.execute(f"SET lock_timeout = {max(ms, 1)}")
            conn.execute(f"SET idle_in_transaction_session_timeout = {max(ms, 1)}")
            label = f"frieze {spec.name} epoch {epoch}"
            row = conn.execute("SELECT pg_backup_start(%s, fast => true), pg_current_wal_lsn()",
                               (label,)).fetchone()
            # The session is idle from now until pg_backup_stop: the server ends it (and the backup) at the lease.
            left = int(remaining(deadline, floor=0.001) * 1000)
            conn.execute(f"SET idle_session_timeout = {max(left, 1)}")
            conn.execute(f"SET statement_timeout = {int(spec.options.get('stop_timeout_s', 60)) * 1000}")
        except psycopg.errors.QueryCanceled as e:
            conn.close()
            raise DeadlineExceeded(f"postgres app {spec.name!r}: pg_backup_start did not finish within the"
                                   f" {lease_s}s lease", app=spec.name) from e
        except psycopg.Error as e:
            conn.close()
            raise PostgresError(f"postgres app {spec.name!r}: pg_backup_start failed: {e}", app=spec.name) from e
        info = {"label": label, "start_lsn": str(row[0]), "backend_pid": conn.info.backend_pid,
                "method": "pg_backup_start"}
        return info, _Session(conn)

    #: a dead agent's backup is void: closing its session ends it at once (no wait for the archiver)
    abort_by_dropping = True

    def _engine_release(self, spec: AppSpec, resource: Any, *, expired: bool) -> dict[str, Any]:
        import psycopg

        sess: _Session = resource
        with sess.lock:
            if expired:
                sess.conn.close()
                return {"backup_aborted": True}
            wait = bool(spec.options.get("wait_for_archive", True))
            try:
                row = sess.conn.execute(
                    "SELECT lsn, labelfile, spcmapfile FROM pg_backup_stop(wait_for_archive => %s)", (wait,)
                ).fetchone()
            except psycopg.OperationalError as e:
                # The server ended the session: its idle_session_timeout (the lease) fired; the backup is void.
                return {"lease_expired": True, "backup_aborted": True, "error": str(e).strip().splitlines()[0]}
            except psycopg.Error as e:
                raise PostgresError(f"postgres app {spec.name!r}: pg_backup_stop failed: {e}",
                                    app=spec.name) from e
            finally:
                with contextlib.suppress(Exception):
                    sess.conn.close()
        return {"stop_lsn": str(row[0]), "backup_label": row[1], "tablespace_map": row[2] or "",
                "waited_for_archive": wait}

    # ------------------------------------------------------------------------------------------ recover
    def recover(self, spec: AppSpec, target: RecoveryTarget) -> ActionResult:
        self._check_spec(spec)
        set_fields = [f for f in ("time", "position", "name") if getattr(target, f) is not None]
        if len(set_fields) > 1:
            raise UsageError(f"postgres app {spec.name!r}: give one recovery target, got {set_fields}")
        data = Path(spec.data_dir)
        if self._running(spec):
            if not (data / "recovery.signal").exists() and not (data / "backup_label").exists():
                return ActionResult(False, f"postgres app {spec.name!r} is running and not in recovery; stop it"
                                    " and restore a copy to recover it", {"already_recovered": True})
            raise Conflict(f"postgres app {spec.name!r} is running; recover needs it stopped", app=spec.name)
        o = spec.options
        if "restore_command" in o:
            restore_cmd = str(o["restore_command"])
        elif "archive_dir" in o:
            arch = str(o["archive_dir"])
            if not Path(arch).is_dir():
                raise NotFound(f"postgres app {spec.name!r}: WAL archive {arch} does not exist", archive_dir=arch)
            restore_cmd = f'cp "{arch}/%f" "%p"'
        else:
            raise UsageError(f"postgres app {spec.name!r}: recover needs options.archive_dir or restore_command")
        settings: dict[str, str] = {"restore_command": restore_cmd, "recovery_target_action": "promote",
                                    "recovery_target_timeline": "latest", "recovery_target_inclusive": "on"}
        what = "the end of all archived WAL"
        if target.time is not None:
            try:
                dt = datetime.fromisoformat(target.time.replace("Z", "+00:00"))
            except ValueError as e:
                raise UsageError(f"postgres app {spec.name!r}: bad recovery time {target.time!r}") from e
            if dt.tzinfo is None:
                raise UsageError(f"postgres app {spec.name!r}: recovery time {target.time!r} needs a time zone")
            settings["recovery_target_time"] = dt.isoformat(sep=" ")
            what = f"time {dt.isoformat()}"
        elif target.position is not None:
            if not _lsn_ok(target.position):
                raise UsageError(f"postgres app {spec.name!r}: {target.position!r} is not an LSN like 0/3000028")
            settings["recovery_target_lsn"] = target.position
            what = f"LSN {target.position}"
        elif target.name is not None:
            settings["recovery_target_name"] = target.name
            what = f"restore point {target.name!r}"
        self._write_recovery_conf(data, settings)
        (data / "recovery.signal").touch()
        self._chown_like(data, data / "recovery.signal")
        t0 = time.monotonic()
        timeout = float(o.get("recover_timeout_s", 600))
        r = self._ctl(spec, "start", "-w", "-t", str(int(timeout)), check=False)
        deadline = t0 + timeout
        while True:
            if not self._running(spec):
                log_tail = self._log_tail(spec)
                if "recovery ended before configured recovery target was reached" in log_tail:
                    raise RecoveryTargetNotReached(f"postgres app {spec.name!r}: the archived WAL ends before {what}",
                                                   app=spec.name)
                raise PostgresError(f"postgres app {spec.name!r}: server stopped during recovery to {what}:"
                                    f" {(r.stderr or '').strip()[-300:]} {log_tail[-600:]}", app=spec.name)
            if r.returncode == 0:
                with contextlib.suppress(FriezeError), self._connect(spec, timeout_s=3) as c:
                    in_rec = c.execute("SELECT pg_is_in_recovery()").fetchone()
                    row = None if in_rec is None or in_rec[0] else c.execute(
                        "SELECT false, pg_current_wal_lsn()::text").fetchone()
                    if row is not None:
                        tl = c.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
                        return ActionResult(True, f"postgres app {spec.name!r} recovered to {what} and promoted",
                                            {"target": what, "lsn": row[1], "timeline": tl[0] if tl else None,
                                             "seconds": round(time.monotonic() - t0, 2)})
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"postgres app {spec.name!r}: recovery to {what} did not end within"
                                       f" {timeout:.0f}s", app=spec.name)
            time.sleep(0.2)

    def _log_tail(self, spec: AppSpec) -> str:
        log = spec.options.get("log_file") or str(Path(spec.data_dir).parent / f"{Path(spec.data_dir).name}.log")
        try:
            return Path(log).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _chown_like(self, data: Path, p: Path) -> None:
        if os.geteuid() == 0:
            st = os.stat(data)
            os.chown(p, st.st_uid, st.st_gid)

    def _write_recovery_conf(self, data: Path, settings: dict[str, str]) -> None:
        auto = data / "postgresql.auto.conf"
        keep = []
        if auto.exists():
            for line in auto.read_text().splitlines():
                key = line.split("=", 1)[0].strip()
                if key.startswith("recovery_target") or key == "restore_command":
                    continue
                keep.append(line)
        for k, v in settings.items():
            keep.append(f"{k} = '{v.replace(chr(39), chr(39) * 2)}'")
        tmp = auto.with_suffix(".frieze-tmp")
        tmp.write_text("\n".join(keep) + "\n")
        self._chown_like(data, tmp)
        os.replace(tmp, auto)

    # ------------------------------------------------------------------------------------------ verify
    def verify(self, spec: AppSpec) -> ActionResult:
        self._check_spec(spec)
        o = spec.options
        argv = [self._bin(spec, "pg_amcheck"), "-h", str(o.get("host", "/var/run/postgresql")),
                "-p", str(o.get("port", 5432)), "-U", str(o.get("user", "postgres")), "--no-password",
                "--heapallindexed", "--install-missing", "--all"]
        pw = spec.secrets.get("password")
        passfile = f"*:*:*:*:{pw.replace(chr(92), chr(92) * 2).replace(':', chr(92) + ':')}\n" if pw else ""
        with secret_file(passfile, prefix="frieze-pgpass-") as pf:
            env_pf = {"PGPASSFILE": pf}
            r = _run_env(argv, env_pf, timeout=float(o.get("verify_timeout_s", 1800)))
        if r.returncode != 0 or r.stdout.strip():
            raise IntegrityError(f"postgres app {spec.name!r}: pg_amcheck found problems (exit {r.returncode}):"
                                 f" {(r.stdout + r.stderr).strip()[-1500:]}", app=spec.name)
        return ActionResult(False, f"postgres app {spec.name!r}: pg_amcheck --heapallindexed found no corruption",
                            {"ok": True, "tool": "pg_amcheck --heapallindexed"})


def _run_env(argv: list[str], extra_env: dict[str, str], timeout: float) -> Any:
    """Run a libpq tool with a passfile path in its environment (the path is not a secret)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPASS")}
    env.update(extra_env)
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise DeadlineExceeded(f"{os.path.basename(argv[0])} did not finish within {timeout:.0f}s") from e
