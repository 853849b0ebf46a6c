"""Test workflows and their side-effect ledger (shared by in-process tests and the subprocess driver).

The ledger is its own SQLite file (not the engine's database), so side effects are countable after crashes. It
stands for the outside world a task changes, and it is append-only (nothing is deduplicated there):

- ``attempts`` gets a row every time a task body starts;
- ``effects`` gets a row every time a task body reaches its side effect: ``applied=1`` if the body performed it,
  ``applied=0`` if the body found its ``ctx.idempotency_key`` already applied and skipped it (a re-run absorbed);
  ``redo=1`` marks an applied row whose key already had an applied row, i.e. a real double application.

Idempotency lives in the flow, as it must in a real task: the body asks the ledger whether its key is applied
and applies only if not, in two separate statements (like a task asking a remote system "is snapshot X there?"
and then making it). So the ledger sees every double application: two concurrent executions of one task (a
fenced zombie, or a pool running a recovered run twice) both apply and both rows count, and a flow run with
``naive=True`` (no key check) shows every re-run as a duplicate (``test_ledger_detects_double_application``).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, SecretStr

from frieze.engine import Checkpoint, Resources, Task, TaskContext, Workflow, task

GATES: dict[str, threading.Event] = {}
ARRIVED: dict[str, threading.Event] = {}
_gate_lock = threading.Lock()

#: Set by whoever runs the engine (driver, in-process tests): ``CANCEL(op_id)`` asks the engine for a cancel.
CANCEL: Callable[[str], object] | None = None


def gate(name: str) -> tuple[threading.Event, threading.Event]:
    """(release, arrived) events of a named gate (in-process tests)."""
    with _gate_lock:
        return GATES.setdefault(name, threading.Event()), ARRIVED.setdefault(name, threading.Event())


class Ledger:
    """An append-only side-effect ledger in an SQLite file; safe across processes."""

    def __init__(self, path: str) -> None:
        self.path = path
        with self._c() as c:
            c.execute("CREATE TABLE IF NOT EXISTS attempts(key TEXT, op TEXT, task TEXT, executor TEXT, ts REAL)")
            c.execute("CREATE TABLE IF NOT EXISTS effects(key TEXT, op TEXT, task TEXT, ts REAL, executor TEXT, "
                      "applied INTEGER, redo INTEGER)")
            c.execute("CREATE TABLE IF NOT EXISTS marks(name TEXT PRIMARY KEY, ts REAL)")

    def _c(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        return c

    @staticmethod
    def _executor() -> str:
        return os.environ.get("FRIEZE_EXECUTOR", "inproc")

    def attempt(self, key: str, op: str, task: str) -> None:
        with self._c() as c:
            c.execute("INSERT INTO attempts VALUES (?,?,?,?,?)", (key, op, task, self._executor(), time.time()))

    def is_applied(self, key: str) -> bool:
        """Whether the side effect of ``key`` was applied (what a task asks before applying)."""
        with self._c() as c:
            return c.execute("SELECT 1 FROM effects WHERE key=? AND applied=1", (key,)).fetchone() is not None

    def apply(self, key: str, op: str, task: str) -> None:
        """Apply the side effect of ``key``: always appends (never deduplicates); ``redo`` says if it is again."""
        c = self._c()
        try:
            c.execute("BEGIN IMMEDIATE")
            again = c.execute("SELECT 1 FROM effects WHERE key=? AND applied=1", (key,)).fetchone() is not None
            c.execute("INSERT INTO effects VALUES (?,?,?,?,?,1,?)", (key, op, task, time.time(), self._executor(),
                                                                      int(again)))
            c.execute("COMMIT")
        finally:
            c.close()

    def skipped(self, key: str, op: str, task: str) -> None:
        """Record that a re-run found its effect applied and did not apply it again."""
        with self._c() as c:
            c.execute("INSERT INTO effects VALUES (?,?,?,?,?,0,0)", (key, op, task, time.time(), self._executor()))

    def effect(self, key: str, op: str, task: str, *, naive: bool = False) -> bool:
        """The flow's side effect, idempotent by key unless ``naive``; True if it was applied now."""
        if not naive and self.is_applied(key):
            self.skipped(key, op, task)
            return False
        self.apply(key, op, task)
        return True

    def mark_once(self, name: str) -> bool:
        """True the first time ``name`` is marked (across processes)."""
        with self._c() as c:
            try:
                c.execute("INSERT INTO marks VALUES (?,?)", (name, time.time()))
                return True
            except sqlite3.IntegrityError:
                return False

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        """Rows of ``table``; for ``effects`` only the applied ones (see :meth:`all_effects`)."""
        where = " WHERE applied=1" if table == "effects" else ""
        with self._c() as c:
            return list(c.execute(f"SELECT * FROM {table}{where} ORDER BY ts"))

    def all_effects(self) -> list[tuple[Any, ...]]:
        """Every row of ``effects``, applied or skipped, oldest first."""
        with self._c() as c:
            return list(c.execute("SELECT * FROM effects ORDER BY ts"))

    def effects_of(self, op: str) -> list[str]:
        """Tasks of ``op`` whose effect was applied, in order (a task applied twice appears twice)."""
        with self._c() as c:
            return [r[0] for r in c.execute("SELECT task FROM effects WHERE op=? AND applied=1 ORDER BY ts", (op,))]

    def attempts_of(self, op: str) -> list[str]:
        with self._c() as c:
            return [r[0] for r in c.execute("SELECT task FROM attempts WHERE op=? ORDER BY ts", (op,))]

    def duplicates(self) -> int:
        """Real double applications: applied rows whose key had already been applied."""
        with self._c() as c:
            return int(c.execute("SELECT count(*) FROM effects WHERE applied=1 AND redo=1").fetchone()[0])

    def absorbed(self) -> int:
        """Re-runs that found their effect applied and skipped it (idempotency at work)."""
        with self._c() as c:
            return int(c.execute("SELECT count(*) FROM effects WHERE applied=0").fetchone()[0])

    def reruns(self) -> int:
        """Task bodies started again for a key already started (at-least-once re-runs)."""
        with self._c() as c:
            return int(c.execute("SELECT count(*) - count(DISTINCT key) FROM attempts").fetchone()[0])


class FiveArgs(BaseModel):
    ledger: str
    tag: str = ""
    host: str | None = None
    target: str | None = None
    exclusive: list[str] = []
    counted: list[tuple[str, int]] = []  # (key, limit) counted resources
    sleep_s: float = 0.0                # in each task body, before its side effect
    sleep_after_s: float = 0.0          # in each task body, after its side effect (a kill there re-runs a done task)
    fail_at: str | None = None          # a task name (forward or undo) that raises
    kill_after: str | None = None       # "effect:<task>" or a step ("checkpoint:c2", "undo:u3", "begin_undo",
    #                                     "task:s3", "finish"): SIGKILL the process once there (driver)
    cancel_at: str | None = None        # a forward task that asks for a cancel of its own op, then finishes
    naive: bool = False                 # apply side effects without checking their key (ledger self-test)
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
    if a.cancel_at == ctx.step:  # every run of the task asks (a kill may cut the first ask short); idempotent
        assert CANCEL is not None, "flows.CANCEL is not set"
        CANCEL(ctx.op_id)
    if a.fail_at == ctx.step:
        raise RuntimeError(f"injected failure in {ctx.step} (token {a.token.get_secret_value() if a.token else ''})")
    led.effect(ctx.idempotency_key, ctx.op_id, ctx.step, naive=a.naive)
    if not ctx.undoing:
        ctx.vars.trail.append(ctx.step)
        ctx.vars.total += 1
        ctx.progress(bytes_done=ctx.vars.total * 100, bytes_total=500)
    ctx.log(f"{ctx.step} done (trail {ctx.vars.trail})")
    if a.kill_after == f"effect:{ctx.step}":
        kill_once(led, a.kill_after, ctx.op_id)
    if a.sleep_after_s:
        time.sleep(a.sleep_after_s)


def _mk(name: str) -> Task:
    return Task(name=name, fn=_body)  # type: ignore[arg-type]


S = [_mk(f"s{i}") for i in range(1, 6)]
U = [_mk(f"u{i}") for i in (5, 4, 3, 2, 1)]


def expected_effects(k_fail: int | None = None, k_cancel: int | None = None) -> list[str]:
    """Applied effects of a ``five`` op, in order: failing in s<k_fail>, or canceled during s<k_cancel>."""
    if k_fail is not None:
        return [f"s{j}" for j in range(1, k_fail)] + [f"u{j}" for j in range(k_fail, 0, -1)]
    if k_cancel is not None:
        return [f"s{j}" for j in range(1, k_cancel + 1)] + [f"u{j}" for j in range(k_cancel, 0, -1)]
    return [f"s{j}" for j in range(1, 6)]


class Five(Workflow[FiveArgs, FiveVars]):
    """Five tasks, each closed by a checkpoint c1..c5; checkpoint ck undoes from uk (uk, ..., u1), c5 included:
    a failure in s5, or a cancel seen at c5, undoes every step (u5 is safe after a partial s5)."""

    name = "five"
    Args = FiveArgs
    Vars = FiveVars
    forward = [S[0], Checkpoint("c1", undo_from="u1"), S[1], Checkpoint("c2", undo_from="u2"),
               S[2], Checkpoint("c3", undo_from="u3"), S[3], Checkpoint("c4", undo_from="u4"),
               S[4], Checkpoint("c5", undo_from="u5")]
    undo = U
    secret_fields = frozenset({"tag_secret"})

    @classmethod
    def resources(cls, args: Any) -> Resources:
        return Resources(host=args.host, target=args.target, exclusive=tuple(args.exclusive),
                         counted=tuple((k, n) for k, n in args.counted))


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
    undo = [U[4]]


@task
def noop(ctx: TaskContext[BaseModel, BaseModel]) -> None:
    """A task that does nothing (benchmark)."""


ALL = [Five, Backup, Restore, TwoTasksOneSegment]
