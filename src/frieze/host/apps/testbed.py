"""Private engine instances and workloads, for the plug-in tests and the quiesce benchmark.

Everything here starts real servers (PostgreSQL 15, MariaDB 10.11, Redis 7) in a fresh temporary directory on
a free loopback port, and stops them and removes the directory when the context manager exits. It is safe to
run as root: PostgreSQL runs as the ``postgres`` OS user (``runuser``), MariaDB with ``--user=root`` and
``--no-defaults``, Redis with its own config file. Never uses the shared services on 5432/3306/6379.

Workloads run in background threads (or a background ``pgbench``), record every write's start and end time
(for the freeze window the application saw) and expose the invariant that a consistent snapshot keeps.

``tests/support/engines.py`` re-exports this module for the tests; ``bench_quiesce`` uses it directly.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import pwd
import secrets
import shutil
import signal
import socket
import sqlite3 as _stdlib_sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

PG_BIN = Path("/usr/lib/postgresql/15/bin")
MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sqlite_module() -> ModuleType:
    """The newer SQLite (pysqlite3 wheel) when installed, else the stdlib ``sqlite3``."""
    try:
        import pysqlite3.dbapi2 as mod  # type: ignore[import-not-found,import-untyped,unused-ignore]

        return mod  # type: ignore[no-any-return,unused-ignore]
    except ImportError:  # pragma: no cover - depends on the environment
        return _stdlib_sqlite3


def _wait_for(pred: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


#: Where :func:`owned_tempdir` makes engine directories (see :func:`temp_base`).
TEMP_BASE = ["/tmp"]


@contextlib.contextmanager
def temp_base(path: str | os.PathLike[str]) -> Iterator[None]:
    """Make the engines started inside the block live under ``path`` (a volume on a given file system, e.g.
    a btrfs subvolume or an XFS loop mount, so a provider can snapshot them). Every directory above it must
    be traversable by the engine's OS user."""
    TEMP_BASE.append(os.fspath(path))
    try:
        yield
    finally:
        TEMP_BASE.pop()


def owned_tempdir(prefix: str, owner: str | None = None) -> Path:
    """A fresh 0700 directory under /tmp (or :func:`temp_base`), owned by ``owner`` (an OS user) when given."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=TEMP_BASE[-1]))
    if owner and os.geteuid() == 0:
        pw = pwd.getpwnam(owner)
        os.chown(d, pw.pw_uid, pw.pw_gid)
    return d


def chown_tree(path: Path, owner: str) -> None:
    """Give a whole tree to an OS user (used after copying a PostgreSQL data dir as root)."""
    pw = pwd.getpwnam(owner)
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, pw.pw_uid, pw.pw_gid)
        for n in dirnames + filenames:
            os.chown(os.path.join(dirpath, n), pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def _kill_pidfile(pidfile: Path, timeout: float = 10) -> None:
    """SIGKILL the process named by a pid file (if it is alive) and wait until it is gone."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


def _rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------- PostgreSQL


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class PgServer:
    """A private PostgreSQL 15 cluster: data dir, unix socket dir and WAL archive under ``root``."""

    root: Path
    data_dir: Path
    sock_dir: Path
    archive_dir: Path
    port: int

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def options(self) -> dict[str, Any]:
        """Connection settings for an :class:`~frieze.host.apps.base.AppSpec` of kind ``postgres``."""
        return {
            "host": str(self.sock_dir),
            "port": self.port,
            "user": "postgres",
            "dbname": "postgres",
            "os_user": "postgres",
            "bin_dir": str(PG_BIN),
            "archive_dir": str(self.archive_dir),
        }

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.sock_dir} port={self.port} user=postgres dbname={dbname}"

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> Any:
        import psycopg

        return psycopg.connect(self.conninfo(dbname), autocommit=autocommit)

    def sql(self, query: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with self.connect(dbname) as c:
            cur = c.execute(query)
            return list(cur.fetchall()) if cur.description else []

    def running(self) -> bool:
        r = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", str(self.sock_dir), "-p", str(self.port), "-t", "1"],
            capture_output=True,
        )
        return r.returncode == 0

    def start(self, timeout: float = 60) -> None:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log),
                          "-w", "-t", str(int(timeout)), "start"]),
            check=True, capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop"]),
            capture_output=True,
        )

    def switch_wal_and_wait_archived(self, timeout: float = 30) -> str:
        """Force a WAL switch and wait until that segment is in the archive; returns its file name."""
        with self.connect() as c:
            c.execute("SELECT pg_create_restore_point('frieze-switch')")
            row = c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        name = str(row[0])
        _wait_for(lambda: (self.archive_dir / name).exists(), timeout, f"archiving of WAL {name}")
        return name


PG_CONF = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "replica",
    "archive_mode": "on",
    "max_connections": "40",
    "shared_buffers": "32MB",
    "track_commit_timestamp": "on",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "checkpoint_timeout": "300",
    "max_wal_size": "256MB",
    "logging_collector": "off",
}


def write_pg_conf(data_dir: Path, sock_dir: Path, port: int, archive_dir: Path, extra: dict[str, str]) -> None:
    conf = dict(PG_CONF)
    conf.update(
        {
            "port": str(port),
            "unix_socket_directories": f"'{sock_dir}'",
            "archive_command": f"'test ! -f {archive_dir}/%f && cp %p {archive_dir}/%f'",
        }
    )
    conf.update(extra)
    with open(data_dir / "postgresql.auto.conf", "a") as f:
        for k, v in conf.items():
            f.write(f"{k} = {v}\n")


def init_pg(extra_conf: dict[str, str] | None = None) -> PgServer:
    """initdb a new cluster (not started) in a fresh temp dir owned by ``postgres``."""
    root = owned_tempdir("frieze-pg-", "postgres")
    data, sock, arch = root / "data", root / "sock", root / "archive"
    for d in (sock, arch):
        d.mkdir(mode=0o700)
        if os.geteuid() == 0:
            shutil.chown(d, "postgres", "postgres")
    try:
        subprocess.run(
            _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                          "--locale=C", "--wal-segsize=1", "--no-sync"]),
            check=True, capture_output=True,
        )
        port = free_port()
        write_pg_conf(data, sock, port, arch, extra_conf or {})
    except BaseException:
        _rmtree(root)
        raise
    return PgServer(root=root, data_dir=data, sock_dir=sock, archive_dir=arch, port=port)


@contextlib.contextmanager
def pg_server(extra_conf: dict[str, str] | None = None, start: bool = True) -> Iterator[PgServer]:
    """A running private PostgreSQL; stopped (immediate) and removed afterwards."""
    srv = init_pg(extra_conf)
    try:
        if start:
            srv.start()
        yield srv
    finally:
        srv.stop("immediate")
        _rmtree(srv.root)


@contextlib.contextmanager
def pg_restored_copy(src_files: Path, port: int | None = None) -> Iterator[PgServer]:
    """A new PgServer root whose data dir is a copy of ``src_files`` (not started). The copy gets a new port
    and socket dir in its ``postgresql.auto.conf`` and no archiving. Removed afterwards."""
    root = owned_tempdir("frieze-pgr-", "postgres")
    data, sock, arch = root / "data", root / "sock", root / "archive"
    shutil.copytree(src_files, data, symlinks=True)
    for d in (sock, arch):
        d.mkdir(mode=0o700)
    (data / "postmaster.pid").unlink(missing_ok=True)
    port = port or free_port()
    write_pg_conf(data, sock, port, arch, {"archive_mode": "off"})
    if os.geteuid() == 0:
        chown_tree(root, "postgres")
    os.chmod(data, 0o700)
    srv = PgServer(root=root, data_dir=data, sock_dir=sock, archive_dir=arch, port=port)
    try:
        yield srv
    finally:
        srv.stop("immediate")
        _rmtree(root)


def pg_amcheck(srv: PgServer, dbname: str = "postgres") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PG_BIN / "pg_amcheck"), "-h", str(srv.sock_dir), "-p", str(srv.port), "-U", "postgres",
         "--heapallindexed", "--install-missing", "-d", dbname],
        capture_output=True, text=True, timeout=300,
    )


class PgBench:
    """pgbench in the background against ``dbname`` (initialised with ``scale``)."""

    def __init__(self, srv: PgServer, dbname: str = "postgres", scale: int = 1) -> None:
        self.srv, self.dbname, self.scale = srv, dbname, scale
        self.proc: subprocess.Popen[str] | None = None

    def _base(self, tool: str = "pgbench") -> list[str]:
        return [str(PG_BIN / tool), "-h", str(self.srv.sock_dir), "-p", str(self.srv.port), "-U", "postgres"]

    def init(self) -> None:
        subprocess.run([*self._base(), "-i", "-q", "-s", str(self.scale), self.dbname],
                       check=True, capture_output=True)

    def start(self, clients: int = 2, duration_s: int = 600, rate: int | None = None) -> None:
        argv = [*self._base(), "-n", "-c", str(clients), "-j", "1", "-T", str(duration_s), "-P", "1"]
        if rate:
            argv += ["-R", str(rate)]
        self.proc = subprocess.Popen([*argv, self.dbname], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)

    def stop(self) -> str:
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate()
        self.proc = None
        return out + err


def pgbench_sums(srv: PgServer, dbname: str = "postgres") -> tuple[int, int, int, int]:
    """(sum abalance, sum bbalance, sum tbalance, sum delta): all equal in a consistent copy."""
    row = srv.sql(
        "SELECT (SELECT coalesce(sum(abalance),0) FROM pgbench_accounts),"
        " (SELECT coalesce(sum(bbalance),0) FROM pgbench_branches),"
        " (SELECT coalesce(sum(tbalance),0) FROM pgbench_tellers),"
        " (SELECT coalesce(sum(delta),0) FROM pgbench_history)",
        dbname,
    )[0]
    return (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


# --------------------------------------------------------------------------------------------- workloads


@dataclass
class OpLog:
    """Start/end (monotonic) of every write a workload made; thread-safe append."""

    ops: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, t0: float, t1: float) -> None:
        with self.lock:
            self.ops.append((t0, t1))

    def count(self) -> int:
        with self.lock:
            return len(self.ops)

    def commits_between(self, t0: float, t1: float) -> int:
        """Writes that both started and finished inside [t0, t1]."""
        with self.lock:
            return sum(1 for a, b in self.ops if a >= t0 and b <= t1)

    def ended_between(self, t0: float, t1: float) -> int:
        """Writes that completed inside (t0, t1): zero while an app is really quiesced."""
        with self.lock:
            return sum(1 for _a, b in self.ops if t0 < b < t1)

    #: How late a client may see a write end that the server completed just before the freeze took hold
    #: (seen: 7 ms on a loaded 2-core machine, a MariaDB transfer whose COMMIT returned just before BACKUP
    #: STAGE BLOCK_COMMIT).
    CLIENT_LAG_S = 0.05

    def ended_during_hold(self, t0: float, t1: float) -> int:
        """Writes that ended in a freeze held from ``t0`` (quiesce returned) to ``t1``, less the client's
        observation lag at its start. Only for a hold well above the lag (the MariaDB test holds 0.2 s more
        than its copy takes), so a writer that wrongly goes through is still counted."""
        return self.ended_between(t0 + self.CLIENT_LAG_S, t1)

    def window(self, t0: float, t1: float) -> float:
        """The freeze window the app saw around [t0, t1]: the longest write latency of writes that overlap
        the interval, or the longest gap between consecutive write completions in it (seconds)."""
        with self.lock:
            overl = [b - a for a, b in self.ops if b >= t0 and a <= t1]
            ends = sorted(b for _a, b in self.ops if t0 - 5 <= b <= t1 + 5)
        gaps = [y - x for x, y in itertools.pairwise(ends) if y >= t0 and x <= t1]
        return max([*overl, *gaps, 0.0])


class _Worker:
    def __init__(self, threads: int) -> None:
        self.n = threads
        self.stop_ev = threading.Event()
        self.log = OpLog()
        self.threads: list[threading.Thread] = []

    def _run(self, i: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _guard(self, i: int) -> None:
        try:
            self._run(i)
        except Exception as e:
            self.log.errors.append(f"{type(e).__name__}: {e}")

    def start(self) -> None:
        for i in range(self.n):
            t = threading.Thread(target=self._guard, args=(i,), daemon=True, name=f"{type(self).__name__}-{i}")
            t.start()
            self.threads.append(t)

    def stop(self, timeout: float = 60) -> None:
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout)
        self.threads.clear()

    def __enter__(self) -> _Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PgCommitLog(_Worker):
    """Autocommit inserts into ``commit_log`` (id, at). The truth of what committed when is
    ``pg_xact_commit_timestamp(xmin)`` (needs ``track_commit_timestamp=on``, set by :func:`init_pg`)."""

    def __init__(self, srv: PgServer, threads: int = 1, pause_s: float = 0.002) -> None:
        super().__init__(threads)
        self.srv, self.pause_s = srv, pause_s
        with srv.connect() as c:
            c.execute("CREATE TABLE IF NOT EXISTS commit_log (id bigserial PRIMARY KEY, writer int, "
                      "at timestamptz NOT NULL DEFAULT clock_timestamp())")

    def _run(self, i: int) -> None:
        with self.srv.connect() as c:
            while not self.stop_ev.is_set():
                t0 = time.monotonic()
                c.execute("INSERT INTO commit_log (writer) VALUES (%s)", (i,))
                self.log.add(t0, time.monotonic())
                time.sleep(self.pause_s)


def pg_commit_times(srv: PgServer) -> list[tuple[int, Any]]:
    """(id, commit timestamp) of every committed commit_log row, by commit time."""
    rows = srv.sql("SELECT id, pg_xact_commit_timestamp(xmin) AS ct FROM commit_log ORDER BY ct, id")
    return [(int(r[0]), r[1]) for r in rows]


# --------------------------------------------------------------------------------------------- MariaDB


@dataclass
class MariaServer:
    """A private MariaDB: datadir (binlogs inside, basename ``binlog``), socket, port, and a user
    ``frieze`` with a random password (in :attr:`password`; the root account is socket-auth only)."""

    root: Path
    data_dir: Path
    socket: Path
    port: int
    password: str
    log_bin: bool = True
    bind_address: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "mariadb.err"

    def options(self) -> dict[str, Any]:
        return {"socket": str(self.socket), "port": self.port, "user": "frieze", "binlog_dir": str(self.data_dir)}

    def secrets(self) -> dict[str, str]:
        return {"password": self.password}

    def connect(self, autocommit: bool = True, db: str | None = "app", **kw: Any) -> Any:
        import pymysql

        return pymysql.connect(unix_socket=str(self.socket), user="frieze", password=self.password,
                               database=db, autocommit=autocommit, **kw)

    def sql(self, query: str, db: str | None = "app") -> list[tuple[Any, ...]]:
        c = self.connect(db=db)
        try:
            with c.cursor() as cur:
                cur.execute(query)
                return list(cur.fetchall())
        finally:
            c.close()

    def root_sql(self, script: str) -> str:
        """Run SQL as root over the socket (unix_socket auth); the script goes on stdin, never argv."""
        r = subprocess.run(["mariadb", "--no-defaults", "-uroot", f"--socket={self.socket}", "-N", "-B"],
                           input=script, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"mariadb root script failed: {r.stderr.strip()}")
        return r.stdout

    def argv(self) -> list[str]:
        a = [MARIADBD, "--no-defaults", "--user=root", f"--datadir={self.data_dir}", f"--socket={self.socket}",
             f"--port={self.port}", f"--bind-address={self.bind_address}", f"--pid-file={self.root / 'mariadb.pid'}",
             f"--log-error={self.log}", "--server-id=1", "--binlog-format=ROW", "--innodb-buffer-pool-size=32M",
             "--innodb-log-file-size=48M", "--max-connections=60", "--skip-name-resolve",
             "--performance-schema=OFF", "--default-time-zone=+00:00"]
        if self.log_bin:
            a.append("--log-bin=binlog")  # relative: binlog.index stays valid in a copy of the datadir
        return a

    def start(self, timeout: float = 90) -> None:
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            r = subprocess.run(["mariadb-admin", "--no-defaults", "-uroot", f"--socket={self.socket}", "ping"],
                               capture_output=True)
            return r.returncode == 0

        _wait_for(up, timeout, "mariadbd to accept connections", 0.2)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """Kill the server, also one started by someone else from :meth:`argv` (found by its pid file)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        _kill_pidfile(self.root / "mariadb.pid")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _new_maria(data_dir: Path | None, log_bin: bool) -> MariaServer:
    root = owned_tempdir("frieze-maria-")
    data = data_dir or root / "data"
    return MariaServer(root=root, data_dir=data, socket=root / "mysqld.sock", port=free_port(),
                       password=secrets.token_urlsafe(16), log_bin=log_bin)


@contextlib.contextmanager
def mariadb_server(log_bin: bool = True, bind_address: str = "127.0.0.1") -> Iterator[MariaServer]:
    """A running private MariaDB with database ``app`` and user ``frieze`` (all privileges)."""
    srv = _new_maria(None, log_bin)
    srv.bind_address = bind_address
    try:
        subprocess.run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={srv.data_dir}",
                        "--auth-root-authentication-method=socket", "--skip-test-db"],
                       check=True, capture_output=True, timeout=180)
        srv.start()
        srv.root_sql(
            "CREATE DATABASE app;\n"
            f"CREATE USER 'frieze'@'localhost' IDENTIFIED BY '{srv.password}';\n"
            "GRANT ALL PRIVILEGES ON *.* TO 'frieze'@'localhost' WITH GRANT OPTION;\n"
            "FLUSH PRIVILEGES;\n"
        )
        yield srv
    finally:
        srv.kill()
        _rmtree(srv.root)


@contextlib.contextmanager
def mariadb_restored_copy(src_files: Path, password: str) -> Iterator[MariaServer]:
    """A MariaDB started on a copy of ``src_files`` (crash recovery runs), same ``frieze`` password. The binlog
    stays on: InnoDB transactions that were prepared but not yet in the binlog at the snapshot (held at
    BACKUP STAGE BLOCK_COMMIT) are resolved against it, as after a crash; without it the server refuses to start."""
    srv = _new_maria(None, log_bin=True)
    srv.password = password
    try:
        shutil.copytree(src_files, srv.data_dir, symlinks=True)
        for p in srv.data_dir.glob("*.pid"):
            p.unlink()
        srv.start()
        yield srv
    finally:
        srv.kill()
        _rmtree(srv.root)


class MariaTransfers(_Worker):
    """Concurrent transfers between ``accounts`` rows (the total never changes) and a ``commit_log`` row per
    transfer. The commit-log insert and COMMIT run under one process-wide lock with ``SET timestamp`` fixed,
    so binlog order equals commit-log time order and every event of a transfer is at or before its logged
    second: binlog replay with ``--stop-datetime`` then lands exactly on a second of the log."""

    ACCOUNTS = 100
    START_BALANCE = 1000

    def __init__(self, srv: MariaServer, threads: int = 3, pause_s: float = 0.002) -> None:
        super().__init__(threads)
        self.srv, self.pause_s = srv, pause_s
        self.commit_lock = threading.Lock()
        c = srv.connect()
        try:
            with c.cursor() as cur:
                cur.execute("CREATE TABLE IF NOT EXISTS accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)"
                            " ENGINE=InnoDB")
                cur.execute("CREATE TABLE IF NOT EXISTS commit_log (id BIGINT AUTO_INCREMENT PRIMARY KEY,"
                            " src INT, dst INT, amount INT, ts DATETIME NOT NULL, ts_unix BIGINT NOT NULL)"
                            " ENGINE=InnoDB")
                cur.execute("SELECT COUNT(*) FROM accounts")
                if cur.fetchone()[0] == 0:
                    cur.executemany("INSERT INTO accounts VALUES (%s, %s)",
                                    [(i, self.START_BALANCE) for i in range(self.ACCOUNTS)])
        finally:
            c.close()

    @classmethod
    def total(cls) -> int:
        return cls.ACCOUNTS * cls.START_BALANCE

    def _run(self, i: int) -> None:
        import random

        import pymysql

        rnd = random.Random(i)
        c = self.srv.connect(autocommit=False)
        try:
            with c.cursor() as cur:
                while not self.stop_ev.is_set():
                    a, b = sorted(rnd.sample(range(self.ACCOUNTS), 2))
                    amt = rnd.randint(1, 50)
                    if rnd.random() < 0.5:
                        amt = -amt
                    t0 = time.monotonic()
                    try:
                        cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amt, a))
                        cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amt, b))
                        with self.commit_lock:
                            cur.execute("SET timestamp = %s", (int(time.time()),))
                            cur.execute("INSERT INTO commit_log (src, dst, amount, ts, ts_unix)"
                                        " VALUES (%s, %s, %s, NOW(), UNIX_TIMESTAMP())", (a, b, amt))
                            c.commit()
                            t1 = time.monotonic()  # when the commit returned, before the next round trip
                            cur.execute("SET timestamp = DEFAULT")
                    except pymysql.err.OperationalError as e:
                        if self.stop_ev.is_set():
                            return
                        c.rollback()
                        self.log.errors.append(f"retry: {e}")
                        continue
                    self.log.add(t0, t1)
                    time.sleep(self.pause_s)
        finally:
            c.close()


def maria_sum(srv: MariaServer) -> tuple[int, int]:
    """(sum of balances, number of accounts)."""
    row = srv.sql("SELECT COALESCE(SUM(balance),0), COUNT(*) FROM accounts")[0]
    return int(row[0]), int(row[1])


# --------------------------------------------------------------------------------------------- SQLite


class SQLiteCounter(_Worker):
    """Writer threads: each transaction bumps ``counter.n`` and inserts one ``log`` row, so n == count(log)."""

    def __init__(self, path: Path, threads: int = 2, pause_s: float = 0.001, wal: bool = True) -> None:
        super().__init__(threads)
        self.path, self.pause_s = path, pause_s
        self.sq = sqlite_module()
        c = self.sq.connect(str(path), isolation_level=None, timeout=60)
        try:
            if wal:
                c.execute("PRAGMA journal_mode=WAL")
            c.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
            c.execute("CREATE TABLE IF NOT EXISTS log (i INTEGER PRIMARY KEY AUTOINCREMENT, writer INTEGER, "
                      "pad TEXT)")
            c.execute("INSERT OR IGNORE INTO counter VALUES (1, 0)")
        finally:
            c.close()

    def _run(self, i: int) -> None:
        c = self.sq.connect(str(self.path), isolation_level=None, timeout=120)
        try:
            while not self.stop_ev.is_set():
                t0 = time.monotonic()
                c.execute("BEGIN IMMEDIATE")
                c.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
                c.execute("INSERT INTO log (writer, pad) VALUES (?, ?)", (i, "x" * 200))
                c.execute("COMMIT")
                self.log.add(t0, time.monotonic())
                time.sleep(self.pause_s)
        finally:
            c.close()


def sqlite_check(path: Path) -> tuple[str, int, int]:
    """(integrity_check result, counter n, count(log))."""
    sq = sqlite_module()
    c = sq.connect(str(path))
    try:
        ic = "; ".join(str(r[0]) for r in c.execute("PRAGMA integrity_check").fetchall())
        n = int(c.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0])
        cnt = int(c.execute("SELECT COUNT(*) FROM log").fetchone()[0])
        return ic, n, cnt
    finally:
        c.close()


# --------------------------------------------------------------------------------------------- Redis


@dataclass
class RedisServer:
    root: Path
    port: int
    password: str | None
    appendonly: bool
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket(self) -> Path:
        return self.root / "redis.sock"

    @property
    def conf(self) -> Path:
        return self.root / "redis.conf"

    def options(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port}

    def secrets(self) -> dict[str, str]:
        return {"password": self.password} if self.password else {}

    def client(self, **kw: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kw)

    def write_conf(self) -> None:
        lines = [
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.data_dir}", "dbfilename dump.rdb",
            'save ""', f"appendonly {'yes' if self.appendonly else 'no'}", "appendfsync everysec",
            "daemonize no", f"unixsocket {self.socket}", "unixsocketperm 700", f"logfile {self.root / 'redis.log'}",
            f"pidfile {self.root / 'redis.pid'}",
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, timeout: float = 30) -> None:
        self.data_dir.mkdir(exist_ok=True)
        self.write_conf()
        self.proc = subprocess.Popen([REDIS_SERVER, str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}")
            try:
                return bool(self.client(socket_timeout=1).ping())
            except Exception:
                return False

        _wait_for(up, timeout, "redis-server", 0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        _kill_pidfile(self.root / "redis.pid")


@contextlib.contextmanager
def redis_server(
    appendonly: bool = False, password: bool = True, data_from: Path | None = None
) -> Iterator[RedisServer]:
    """A running private Redis (optionally started on a copy of ``data_from``); killed and removed afterwards."""
    root = owned_tempdir("frieze-redis-")
    srv = RedisServer(root=root, port=free_port(), password=secrets.token_urlsafe(16) if password else None,
                      appendonly=appendonly)
    try:
        if data_from is not None:
            shutil.copytree(data_from, srv.data_dir, symlinks=True)
        srv.start()
        yield srv
    finally:
        srv.kill()
        _rmtree(root)


class RedisCounter(_Worker):
    """Writers: MULTI INCR ctr; RPUSH log i; EXEC — so GET ctr == LLEN log in any consistent copy."""

    def __init__(self, srv: RedisServer, threads: int = 2, pause_s: float = 0.001) -> None:
        super().__init__(threads)
        self.srv, self.pause_s = srv, pause_s

    def _run(self, i: int) -> None:
        r = self.srv.client(socket_timeout=120)
        n = 0
        while not self.stop_ev.is_set():
            t0 = time.monotonic()
            p = r.pipeline(transaction=True)
            p.incr("ctr")
            p.rpush("log", f"{i}:{n}")
            p.execute()
            n += 1
            self.log.add(t0, time.monotonic())
            time.sleep(self.pause_s)
        r.close()


def redis_counters(srv: RedisServer) -> tuple[int, int]:
    r = srv.client()
    try:
        return int(r.get("ctr") or 0), int(r.llen("log"))
    finally:
        r.close()


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def copy_tree_live(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> int:
    """Copy a directory tree that is being written to (a stand-in for a snapshot provider, only valid while the
    app is quiesced). Files that vanish mid-copy are skipped; names in ``skip`` (relative paths) are left out,
    a trailing ``/*`` keeps the directory but not its contents. Returns bytes copied."""
    total = 0
    skip_dirs = {s[:-2] for s in skip if s.endswith("/*")}
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        out = dst / rel if rel != "." else dst
        out.mkdir(parents=True, exist_ok=True)
        if rel in skip_dirs:
            dirnames[:] = []
            continue
        for n in filenames:
            r = os.path.normpath(os.path.join(rel, n))
            if r in skip:
                continue
            try:
                shutil.copy2(os.path.join(dirpath, n), out / n)
                total += (out / n).stat().st_size
            except FileNotFoundError:
                continue
    return total


# --------------------------------------------------------------------------------------------- file system


@contextlib.contextmanager
def loop_mount(size_mb: int = 32, fstype: str = "ext4") -> Iterator[Path]:
    """A fresh file system on a loop device, mounted in a temp dir (root only). On exit it is always thawed
    (``fsfreeze -u``), unmounted and detached, whatever happened."""
    d = Path(tempfile.mkdtemp(prefix="frieze-fs-"))
    img, mnt = d / "fs.img", d / "mnt"
    mnt.mkdir()
    loop = ""
    mounted = False
    try:
        with open(img, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        mkfs = (["mkfs.ext4", "-q", "-F"] if fstype == "ext4" else ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"]
                if fstype == "xfs" else [f"mkfs.{fstype}", "-q", "-f"])
        subprocess.run([*mkfs, str(img)], check=True, capture_output=True)
        r = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"no loop device: {r.stderr.strip()}")
        loop = r.stdout.strip()
        subprocess.run(["mount", loop, str(mnt)], check=True, capture_output=True)
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True)  # never leave it frozen
            subprocess.run(["umount", str(mnt)], capture_output=True)
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        _rmtree(d)


class FileWriter(_Worker):
    """Writer threads: each write is a small file written and fsynced in ``root``."""

    def __init__(self, root: Path, threads: int = 2, pause_s: float = 0.002) -> None:
        super().__init__(threads)
        self.root, self.pause_s = root, pause_s

    def _run(self, i: int) -> None:
        n = 0
        while not self.stop_ev.is_set():
            t0 = time.monotonic()
            with open(self.root / f"w{i}-{n % 200}", "wb") as f:
                f.write(b"x" * 4096)
                f.flush()
                os.fsync(f.fileno())
            n += 1
            self.log.add(t0, time.monotonic())
            time.sleep(self.pause_s)
