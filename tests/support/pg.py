"""A private PostgreSQL 15 for tests: ``initdb`` into a temp dir, a free loopback port, the unix socket in
the data dir's parent, stopped (``pg_ctl stop -m immediate``) and removed by ``stop()``.

Usage::

    pg = start_postgres(tmp_path, extra_conf=["wal_level = replica", "archive_mode = on",
                                              "archive_command = 'cp %p /x/%f'"])
    try:
        engine = sqlalchemy.create_engine(pg.sqlalchemy_url)     # or psycopg.connect(pg.dsn)
    finally:
        pg.stop()

or the context manager :func:`postgres`. As root, the server runs as the ``postgres`` OS user (``runuser``);
the temp dir is handed to that user. Authentication is ``trust`` on loopback and the socket only; the
superuser is ``postgres``, the database ``postgres`` (``create_database`` makes more).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def pg_available() -> bool:
    """True if the PostgreSQL 15 binaries are installed."""
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()


def _as_pg(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["/usr/sbin/runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_as_pg(cmd), capture_output=True, text=True, timeout=timeout, check=False,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})


@dataclass
class PgInstance:
    """A running private PostgreSQL."""

    port: int
    datadir: Path
    socket_dir: Path
    root: Path
    user: str = "postgres"
    dbname: str = "postgres"
    _stopped: bool = field(default=False, repr=False)

    @property
    def dsn(self) -> str:
        """libpq URL on loopback TCP."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    @property
    def sqlalchemy_url(self) -> str:
        """SQLAlchemy URL with the psycopg 3 driver."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str | None = None) -> str:
        """Run SQL with ``psql`` over the socket; returns stdout; raises on error."""
        r = _run([str(PG_BIN / "psql") if (PG_BIN / "psql").exists() else "psql",
                  "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.user, "-d", dbname or self.dbname,
                  "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr.strip()}")
        return r.stdout

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self) -> None:
        """Stop the server (immediate) and remove its directory. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "-t", "30", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(tmpdir: str | os.PathLike[str] | None = None, extra_conf: Sequence[str] = (),
                   port: int | None = None) -> PgInstance:
    """initdb + start a private PostgreSQL under ``tmpdir`` (a fresh subdir); ``extra_conf``: postgresql.conf lines."""
    if not pg_available():
        raise RuntimeError(f"PostgreSQL binaries not found in {PG_BIN}")
    root = Path(tempfile.mkdtemp(prefix="pg-", dir=str(tmpdir) if tmpdir is not None else None))
    datadir = root / "data"
    sockdir = root / "sock"
    sockdir.mkdir()
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (root, sockdir):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        # every parent must be traversable by postgres
        for parent in root.parents:
            if str(parent) in ("/", "/tmp"):
                continue
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
    r = _run([str(PG_BIN / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
              "--no-sync", "--locale=C.UTF-8"])
    if r.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {r.stderr.strip()[-2000:]}")
    port = port or free_port()
    conf = [
        f"port = {port}",
        "listen_addresses = '127.0.0.1'",
        f"unix_socket_directories = '{sockdir}'",
        "fsync = off",
        "synchronous_commit = on",
        "full_page_writes = off",
        "max_connections = 200",
        "shared_buffers = 32MB",
        *extra_conf,
    ]
    with open(datadir / "postgresql.conf", "a") as f:
        f.write("\n" + "\n".join(conf) + "\n")
    inst = PgInstance(port=port, datadir=datadir, socket_dir=sockdir, root=root)
    r = _run([str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-l", str(root / "server.log"), "-w", "-t", "60",
              "start"])
    if r.returncode != 0:
        log = (root / "server.log").read_text(errors="replace")[-2000:] if (root / "server.log").exists() else ""
        inst.stop()
        raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()} {log}")
    deadline = time.monotonic() + 30
    while True:
        ok = _run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], timeout=10)
        if ok.returncode == 0:
            break
        if time.monotonic() > deadline:
            inst.stop()
            raise RuntimeError("private PostgreSQL did not become ready in 30 s")
        time.sleep(0.1)
    return inst


@contextmanager
def postgres(tmpdir: str | os.PathLike[str] | None = None, extra_conf: Sequence[str] = ()) -> Iterator[PgInstance]:
    """Context manager around :func:`start_postgres`; always stops the server."""
    inst = start_postgres(tmpdir, extra_conf)
    try:
        yield inst
    finally:
        inst.stop()
