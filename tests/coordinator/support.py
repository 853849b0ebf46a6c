"""Fixtures' helpers: an in-process coordinator with its engine, a real SQLite app, a local repository."""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from frieze.coordinator.config import CoordinatorConfig
from frieze.coordinator.service import Coordinator
from tests.coordinator.local_port import LocalPort


def cheap_params() -> Any:
    from frieze.repo.types import KdfParams, RepoParams

    return RepoParams(kdf=KdfParams.cheap_for_tests(), pack_size=256 * 1024)


class _LiveStderr:
    """Whatever ``sys.stderr`` is at the time of the write (pytest's capfd swaps and closes it per test)."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


def _dbos_logs_follow_stderr() -> None:
    """DBOS binds its console log handler to the stderr of its first start in the process; under a test's
    capfd that stream is closed after the test. Give DBOS a handler that follows the current stderr."""
    lg = logging.getLogger("dbos")
    if not lg.handlers:
        h = logging.StreamHandler(_LiveStderr())  # type: ignore[arg-type]
        h.name = "__dbos_console_log_handler__"
        lg.addHandler(h)
        lg.propagate = False
    for h in lg.handlers:
        if h.name == "__dbos_console_log_handler__" and type(h) is logging.StreamHandler and not isinstance(
                h.stream, _LiveStderr):
            h.setStream(_LiveStderr())  # type: ignore[arg-type]


@contextmanager
def coordinator(tmp: Path, port: LocalPort | None = None, **cfg: Any) -> Iterator[Coordinator]:
    _dbos_logs_follow_stderr()
    c = Coordinator(CoordinatorConfig(state_dir=tmp / "state", scheduler=False, **cfg))
    c.repos.init_params = cheap_params()
    if port is not None:
        c.agents.set_factory(lambda host: port)
    try:
        yield c
    finally:
        c.close()


class CounterApp:
    """A small app writing to a SQLite database in WAL mode: one row per tick in ``counter``."""

    def __init__(self, db: Path) -> None:
        self.db = db
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS counter (n INTEGER PRIMARY KEY, t REAL)")
        conn.commit()
        conn.close()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self.n = 0

    def _run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=30)
        while not self._stop.is_set():
            conn.execute("INSERT INTO counter (t) VALUES (?)", (time.time(),))
            conn.commit()
            self.n += 1
            time.sleep(0.005)
        conn.close()

    def __enter__(self) -> CounterApp:
        self._t.start()
        return self

    def __exit__(self, *a: object) -> None:
        self._stop.set()
        self._t.join()


def provision(c: Coordinator, vol_path: Path, repo_url: str, *, provider: str = "copy") -> dict[str, str]:
    h, _tok = c.create_host("h1", "local")
    c.registry.heartbeat("h1", None, "0.1.0")
    c.resources.create_volume("h1", "v1", str(vol_path), provider)
    a = c.create_app("h1", "counter", "sqlite", str(vol_path), "v1", {"db": "app.db"}, {})
    c.create_repository("r1", repo_url, "pw-CANARY-repo-7f3a", True, {})
    c.resources.create_protection_set("ps1", ["counter"], [])
    return {"host": h["id"], "app": a["id"]}
