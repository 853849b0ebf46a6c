"""Test workflows and their side-effect ledger (shared by in-process tests and the subprocess driver).

The ledger is its own SQLite file (not the engine's database), so side effects are countable after crashes:
``attempts`` gets a row every time a task body runs; ``effects`` gets the task's side effect, written
idempotently with ``ctx.idempotency_key`` (check then insert); a duplicate effect is a key with two rows.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from typing import Any

from pydantic import BaseModel, SecretStr

from frieze.engine import Checkpoint, Resources, Task, TaskContext, Workflow, task

GATES: dict[str, threading.Event] = {}
ARRIVED: dict[str, threading.Event] = {}
_gate_lock = threading.Lock()


def gate(name: str) -> tuple[threading.Event, threading.Event]:
    """(release, arrived) events of a named gate (in-process tests)."""
    with _gate_lock:
        return GATES.setdefault(name, threading.Event()), ARRIVED.setdefault(name, threading.Event())


class Ledger:
    """A side-effect ledger in an SQLite file; safe across processes."""

    def __init__(self, path: str) -> None:
        self.path = path
        with self._c() as c:
            c.execute("CREATE TABLE IF NOT EXISTS attempts(key TEXT, op TEXT, task TEXT, executor TEXT, ts REAL)")
            c.execute("CREATE TABLE IF NOT EXISTS effects(key TEXT, op TEXT, task TEXT, ts REAL)")
            c.execute("CREATE TABLE IF NOT EXISTS marks(name TEXT PRIMARY KEY, ts REAL)")

    def _c(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        return c

    def attempt(self, key: str, op: str, task: str) -> None:
        with self._c() as c:
            c.execute("INSERT INTO attempts VALUES (?,?,?,?,?)", (key, op, task, os.environ.get("FRIEZE_EXECUTOR",
                                                                                               "inproc"), time.time()))

    def effect(self, key: str, op: str, task: str) -> None:
        """Idempotent by key: check then insert, in one immediate transaction."""
        c = self._c()
        try:
            c.execute("BEGIN IMMEDIATE")
            if c.execute("SELECT 1 FROM effects WHERE key=?", (key,)).fetchone() is None:
                c.execute("INSERT INTO effects VALUES (?,?,?,?)", (key, op, task, time.time()))
            c.execute("COMMIT")
        finally:
            c.close()

    def mark_once(self, name: str) -> bool:
        """True the first time ``name`` is marked (across processes)."""
        with self._c() as c:
            try:
                c.execute("INSERT INTO marks VALUES (?,?)", (name, time.time()))
                return True
            except sqlite3.IntegrityError:
                return False

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        with self._c() as c:
            return list(c.execute(f"SELECT * FROM {table} ORDER BY ts"))

    def effects_of(self, op: str) -> list[str]:
        with self._c() as c:
            return [r[0] for r in c.execute("SELECT task FROM effects WHERE op=? ORDER BY ts", (op,))]

    def attempts_of(self, op: str) -> list[str]:
        with self._c() as c:
            return [r[0] for r in c.execute("SELECT task FROM attempts WHERE op=? ORDER BY ts", (op,))]

    def duplicates(self) -> int:
        with self._c() as c:
            return int(c.execute("SELECT count(*) FROM (SELECT key FROM effects GROUP BY key HAVING count(*)>1)")
                       .fetchone()[0])


class FiveArgs(BaseModel):
    ledger: str
    tag: str = ""
    host: str | None = None
    target: str | None = None
    exclusive: list[str] = []
    sleep_s: float = 0.0
    fail_at: str | None = None          # a task name (forward or undo) that raises
    kill_after: str | None = None       # "effect:s3" or "checkpoint:c2": SIGKILL the process once there
    pause_at: str | None = None         # a forward task that pauses once
    pause_s: float = 0.5
    block_at: str | None = None         # a task that waits on gate f"{tag}:{task}" (in-process tests)
    token: SecretStr | None = None


class FiveVars(BaseModel):
    trail: list[str] = []
    total: int = 0


def kill_once(ledger: Ledger, point: str, op_id: str) -> None:
    """SIGKILL this process the first time ``point`` is reached for ``op_id``."""
    if ledger.mark_once(f"kill:{op_id}:{point}"):
        os.kill(os.getpid(), signal.SIGKILL)


def _body(ctx: TaskContext[FiveArgs, FiveVars]) -> None:
    a = ctx.args
    led = Ledger(a.ledger)
    led.attempt(ctx.idempotency_key, ctx.op_id, ctx.step)
    if a.block_at == ctx.step:
        release, arrived = gate(f"{a.tag}:{ctx.step}")
        arrived.set()
        release.wait(30)
    if a.pause_at == ctx.step and led.mark_once(f"pause:{ctx.op_id}:{ctx.step}"):
        ctx.progress(bytes_done=1, bytes_total=2)
        ctx.pause(a.pause_s)
    if a.sleep_s:
        time.sleep(a.sleep_s)
    if a.fail_at == ctx.step:
        raise RuntimeError(f"injected failure in {ctx.step} (token {a.token.get_secret_value() if a.token else ''})")
    led.effect(ctx.idempotency_key, ctx.op_id, ctx.step)
    if not ctx.undoing:
        ctx.vars.trail.append(ctx.step)
        ctx.vars.total += 1
        ctx.progress(bytes_done=ctx.vars.total * 100, bytes_total=500)
    ctx.log(f"{ctx.step} done (trail {ctx.vars.trail})")
    if a.kill_after == f"effect:{ctx.step}":
        kill_once(led, a.kill_after, ctx.op_id)


def _mk(name: str) -> Task:
    return Task(name=name, fn=_body)  # type: ignore[arg-type]


S = [_mk(f"s{i}") for i in range(1, 6)]
U = [_mk(f"u{i}") for i in (4, 3, 2, 1)]


class Five(Workflow[FiveArgs, FiveVars]):
    """Five tasks, each closed by a checkpoint c1..c5; checkpoint ck undoes from uk (uk, ..., u1); c5 is final."""

    name = "five"
    Args = FiveArgs
    Vars = FiveVars
    forward = [S[0], Checkpoint("c1", undo_from="u1"), S[1], Checkpoint("c2", undo_from="u2"),
               S[2], Checkpoint("c3", undo_from="u3"), S[3], Checkpoint("c4", undo_from="u4"),
               S[4], Checkpoint("c5")]
    undo = U
    secret_fields = frozenset({"tag_secret"})

    @classmethod
    def resources(cls, args: Any) -> Resources:
        return Resources(host=args.host, target=args.target, exclusive=tuple(args.exclusive))


class Backup(Five):
    name = "backup"


class Restore(Five):
    name = "restore"


class TwoTasksOneSegment(Workflow[FiveArgs, FiveVars]):
    """Two tasks in one segment (cancel between them stops early, undo from the closing checkpoint)."""

    name = "twoseg"
    Args = FiveArgs
    Vars = FiveVars
    forward = [S[0], S[1], Checkpoint("c1", undo_from="u1"), S[2], Checkpoint("c2")]
    undo = [U[3]]


@task
def noop(ctx: TaskContext[BaseModel, BaseModel]) -> None:
    """A task that does nothing (benchmark)."""


ALL = [Five, Backup, Restore, TwoTasksOneSegment]
