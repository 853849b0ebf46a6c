"""MariaDB (10.4+) / MySQL plug-in: BACKUP STAGE quiesce with server-side timeouts, binlog-replay recovery.

Spec: ``data_dir`` is the server's datadir. ``options``: ``socket`` or ``host``/``port``, ``user`` (default
``root``), ``method`` (``backup_stage`` default on MariaDB, ``ftwrl`` = ``FLUSH TABLES WITH READ LOCK``, used
automatically when ``BACKUP STAGE`` is not understood), ``start_argv`` (the server's argv, no secrets, for
``start``), ``binlog_dir`` and ``binlog_start`` (``"binlog.000003:1234"``, the position a snapshot recorded) for
``recover``. ``secrets``: ``password`` — for the driver directly, for tools through a 0600 defaults file
(never argv or environment).

**Quiesce** runs ``BACKUP STAGE START``, ``FLUSH``, ``BLOCK_DDL``, ``BLOCK_COMMIT`` on a dedicated session whose
``lock_wait_timeout``, ``max_statement_time``, ``wait_timeout`` and ``interactive_timeout`` are no longer than
the lease (rounded down to whole seconds, the server's unit; at least 1 s), so the server drops the session —
and its locks — when the lease runs out even if this process dies or is cut off. While held, no transaction commits (DML
waits), so a copy of the datadir is consistent after InnoDB crash recovery. ``QuiesceHandle.info`` records
``binlog_file``, ``binlog_pos`` and ``gtid_binlog_pos``. A copy taken there may hold InnoDB transactions
that were *prepared* but not yet written to the binlog: start a restored copy with the binlog enabled (same
relative ``log-bin`` basename, so the copied ``binlog.index`` resolves) and crash recovery rolls them back;
without a binlog MariaDB refuses to start ("Found 1 prepared transactions"). **Unquiesce** = ``BACKUP STAGE END`` (or
``UNLOCK TABLES``).

**Recover** (on the restored, running instance named by the spec): ``mariadb-binlog`` replays the binlogs from
``binlog_start`` up to a position (``RecoveryTarget.position = "binlog.000005:777"``, exclusive like
``--stop-position``), a time (every event stamped at or before that second, binlog timestamps having
one-second resolution), or the end of all binlogs; its output is piped into ``mariadb``. A marker file
``frieze-recovered.json`` in the datadir makes a second recover a no-op (replay is not idempotent).
Named restore points are not supported. **Verify** = ``mariadb-check --all-databases --check``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from frieze.core.errors import Conflict, DeadlineExceeded, FriezeError, IntegrityError, NotFound, UsageError
from frieze.host.apps._common import AppCommandFailed, PluginBase, remaining, run_tool, secret_file
from frieze.host.apps.base import ActionResult, AppCapabilities, AppSpec, RecoveryTarget

MARKER = "frieze-recovered.json"


class MariaDBError(FriezeError):
    """MariaDB refused or failed a request."""

    code = "app.mariadb"
    http_status = 502


class _Session:
    def __init__(self, conn: Any, method: str) -> None:
        self.conn = conn
        self.method = method
        self.lock = threading.Lock()


def _parse_pos(s: str, what: str) -> tuple[str, int]:
    m = re.fullmatch(r"([\w.-]+\.\d+):(\d+)", s.strip())
    if not m:
        raise UsageError(f"{what} {s!r} is not a binlog position like 'binlog.000003:1234'")
    return m.group(1), int(m.group(2))


class MariaDBPlugin(PluginBase):
    kind = "mariadb"
    capabilities = AppCapabilities(
        kind="mariadb", start_stop=True, quiesce=True, recover_to_time=True, recover_to_position=True,
        recover_to_named_point=False, recover_all_logs=True, verify=True,
        notes="BACKUP STAGE BLOCK_COMMIT (FTWRL fallback); recovery = binlog replay (1 s time resolution)",
    )

    # ------------------------------------------------------------------------------------------ helpers
    def _check_spec(self, spec: AppSpec) -> None:
        d = Path(spec.data_dir)
        if not d.is_dir() or not (d / "mysql").is_dir():
            raise NotFound(f"mariadb app {spec.name!r}: {spec.data_dir} is not a MariaDB data directory",
                           app=spec.name, data_dir=spec.data_dir)

    def _conn_kw(self, spec: AppSpec) -> dict[str, Any]:
        o = spec.options
        kw: dict[str, Any] = {"user": o.get("user", "root")}
        if o.get("socket"):
            kw["unix_socket"] = str(o["socket"])
        else:
            kw["host"], kw["port"] = str(o.get("host", "127.0.0.1")), int(o.get("port", 3306))
        return kw

    def _connect(self, spec: AppSpec, *, timeout_s: float = 10, read_timeout: float | None = None) -> Any:
        import pymysql

        kw = self._conn_kw(spec)
        try:
            return pymysql.connect(**kw, password=spec.secrets.get("password", ""), autocommit=True,
                                   connect_timeout=max(1, int(timeout_s)), read_timeout=read_timeout,
                                   write_timeout=read_timeout)
        except pymysql.err.MySQLError as e:
            where = kw.get("unix_socket") or f"{kw.get('host')}:{kw.get('port')}"
            raise MariaDBError(f"mariadb app {spec.name!r}: cannot connect to {where}: {e.args[-1]}",
                               app=spec.name) from e

    def _defaults_file(self, spec: AppSpec) -> str:
        kw = self._conn_kw(spec)
        lines = ["[client]", f"user={kw['user']}"]
        if "unix_socket" in kw:
            lines.append(f"socket={kw['unix_socket']}")
        else:
            lines += [f"host={kw['host']}", f"port={kw['port']}", "protocol=TCP"]
        if spec.secrets.get("password"):
            pw = spec.secrets["password"].replace("\\", "\\\\").replace('"', '\\"')
            if "\n" in pw:
                raise UsageError(f"mariadb app {spec.name!r}: a password with a newline cannot go in a defaults file")
            lines.append(f'password="{pw}"')
        return "\n".join(lines) + "\n"

    def _alive(self, spec: AppSpec) -> bool:
        try:
            c = self._connect(spec, timeout_s=2, read_timeout=5)
        except MariaDBError:
            return False
        c.close()
        return True

    def _engine_status(self, spec: AppSpec) -> dict[str, Any]:
        self._check_spec(spec)
        out: dict[str, Any] = {"running": False, "data_dir": spec.data_dir}
        with contextlib.suppress(MariaDBError):
            c = self._connect(spec, timeout_s=2, read_timeout=5)
            try:
                with c.cursor() as cur:
                    cur.execute("SELECT VERSION(), @@log_bin, @@gtid_binlog_pos")
                    v, lb, g = cur.fetchone()
                out.update(running=True, version=v, log_bin=bool(lb), gtid_binlog_pos=g)
            finally:
                c.close()
        return out

    # ------------------------------------------------------------------------------------------ start/stop
    def start(self, spec: AppSpec) -> ActionResult:
        self._check_spec(spec)
        if self._alive(spec):
            return ActionResult(False, f"mariadb app {spec.name!r} is already running")
        argv = spec.options.get("start_argv")
        if not argv:
            raise self.unsupported("start (no options.start_argv)")
        proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + float(spec.options.get("start_timeout_s", 120))
        while not self._alive(spec):
            if proc.poll() is not None:
                raise MariaDBError(f"mariadb app {spec.name!r}: the server exited {proc.returncode} on start")
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"mariadb app {spec.name!r}: not accepting connections after start")
            time.sleep(0.2)
        return ActionResult(True, f"mariadb app {spec.name!r} started", {"pid": proc.pid})

    def stop(self, spec: AppSpec) -> ActionResult:
        self._check_spec(spec)
        if not self._alive(spec):
            return ActionResult(False, f"mariadb app {spec.name!r} is not running")
        c = self._connect(spec, read_timeout=60)
        try:
            with c.cursor() as cur:
                cur.execute("SHUTDOWN")
        except Exception:
            pass  # the server may drop the connection while shutting down
        finally:
            with contextlib.suppress(Exception):
                c.close()
        deadline = time.monotonic() + float(spec.options.get("stop_timeout_s", 120))
        while self._alive(spec):
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"mariadb app {spec.name!r}: still running after SHUTDOWN")
            time.sleep(0.2)
        sock = spec.options.get("socket")
        while sock and os.path.exists(str(sock)) and time.monotonic() < deadline:
            time.sleep(0.1)  # the server removes its socket last
        return ActionResult(True, f"mariadb app {spec.name!r} stopped")

    # ------------------------------------------------------------------------------------------ quiesce
    def _engine_quiesce(self, spec: AppSpec, *, epoch: int, lease_s: float,
                        deadline: float) -> tuple[dict[str, Any], Any]:
        import pymysql

        conn = self._connect(spec, timeout_s=min(10.0, remaining(deadline)),
                             read_timeout=remaining(deadline) + 5)
        secs = max(1, math.floor(remaining(deadline)))
        method = str(spec.options.get("method", "backup_stage"))
        try:
            with conn.cursor() as cur:
                cur.execute(f"SET SESSION lock_wait_timeout = {secs}")
                cur.execute(f"SET SESSION wait_timeout = {secs}, SESSION interactive_timeout = {secs}")
                with contextlib.suppress(pymysql.err.MySQLError):  # MariaDB only
                    cur.execute(f"SET SESSION max_statement_time = {remaining(deadline):.3f}")
                if method == "backup_stage":
                    try:
                        cur.execute("BACKUP STAGE START")
                    except pymysql.err.ProgrammingError:
                        method = "ftwrl"  # MySQL: no BACKUP STAGE
                if method == "backup_stage":
                    for stage in ("FLUSH", "BLOCK_DDL", "BLOCK_COMMIT"):
                        cur.execute(f"BACKUP STAGE {stage}")
                else:
                    cur.execute("FLUSH TABLES WITH READ LOCK")
                cur.execute("SHOW MASTER STATUS")
                ms = cur.fetchone()
                gtid = None
                with contextlib.suppress(pymysql.err.MySQLError):
                    cur.execute("SELECT @@gtid_binlog_pos")
                    gtid = cur.fetchone()[0]
                cur.execute("SELECT CONNECTION_ID()")
                conn_id = int(cur.fetchone()[0])
                left = max(1, math.floor(remaining(deadline, floor=0.001)))
                cur.execute(f"SET SESSION wait_timeout = {left}, SESSION interactive_timeout = {left}")
        except pymysql.err.MySQLError as e:
            with contextlib.suppress(Exception):
                conn.close()
            if time.monotonic() >= deadline - 0.05 or (e.args and e.args[0] in (1205, 3024, 1969)):
                raise DeadlineExceeded(f"mariadb app {spec.name!r}: could not take the backup lock within the"
                                       f" {lease_s}s lease: {e.args[-1]}", app=spec.name) from e
            raise MariaDBError(f"mariadb app {spec.name!r}: quiesce failed: {e.args[-1]}", app=spec.name) from e
        info: dict[str, Any] = {"method": "BACKUP STAGE BLOCK_COMMIT" if method == "backup_stage" else "FTWRL",
                                "connection_id": conn_id, "gtid_binlog_pos": gtid,
                                "server_lease_s": left}
        if ms:
            info.update(binlog_file=ms[0], binlog_pos=int(ms[1]), binlog_start=f"{ms[0]}:{int(ms[1])}")
        return info, _Session(conn, method)

    def _engine_release(self, spec: AppSpec, resource: Any, *, expired: bool) -> dict[str, Any]:
        import pymysql

        sess: _Session = resource
        with sess.lock:
            try:
                if expired:
                    return {"released_by": "watchdog"}
                with sess.conn.cursor() as cur:
                    cur.execute("BACKUP STAGE END" if sess.method == "backup_stage" else "UNLOCK TABLES")
                return {}
            except pymysql.err.OperationalError as e:
                # The server already dropped the session (wait_timeout = the lease): the locks are gone.
                return {"lease_expired": True, "error": str(e.args[-1])}
            finally:
                with contextlib.suppress(Exception):
                    sess.conn.close()

    # ------------------------------------------------------------------------------------------ recover
    def recover(self, spec: AppSpec, target: RecoveryTarget) -> ActionResult:
        self._check_spec(spec)
        if target.name is not None:
            raise self.unsupported("recover to a named restore point")
        if target.time is not None and target.position is not None:
            raise UsageError(f"mariadb app {spec.name!r}: give one recovery target, not both time and position")
        o = spec.options
        if not o.get("binlog_dir") or not o.get("binlog_start"):
            raise UsageError(f"mariadb app {spec.name!r}: recover needs options.binlog_dir and"
                             " options.binlog_start (the position the snapshot recorded)")
        bdir = Path(str(o["binlog_dir"]))
        start_file, start_pos = _parse_pos(str(o["binlog_start"]), "binlog_start")
        stop_args: list[str] = []
        stop_file: str | None = None
        what = "the end of all binlogs"
        if target.position is not None:
            stop_file, stop_pos = _parse_pos(target.position, "recovery position")
            stop_args = [f"--stop-position={stop_pos}"]
            what = f"binlog position {target.position}"
        elif target.time is not None:
            try:
                dt = datetime.fromisoformat(target.time.replace("Z", "+00:00"))
            except ValueError as e:
                raise UsageError(f"mariadb app {spec.name!r}: bad recovery time {target.time!r}") from e
            if dt.tzinfo is None:
                raise UsageError(f"mariadb app {spec.name!r}: recovery time {target.time!r} needs a time zone")
            # Inclusive of the target's second: stop at the first event stamped in the next second.
            stop_epoch = math.floor(dt.timestamp()) + 1
            stop_args = ["--stop-datetime=" + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stop_epoch))]
            what = f"time {dt.isoformat()}"
        if not bdir.is_dir():
            raise NotFound(f"mariadb app {spec.name!r}: binlog dir {bdir} does not exist", binlog_dir=str(bdir))
        base = start_file.rsplit(".", 1)[0]
        files = sorted(p.name for p in bdir.iterdir() if re.fullmatch(re.escape(base) + r"\.\d+", p.name))
        if start_file not in files:
            raise NotFound(f"mariadb app {spec.name!r}: binlog {start_file} is not in {bdir}", binlog=start_file)
        files = files[files.index(start_file):]
        if stop_file is not None:
            if stop_file not in files:
                raise NotFound(f"mariadb app {spec.name!r}: binlog {stop_file} is not in {bdir} after {start_file}")
            files = files[: files.index(stop_file) + 1]
        marker = Path(spec.data_dir) / MARKER
        if marker.exists():
            prev = json.loads(marker.read_text())
            if prev.get("target") == what and prev.get("binlog_start") == o["binlog_start"]:
                return ActionResult(False, f"mariadb app {spec.name!r} was already recovered to {what}", prev)
            raise Conflict(f"mariadb app {spec.name!r} was already recovered to {prev.get('target')}; restore a"
                           " fresh copy to recover to another point", app=spec.name)
        if not self._alive(spec):
            raise Conflict(f"mariadb app {spec.name!r} is not running; start the restored copy first")
        t0 = time.monotonic()
        timeout = float(o.get("recover_timeout_s", 1800))
        dump = ["mariadb-binlog", "--no-defaults", f"--start-position={start_pos}", *stop_args,
                *[str(bdir / f) for f in files]]
        with secret_file(self._defaults_file(spec), prefix="frieze-my-") as df:
            client = ["mariadb", f"--defaults-file={df}", "--binary-mode", "--batch"]
            p1 = subprocess.Popen(dump, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                p2 = subprocess.run(client, stdin=p1.stdout, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired as e:
                p1.kill()
                raise DeadlineExceeded(f"mariadb app {spec.name!r}: binlog replay took over {timeout:.0f}s") from e
            finally:
                if p1.stdout:
                    p1.stdout.close()
            err1 = p1.stderr.read().decode(errors="replace") if p1.stderr else ""
            rc1 = p1.wait()
        if rc1 != 0:
            raise AppCommandFailed(f"mariadb app {spec.name!r}: mariadb-binlog exited {rc1}: {err1.strip()[-500:]}")
        if p2.returncode != 0:
            raise AppCommandFailed(f"mariadb app {spec.name!r}: replaying binlogs failed: {p2.stderr.strip()[-500:]}")
        info = {"target": what, "binlog_start": o["binlog_start"], "files": files,
                "seconds": round(time.monotonic() - t0, 2)}
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, marker)
        return ActionResult(True, f"mariadb app {spec.name!r} recovered to {what}", info)

    # ------------------------------------------------------------------------------------------ verify
    def verify(self, spec: AppSpec) -> ActionResult:
        self._check_spec(spec)
        with secret_file(self._defaults_file(spec), prefix="frieze-my-") as df:
            r = run_tool(["mariadb-check", f"--defaults-file={df}", "--all-databases", "--check"],
                         what=f"mariadb app {spec.name!r}: mariadb-check", check=False,
                         timeout=float(spec.options.get("verify_timeout_s", 1800)))
        bad = [ln for ln in r.stdout.splitlines() if re.search(r"\b(error|corrupt|warning)\b", ln, re.I)]
        if r.returncode != 0 or bad:
            raise IntegrityError(f"mariadb app {spec.name!r}: mariadb-check found problems (exit {r.returncode}):"
                                 f" {'; '.join(bad)[:1500] or r.stderr.strip()[-800:]}", app=spec.name)
        tables = sum(1 for ln in r.stdout.splitlines() if ln.rstrip().endswith("OK"))
        return ActionResult(False, f"mariadb app {spec.name!r}: mariadb-check found no problems in {tables} tables",
                            {"ok": True, "tables_ok": tables, "tool": "mariadb-check --check"})
