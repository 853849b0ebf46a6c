"""Real engines for the app plug-in tests, one context manager per kind, each yielding an :class:`Env`:
the plug-in, a spec for a live private instance, and a write probe. Shared by the conformance suite and the
process-death tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.engines import loop_mount, mariadb_server, pg_server, redis_server, sqlite_module

from frieze.host.apps import registry
from frieze.host.apps.base import AppPlugin, AppSpec

KINDS = ["postgres", "mariadb", "sqlite", "redis", "files", "script"]


@dataclass
class Env:
    plugin: AppPlugin
    spec: AppSpec
    #: Try one write; True if it completed within ``timeout`` seconds (a blocked write finishes later, harmlessly).
    probe: Callable[[float], bool]
    blocks_writes: bool
    #: The engine itself ends the freeze at the lease even if our process (and its watchdog) is gone.
    server_side_lease: bool
    #: Is the engine-side freeze still in place? (for engines that do not block writers)
    frozen: Callable[[], bool] | None = None
    #: One write, blocking while the app is frozen (None where the probe is not a single write: script)
    write: Callable[[], None] | None = None


def thread_probe(write: Callable[[], None]) -> Callable[[float], bool]:
    def probe(timeout: float) -> bool:
        done = threading.Event()
        err: list[BaseException] = []

        def run() -> None:
            try:
                write()
                done.set()
            except BaseException as e:  # reported below
                err.append(e)

        threading.Thread(target=run, daemon=True).start()
        ok = done.wait(timeout)
        if err:
            raise err[0]
        return ok

    return probe


@contextlib.contextmanager
def env_postgres() -> Iterator[Env]:
    with pg_server() as pg:
        pg.sql("CREATE TABLE t (x int)")
        spec = AppSpec("pg1", "postgres", str(pg.data_dir), options=pg.options())

        def write() -> None:
            pg.sql("INSERT INTO t VALUES (1)")

        def frozen() -> bool:
            return bool(pg.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'frieze-agent'"
                               " AND backend_type = 'client backend'")[0][0])

        yield Env(registry.load("postgres"), spec, thread_probe(write), False, True, frozen, write)


@contextlib.contextmanager
def env_mariadb() -> Iterator[Env]:
    with mariadb_server() as m:
        m.sql("CREATE TABLE t (x int) ENGINE=InnoDB")
        spec = AppSpec("ma1", "mariadb", str(m.data_dir), options={**m.options(), "start_argv": m.argv()},
                       secrets=m.secrets())

        def write() -> None:
            c = m.connect(read_timeout=60)
            try:
                with c.cursor() as cur:
                    cur.execute("INSERT INTO t VALUES (1)")
            finally:
                c.close()

        yield Env(registry.load("mariadb"), spec, thread_probe(write), True, True, write=write)


@contextlib.contextmanager
def env_sqlite() -> Iterator[Env]:
    d = Path(tempfile.mkdtemp(prefix="frieze-sq-"))
    try:
        sq = sqlite_module()
        c = sq.connect(str(d / "app.db"), isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE t (x int)")
        c.close()
        spec = AppSpec("sq1", "sqlite", str(d), options={"database": "app.db"})

        def write() -> None:
            w = sq.connect(str(d / "app.db"), isolation_level=None, timeout=60)
            try:
                w.execute("INSERT INTO t VALUES (1)")
            finally:
                w.close()

        yield Env(registry.load("sqlite"), spec, thread_probe(write), True, False, write=write)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def env_redis() -> Iterator[Env]:
    with redis_server() as r:
        spec = AppSpec("rd1", "redis", str(r.data_dir), options={**r.options(), "config_file": str(r.conf)},
                       secrets=r.secrets())

        def write() -> None:
            c = r.client(socket_timeout=60)
            try:
                c.incr("probe")
            finally:
                c.close()

        yield Env(registry.load("redis"), spec, thread_probe(write), True, True, write=write)


@contextlib.contextmanager
def env_files() -> Iterator[Env]:
    if os.geteuid() != 0 or not shutil.which("fsfreeze") or not shutil.which("losetup"):
        pytest.skip("files plug-in needs root, losetup and fsfreeze")
    with contextlib.ExitStack() as stack:
        try:
            mnt = stack.enter_context(loop_mount(32, "ext4"))  # always thawed and unmounted on exit
        except RuntimeError as e:
            pytest.skip(str(e))
        spec = AppSpec("fs1", "files", str(mnt))

        def write() -> None:
            with open(mnt / f"w{time.monotonic_ns()}", "wb") as f:
                f.write(b"x" * 4096)
                f.flush()
                os.fsync(f.fileno())

        yield Env(registry.load("files"), spec, thread_probe(write), True, False, write=write)


WRITER = """
import os, sys, time
p = sys.argv[1]
while True:
    with open(p, "a") as f:
        f.write("x\\n")
    time.sleep(0.01)
"""


@contextlib.contextmanager
def env_script() -> Iterator[Env]:
    d = Path(tempfile.mkdtemp(prefix="frieze-script-"))
    out = d / "out.txt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)])
    try:
        spec = AppSpec("sc1", "script", str(d), options={
            "quiesce": ["kill", "-STOP", str(proc.pid)], "unquiesce": ["kill", "-CONT", str(proc.pid)],
            "timeout_s": 10})

        def probe(timeout: float) -> bool:
            def size() -> int:
                return out.stat().st_size if out.exists() else 0

            s0 = size()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if size() > s0:
                    return True
                time.sleep(0.02)
            return False

        yield Env(registry.load("script"), spec, probe, True, False)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, 18)  # SIGCONT
        proc.kill()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)


ENVS = {"postgres": env_postgres, "mariadb": env_mariadb, "sqlite": env_sqlite, "redis": env_redis,
        "files": env_files, "script": env_script}
