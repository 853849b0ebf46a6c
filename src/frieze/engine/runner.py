"""One run of an operation: the DBOS workflow ``frieze_op_run(op_id, run_no)`` and its steps.

Each task, checkpoint and state change is one DBOS step whose output is plain data (the variables after a
task, the cancel flag seen at a checkpoint), so a recovered run replays recorded steps without re-running
them and reaches the same decisions. Progress and log lines are written directly (not replayed).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from dbos import DBOS

from frieze.core.errors import FriezeError, InternalError
from frieze.engine.model import OpState
from frieze.engine.redact import scrub, split_args
from frieze.engine.store import logs, ops
from frieze.engine.workflow import Checkpoint, PauseRequested, Task, TaskContext, Workflow

if TYPE_CHECKING:
    from frieze.engine.engine import Engine

log = logging.getLogger("frieze.engine")

_current: Engine | None = None
_current_lock = threading.Lock()
PROGRESS_EVERY_S = 0.25
STEP_ATTEMPTS = 8


def set_current(engine: Engine | None) -> None:
    """Bind the engine that runs operations in this process (one per process: DBOS is a singleton)."""
    global _current
    with _current_lock:
        _current = engine


def current() -> Engine:
    e = _current
    if e is None:
        raise InternalError("no engine is started in this process")
    return e


@DBOS.workflow(name="frieze_op_run", max_recovery_attempts=1_000_000)
def op_run(op_id: str, run_no: int) -> str:
    """The DBOS workflow of one run of an operation; returns how the run ended.

    If the run itself breaks (an engine bug, a database unreachable beyond the step retries), the operation is
    marked failed with an ``internal`` error saying the undo path did not run (best effort), rather than being
    left running forever."""
    eng = current()
    try:
        return Runner(eng, op_id, run_no).run()
    except Exception as e:
        log.exception("run %s.%s of the engine broke", op_id, run_no)
        try:
            eng.mark_broken(op_id, run_no, e)
        except Exception:
            log.exception("could not mark %s failed", op_id)
        raise


def error_dict(e: BaseException, task: str | None) -> dict[str, Any]:
    """The recorded form of a task's error (no traceback frames' locals, no args)."""
    code = e.code if isinstance(e, FriezeError) else "task_error"
    return {"code": code, "type": type(e).__name__, "message": str(e), "task": task,
            "traceback": "".join(traceback.format_exception(e))[-4000:]}


class _Sink:
    """Progress and log lines of one task of one op (direct writes, throttled progress)."""

    def __init__(self, runner: Runner) -> None:
        self.r = runner
        self._last = 0.0
        self._pending: dict[str, int] = {}

    def log(self, level: str, step: str | None, message: str) -> None:
        self.r.log(level, step, message)

    def progress(self, bytes_done: int | None, bytes_total: int | None) -> None:
        if bytes_done is not None:
            self._pending["bytes_done"] = int(bytes_done)
        if bytes_total is not None:
            self._pending["bytes_total"] = int(bytes_total)
        if time.monotonic() - self._last >= PROGRESS_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.r.eng.store.update(self.r.op_id, durable=False, **self._pending)
            self._pending = {}
        self._last = time.monotonic()

    def cancel_requested(self) -> bool:
        return self.r.read_cancel()


class Runner:
    """Executes run ``run_no`` of ``op_id`` inside the DBOS workflow."""

    def __init__(self, eng: Engine, op_id: str, run_no: int) -> None:
        self.eng = eng
        self.store = eng.store
        self.op_id = op_id
        self.run_no = run_no
        self.secrets: list[str] = []
        self.wf: type[Workflow[Any, Any]] | None = None
        self.args: Any = None

    # -- helpers -------------------------------------------------------------------------------------

    def log(self, level: str, step: str | None, message: str) -> None:
        msg = scrub(message, self.secrets)
        self.store.add_log(self.op_id, level, step, msg)
        log.log(logging.getLevelName(level.upper()) if isinstance(logging.getLevelName(level.upper()), int)
                else logging.INFO, "%s %s: %s", self.op_id, step or "-", msg)

    def read_cancel(self) -> bool:
        with self.store.tx(durable=False) as c:
            v = c.execute(sa.select(ops.c.cancel_requested).where(ops.c.id == self.op_id)).scalar()
        return bool(v)

    def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` as a durable step. Task failures are data (never raised); what raises here is the engine's
        own database access, retried with backoff (about two minutes) to ride out a database restart.

        If the step was executed in this run (not replayed from its record), ``EngineConfig.on_step`` (and, for a
        checkpoint, ``on_checkpoint``) is called once the step's output is durably recorded."""
        executed = False

        def body(*a: Any) -> Any:
            nonlocal executed
            executed = True
            return fn(*a)

        out = DBOS.run_step({"name": name, "retries_allowed": True, "max_attempts": STEP_ATTEMPTS,
                             "interval_seconds": 0.5, "backoff_rate": 2.0}, body, *args)
        if executed:
            cfg = self.eng.config
            if cfg.on_step is not None:
                cfg.on_step(self.op_id, name)
            if cfg.on_checkpoint is not None and name.startswith("checkpoint:"):
                cfg.on_checkpoint(self.op_id, name.split(":", 1)[1])
        return out

    def _load(self, row: dict[str, Any]) -> None:
        self.wf = self.eng.workflow(row["type"])
        self.args = self.wf.Args.model_validate(json.loads(row["args_json"]))
        _, _, self.secrets = split_args(self.args, self.wf.secret_fields)

    # -- steps (each runs once; a recovered run gets their recorded output) ------------------------------

    def _s_start(self) -> dict[str, Any]:
        with self.store.locked() as c:
            row = c.execute(sa.select(ops).where(ops.c.id == self.op_id)).mappings().first()
            if row is None or row["run_no"] != self.run_no or OpState(row["state"]).final:
                return {"skip": True}
            undo = row["phase"] == "undo" or bool(row["cancel_requested"])
            state = OpState.ABORTING if undo else OpState.RUNNING
            c.execute(sa.update(ops).where(ops.c.id == self.op_id).values(
                state=state.value, executor_id=self.eng.config.executor_id, updated=time.time()))
        self.log("info", None, f"run {self.run_no} started on {self.eng.config.executor_id} ({state.value})")
        return {"skip": False, "pos": row["pos"], "vars": row["vars_json"], "phase": row["phase"],
                "undo_from": row["undo_from"], "cancel": bool(row["cancel_requested"]),
                "started": bool(row["started"]), "error": row["error_json"]}

    def _s_task(self, i: int, vars_json: str) -> dict[str, Any]:
        assert self.wf is not None
        item = self.wf.forward[i]
        assert isinstance(item, Task)
        done = sum(1 for x in self.wf.forward[:i] if isinstance(x, Task))
        self.store.update(self.op_id, durable=False, step=item.name, steps_done=done, started=1)
        return self._call(item, vars_json, undoing=False)

    def _call(self, item: Task, vars_json: str, *, undoing: bool) -> dict[str, Any]:
        assert self.wf is not None
        sink = _Sink(self)
        ctx: TaskContext[Any, Any] = TaskContext(
            op_id=self.op_id, op_type=self.wf.name, step=item.name, attempt_key=f"{self.op_id}:{item.name}",
            args=self.args, vars=self.wf.Vars.model_validate_json(vars_json), sink=sink, undoing=undoing)
        out: dict[str, Any] = {"vars": vars_json, "error": None, "pause": None}
        try:
            item(ctx)
            out["vars"] = ctx.vars.model_dump_json()
        except PauseRequested as p:
            if undoing:
                out["error"] = error_dict(InternalError(f"undo task {item.name} asked to pause"), item.name)
            else:
                out["pause"] = p.seconds
        except Exception as e:  # a task's failure is data: recorded, then the undo path runs
            err = error_dict(e, item.name)
            out["error"] = {k: scrub(v, self.secrets) if isinstance(v, str) else v for k, v in err.items()}
            self.log("error", item.name, f"task {item.name} failed: {type(e).__name__}: {e}")
        sink.flush()
        out["cancel"] = self.read_cancel()
        return out

    def _s_checkpoint(self, i: int, vars_json: str) -> dict[str, Any]:
        """Persist the variables at checkpoint ``i`` and read the cancel flag, in one transaction.

        At the final checkpoint, if no cancel was accepted, the operation is completed in the same transaction:
        a cancel is either seen here (then the undo path runs) or finds the operation complete (``OpFinished``);
        there is no window in which an accepted cancel is overwritten by ``complete``."""
        assert self.wf is not None
        cp = self.wf.forward[i]
        assert isinstance(cp, Checkpoint)
        final = i == len(self.wf.forward) - 1
        done = sum(1 for x in self.wf.forward[:i] if isinstance(x, Task))
        now = time.time()
        where = ops.c.id == self.op_id
        with self.store.tx() as c:
            # FOR UPDATE (PostgreSQL): a concurrent cancel either committed before (seen here) or waits for us
            row = c.execute(sa.select(ops.c.cancel_requested, ops.c.state).where(where).with_for_update()).first()
            assert row is not None
            if final and row[1] == OpState.COMPLETE.value:  # re-executed after a crash before DBOS recorded it
                return {"cancel": False, "complete": True}
            cancel = bool(row[0])
            values: dict[str, Any] = dict(pos=i + 1, checkpoint=cp.name, vars_json=vars_json, steps_done=done,
                                          updated=now)
            complete = final and not cancel
            if complete:
                values.update(state=OpState.COMPLETE.value, finished=now, dedup_key=None, admitted=0, enqueued=1,
                              steps_done=self.wf.steps_total(), step=None, undo_errors_json="[]")
            c.execute(sa.update(ops).where(where).values(**values))
            c.execute(sa.insert(logs).values(op_id=self.op_id, ts=now, level="info", step=cp.name,
                                             message=f"checkpoint {cp.name}"))
            if complete:
                c.execute(sa.insert(logs).values(op_id=self.op_id, ts=now, level="info", step=None,
                                                 message="operation complete"))
        if complete:
            self.eng.wake()
        return {"cancel": cancel, "complete": complete}

    def _s_pause(self, seconds: float, step: str) -> bool:
        with self.store.tx() as c:
            n = c.execute(sa.update(ops).where(ops.c.id == self.op_id, ops.c.state == OpState.RUNNING.value,
                                               ops.c.cancel_requested == 0).values(
                state=OpState.PAUSED.value, run_no=self.run_no + 1, enqueued=0,
                not_before=time.time() + seconds, updated=time.time())).rowcount
        if n:
            self.log("info", step, f"paused; looking again in {seconds:g} s")
        return bool(n)

    def _s_begin_undo(self, undo_from: str | None, error: dict[str, Any] | None) -> None:
        self.store.update(self.op_id, state=OpState.ABORTING.value, phase="undo", undo_from=undo_from,
                          dedup_key=None, error_json=json.dumps(error) if error else None)
        why = f"task {error['task']} failed" if error else "cancel requested"
        self.log("warning", None, f"{why}; running the undo path from {undo_from or '(nothing to undo)'}")

    def _s_undo(self, name: str, vars_json: str) -> dict[str, Any]:
        assert self.wf is not None
        item = next(t for t in self.wf.undo if t.name == name)
        self.store.update(self.op_id, step=f"undo:{name}")
        return self._call(item, vars_json, undoing=True)

    def _s_finish(self, state: str, undo_errors: list[dict[str, Any]]) -> None:
        now = time.time()
        values: dict[str, Any] = dict(state=state, finished=now, updated=now, dedup_key=None, admitted=0,
                                      enqueued=1, undo_errors_json=json.dumps(undo_errors))
        if state == OpState.COMPLETE.value:
            assert self.wf is not None
            values["steps_done"] = self.wf.steps_total()
            values["step"] = None
        self.log("info" if state == OpState.COMPLETE.value else "warning", None, f"operation {state}")
        if state == OpState.FAILED.value:  # made before the state shows failed, so it is there at once
            self.eng.save_diagnostics(self.op_id, {"state": state, "undo_errors": undo_errors, "finished": now})
        self.store.update(self.op_id, **values)
        self.eng.wake()

    # -- the run -----------------------------------------------------------------------------------------

    def run(self) -> str:
        st = self.step("start", self._s_start)
        if st["skip"]:
            return "skipped"
        row = self.store.get(self.op_id)
        assert row is not None
        self._load(row)
        assert self.wf is not None
        wf = self.wf
        vars_json: str = st["vars"]
        if st["phase"] == "undo":
            return self._undo(st["undo_from"], vars_json, json.loads(st["error"]) if st["error"] else None)
        if st["cancel"]:
            if not st["started"]:
                self.step("finish", self._s_finish, OpState.CANCELED.value, [])
                return "canceled"
            return self._begin_undo(wf.closing_checkpoint(st["pos"]).undo_from, vars_json, None)
        i = st["pos"]
        while i < len(wf.forward):
            item = wf.forward[i]
            if isinstance(item, Task):
                out = self.step(f"task:{item.name}", self._s_task, i, vars_json)
                if out["error"] is not None:
                    return self._begin_undo(wf.closing_checkpoint(i).undo_from, vars_json, out["error"])
                if out["pause"] is not None and not out["cancel"]:
                    if self.step("pause", self._s_pause, float(out["pause"]), item.name):
                        return "paused"
                    out["cancel"] = True
                vars_json = out["vars"] if out["pause"] is None else vars_json
                if out["cancel"] and not isinstance(wf.forward[i + 1], Checkpoint):
                    return self._begin_undo(wf.closing_checkpoint(i).undo_from, vars_json, None)
                if out["cancel"] and out["pause"] is not None:
                    return self._begin_undo(wf.closing_checkpoint(i).undo_from, vars_json, None)
            else:
                cp = self.step(f"checkpoint:{item.name}", self._s_checkpoint, i, vars_json)
                if cp.get("complete"):
                    return "complete"
                if i == len(wf.forward) - 1 and not cp["cancel"]:  # recorded by a version without "complete"
                    self.step("finish", self._s_finish, OpState.COMPLETE.value, [])
                    return "complete"
                if cp["cancel"]:
                    return self._begin_undo(item.undo_from, vars_json, None)
            i += 1
        raise InternalError(f"workflow {wf.name} ran past its last checkpoint")

    def _begin_undo(self, undo_from: str | None, vars_json: str, error: dict[str, Any] | None) -> str:
        self.step("begin_undo", self._s_begin_undo, undo_from, error)
        return self._undo(undo_from, vars_json, error)

    def _undo(self, undo_from: str | None, vars_json: str, error: dict[str, Any] | None) -> str:
        assert self.wf is not None
        undo_errors: list[dict[str, Any]] = []
        for t in self.wf.undo_tasks_from(undo_from):
            out = self.step(f"undo:{t.name}", self._s_undo, t.name, vars_json)
            if out["error"] is not None:
                undo_errors.append(out["error"])
            else:
                vars_json = out["vars"]
        final = OpState.FAILED if error is not None else OpState.CANCELED
        self.step("finish", self._s_finish, final.value, undo_errors)
        return final.value
