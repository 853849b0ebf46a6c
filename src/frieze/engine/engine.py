"""The engine facade: submit, status, logs, cancel, list, wait, diagnostics, janitor; start and shutdown.

One :class:`Engine` per process (DBOS is a process-wide singleton). ``start()`` launches DBOS (which
recovers this executor's interrupted runs) and three threads: the dispatcher (admission, enqueueing), the
watchdog (heartbeat, takeover of dead peers' operations) and the janitor.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from dbos import DBOS, DBOSConfig, Queue, SetWorkflowID
from pydantic import BaseModel, ValidationError

from frieze.core.errors import InternalError, StorageError, UsageError
from frieze.core.ids import new_id
from frieze.engine import diagnostics as diag_mod
from frieze.engine import runner
from frieze.engine.admission import Admission
from frieze.engine.errors import (
    InvalidArgs,
    OpFinished,
    OpNotFound,
    UnknownOpType,
    WorkflowDefinitionError,
)
from frieze.engine.model import ACTIVE_STATES, EngineConfig, LogLine, OpState, OpStatus, Resources
from frieze.engine.redact import dedup_key, split_args
from frieze.engine.store import Store, diag, logs, make_dbos_sqlite_engine, ops, peers
from frieze.engine.workflow import Workflow

log = logging.getLogger("frieze.engine")
_ACTIVE = [s.value for s in ACTIVE_STATES]


def _dt(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t is not None else None


class Engine:
    """Durable operations. See docs/design/workflow-engine.md for the contracts."""

    def __init__(self, config: EngineConfig, workflows: Sequence[type[Workflow[Any, Any]]]) -> None:
        self.config = config
        self._registry: dict[str, type[Workflow[Any, Any]]] = {}
        for wf in workflows:
            wf.validate_definition()
            if wf.name in self._registry and self._registry[wf.name] is not wf:
                raise WorkflowDefinitionError(f"two workflows are named {wf.name!r}")
            self._registry[wf.name] = wf
        self.store = Store(config.database_url)
        self.admission = Admission(config.limits)
        self._queues: dict[str, Queue] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Create tables, launch DBOS (recovering this executor's runs), start the background threads."""
        if runner._current is not None:
            raise UsageError("an engine is already started in this process (DBOS is a process-wide singleton)")
        try:
            self.store.create()
        except sa.exc.SQLAlchemyError as e:
            where = diag_mod.db_backend(self.config.database_url)
            raise StorageError(f"cannot open the engine database {where}: {type(getattr(e, 'orig', e)).__name__}",
                               database=where) from None
        cfg: DBOSConfig = {
            "name": "frieze",
            "system_database_url": self.config.database_url,
            "executor_id": self.config.executor_id,
            "application_version": self.config.app_version,
            "log_level": "WARNING",
            "notification_listener_polling_interval_sec": 0.1,
        }
        if self.store.sqlite:
            cfg["system_database_engine"] = make_dbos_sqlite_engine(self.config.database_url)
        runner.set_current(self)
        try:
            DBOS(config=cfg)
            DBOS.launch()
            for name in self._registry:
                self._queues[name] = DBOS.register_queue(
                    f"frieze_{name}", worker_concurrency=self.config.pools.get(name, self.config.default_pool),
                    polling_interval_sec=self.config.queue_poll_s, on_conflict="always_update")
        except BaseException:
            runner.set_current(None)
            try:  # never leave a half-made DBOS singleton behind (a later DBOS(config) would silently reuse it)
                DBOS.destroy(destroy_registry=False)
            except Exception:
                log.exception("DBOS.destroy after a failed start")
            raise
        self._heartbeat()
        self._stop.clear()
        for fn, name in ((self._dispatch_loop, "dispatcher"), (self._watchdog_loop, "watchdog"),
                         (self._janitor_loop, "janitor")):
            t = threading.Thread(target=fn, name=f"frieze-engine-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self._started = True

    def shutdown(self) -> None:
        """Stop the threads and DBOS. Runs in flight are left as they are (recovered at the next start)."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()
        if self._started:
            DBOS.destroy(destroy_registry=False)
            runner.set_current(None)
            self._started = False
        self.store.dispose()

    def workflow(self, op_type: str) -> type[Workflow[Any, Any]]:
        """The registered workflow of ``op_type``; :class:`UnknownOpType` otherwise."""
        wf = self._registry.get(op_type)
        if wf is None:
            raise UnknownOpType(f"unknown operation type {op_type!r}", op_type=op_type,
                                known=sorted(self._registry))
        return wf

    def wake(self) -> None:
        """Make the dispatcher look at once (after a submit, a finish, a cancel)."""
        self._wake.set()

    # -- requests ----------------------------------------------------------------------------------------

    def submit(self, op_type: str, args: dict[str, Any] | BaseModel,
               resources: Resources | dict[str, Any] | None = None) -> str:
        """Record an operation and return its id at once (or the id of an identical one still in progress).

        Raises :class:`UnknownOpType`, :class:`InvalidArgs`, :class:`LimitExceeded`; nothing is recorded then.
        """
        wf = self.workflow(op_type)
        raw = args.model_dump(mode="python") if isinstance(args, BaseModel) else args
        if not isinstance(raw, dict):
            raise InvalidArgs(f"arguments of {op_type} must be an object", op_type=op_type)
        try:
            model = wf.Args.model_validate(raw)
        except ValidationError as e:
            errs = [{"loc": ".".join(str(x) for x in er["loc"]), "msg": er["msg"], "type": er["type"]}
                    for er in e.errors(include_input=False, include_url=False)]
            first = errs[0] if errs else {"loc": "", "msg": "invalid"}
            raise InvalidArgs(f"invalid arguments for {op_type}: {first['loc']}: {first['msg']}",
                              op_type=op_type, errors=errs) from None
        if isinstance(resources, dict):
            res = Resources.from_dict(resources)
        else:
            res = resources if resources is not None else wf.resources(model)
        plain, redacted, _ = split_args(model, wf.secret_fields)
        key = dedup_key(op_type, plain)
        now = time.time()
        op_id = new_id("op")
        with self.store.locked() as c:
            existing = c.execute(sa.select(ops.c.id).where(ops.c.dedup_key == key)).scalar()
            if existing is not None:
                return str(existing)
            self.admission.check_hard(c, op_type, res)
            c.execute(sa.insert(ops).values(
                id=op_id, type=op_type, state=OpState.QUEUED.value, args_json=json.dumps(plain),
                args_redacted=json.dumps(redacted), host=res.host, target=res.target,
                exclusive_json=res.to_json(), dedup_key=key, admitted=0, enqueued=0, run_no=0,
                not_before=0.0, pos=0, vars_json=wf.Vars().model_dump_json(), phase="forward",
                cancel_requested=0, started=0, steps_done=0, steps_total=wf.steps_total(), bytes_done=0,
                bytes_total=0, undo_errors_json="[]", created=now, updated=now))
            c.execute(sa.insert(logs).values(op_id=op_id, ts=now, level="info", step=None,
                                             message=f"submitted {op_type} on {self.config.executor_id}"))
        self.wake()
        return op_id

    def _row(self, op_id: str) -> dict[str, Any]:
        row = self.store.get(op_id)
        if row is None:
            raise OpNotFound(f"no operation {op_id!r}", op_id=op_id)
        return row

    def _status(self, row: dict[str, Any], has_diag: bool) -> OpStatus:
        created = _dt(row["created"])
        updated = _dt(row["updated"])
        assert created is not None and updated is not None
        return OpStatus(
            id=row["id"], type=row["type"], state=OpState(row["state"]), step=row["step"],
            steps_done=row["steps_done"], steps_total=row["steps_total"], bytes_done=row["bytes_done"],
            bytes_total=row["bytes_total"], error=json.loads(row["error_json"]) if row["error_json"] else None,
            undo_errors=json.loads(row["undo_errors_json"] or "[]"), created=created, updated=updated,
            finished=_dt(row["finished"]), cancel_requested=bool(row["cancel_requested"]),
            checkpoint=row["checkpoint"], args=json.loads(row["args_redacted"]),
            resources=Resources(host=row["host"], target=row["target"],
                                exclusive=Resources.parse_json(row["exclusive_json"])[0],
                                counted=Resources.parse_json(row["exclusive_json"])[1]),
            executor_id=row["executor_id"], has_diagnostics=has_diag)

    def _has_diag(self, op_id: str) -> bool:
        with self.store.tx() as c:
            return c.execute(sa.select(diag.c.op_id).where(diag.c.op_id == op_id)).first() is not None

    def status(self, op_id: str) -> OpStatus:
        """The operation's status; :class:`OpNotFound` for an unknown id."""
        return self._status(self._row(op_id), self._has_diag(op_id))

    def list(self, state: OpState | str | None = None, type: str | None = None, limit: int = 100) -> list[OpStatus]:
        """Operations, newest first, optionally of one state and/or type."""
        q = sa.select(ops).order_by(ops.c.created.desc(), ops.c.id).limit(limit)
        if state is not None:
            q = q.where(ops.c.state == OpState(state).value)
        if type is not None:
            q = q.where(ops.c.type == type)
        with self.store.tx() as c:
            rows = [dict(r) for r in c.execute(q).mappings()]
            have = {r[0] for r in c.execute(sa.select(diag.c.op_id).where(diag.c.op_id.in_([r["id"] for r in rows])))}
        return [self._status(r, r["id"] in have) for r in rows]

    def logs(self, op_id: str, since: int = 0) -> builtins.list[LogLine]:
        """Log lines of the operation with ``seq > since``, oldest first."""
        self._row(op_id)
        with self.store.tx() as c:
            rows = c.execute(sa.select(logs).where(logs.c.op_id == op_id, logs.c.seq > since)
                             .order_by(logs.c.seq)).mappings().all()
        return [LogLine(seq=r["seq"], ts=datetime.fromtimestamp(r["ts"], UTC), level=r["level"], step=r["step"],
                        message=r["message"]) for r in rows]

    def cancel(self, op_id: str) -> OpStatus:
        """Ask for a cancel. Queued: canceled at once. Running: aborting (the task finishes, undo runs).

        Paused: aborting, undo scheduled at once. Canceled/aborting: no change. Complete/failed: :class:`OpFinished`.
        """
        with self.store.locked() as c:
            # compare-and-set on the state read: a run's own steps (a final checkpoint completing the operation,
            # a pause) do not take the engine lock, so the update applies only if the state is still the one read
            for _ in range(100):
                now = time.time()
                row = c.execute(sa.select(ops).where(ops.c.id == op_id)).mappings().first()
                if row is None:
                    raise OpNotFound(f"no operation {op_id!r}", op_id=op_id)
                state = OpState(row["state"])
                if state in (OpState.COMPLETE, OpState.FAILED):
                    raise OpFinished(f"operation {op_id} is already {state.value}", op_id=op_id, state=state.value)
                upd = sa.update(ops).where(ops.c.id == op_id, ops.c.state == state.value)
                if state == OpState.QUEUED:
                    n = c.execute(upd.values(state=OpState.CANCELED.value, cancel_requested=1, dedup_key=None,
                                             admitted=0, enqueued=1, finished=now, updated=now)).rowcount
                    msg = "canceled while queued"
                elif state == OpState.RUNNING:
                    n = c.execute(upd.values(state=OpState.ABORTING.value, cancel_requested=1, dedup_key=None,
                                             updated=now)).rowcount
                    msg = "cancel requested; the running task finishes, then the undo path runs"
                elif state == OpState.PAUSED:
                    wf = self.workflow(row["type"])
                    n = c.execute(upd.values(state=OpState.ABORTING.value, cancel_requested=1, dedup_key=None,
                                             phase="undo", undo_from=wf.closing_checkpoint(row["pos"]).undo_from,
                                             not_before=0.0, enqueued=0, updated=now)).rowcount
                    msg = "cancel requested while paused; the undo path runs now"
                else:
                    n = 1
                    if not row["cancel_requested"] and state == OpState.ABORTING:
                        c.execute(upd.values(cancel_requested=1, updated=now))
                    msg = ""
                if n:
                    break
            else:
                raise InternalError(f"operation {op_id} changed state 100 times during a cancel")
            if msg:
                c.execute(sa.insert(logs).values(op_id=op_id, ts=now, level="warning", step=None, message=msg))
        self.wake()
        return self.status(op_id)

    def mark_broken(self, op_id: str, run_no: int, e: BaseException) -> None:
        """Mark an operation whose run broke inside the engine as failed (the undo path did not run)."""
        now = time.time()
        msg = f"engine error, the undo path did not run: {type(e).__name__}: {e}"[:2000]
        err: dict[str, Any] = {"code": "internal", "type": type(e).__name__, "task": None, "message": msg}
        row = self.store.get(op_id)
        if row is None or row["run_no"] != run_no or OpState(row["state"]).final:
            return
        self.store.add_log(op_id, "error", None, msg)
        self.save_diagnostics(op_id, {"state": OpState.FAILED.value, "error": err, "finished": now})
        with self.store.tx() as c:
            c.execute(sa.update(ops).where(ops.c.id == op_id, ops.c.run_no == run_no,
                                               ops.c.state.in_(_ACTIVE)).values(
                state=OpState.FAILED.value, error_json=json.dumps(err), finished=now, updated=now, dedup_key=None,
                admitted=0, enqueued=1))

    def wait(self, op_id: str, timeout: float = 60.0, poll: float = 0.05) -> OpStatus:
        """Poll until the operation is final or ``timeout`` passes; returns the last status seen."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(op_id)
            if st.state.final or time.monotonic() >= deadline:
                return st
            time.sleep(poll)

    # -- diagnostics and janitor ---------------------------------------------------------------------------

    def _bundle(self, op_id: str, final: dict[str, Any] | None = None) -> bytes:
        st = {**self.status(op_id).to_dict(), **(final or {})}
        lines = "".join(f"{ln.ts.isoformat()} {ln.level:7} {ln.step or '-'}: {ln.message}\n"
                        for ln in self.logs(op_id))
        row = self._row(op_id)
        steps: builtins.list[dict[str, Any]] = []
        for n in range(1, row["run_no"] + 1):
            try:
                for s in DBOS.list_workflow_steps(f"{op_id}.{n}", load_output=False):
                    steps.append({"run": n, "function_id": s["function_id"], "name": s["function_name"],
                                  "error": None if s["error"] is None else str(s["error"])[:2000]})
            except Exception as e:  # the bundle is best effort beyond the log and inputs
                steps.append({"run": n, "unavailable": type(e).__name__})
        return diag_mod.build_bundle({
            "status.json": st, "logs.txt": lines, "inputs.json": json.loads(row["args_redacted"]),
            "steps.json": steps, "versions.json": diag_mod.versions(),
            "environment.json": diag_mod.environment(self.config.executor_id, self.config.database_url)})

    def save_diagnostics(self, op_id: str, final: dict[str, Any] | None = None) -> None:
        """Build and store the bundle of ``op_id`` (done when an operation fails, before it shows failed)."""
        data = self._bundle(op_id, final)
        with self.store.tx() as c:
            c.execute(sa.delete(diag).where(diag.c.op_id == op_id))
            c.execute(sa.insert(diag).values(op_id=op_id, created=time.time(), bundle=data))

    def diagnostics(self, op_id: str) -> bytes:
        """The diagnostic bundle (tar.gz): the stored one of a failed operation, else one built now."""
        self._row(op_id)
        with self.store.tx() as c:
            data = c.execute(sa.select(diag.c.bundle).where(diag.c.op_id == op_id)).scalar()
        return bytes(data) if data is not None else self._bundle(op_id)

    def janitor(self, older_than_s: float | None = None) -> int:
        """Delete operations final for longer than ``older_than_s`` (default ``retention_s``); returns the count."""
        age = self.config.retention_s if older_than_s is None else older_than_s
        cutoff = time.time() - age
        with self.store.tx() as c:
            rows = c.execute(sa.select(ops.c.id, ops.c.run_no).where(
                ops.c.state.in_([s.value for s in (OpState.CANCELED, OpState.FAILED, OpState.COMPLETE)]),
                ops.c.finished < cutoff).limit(1000)).all()
        for op_id, run_no in rows:
            for n in range(1, run_no + 1):
                try:
                    DBOS.delete_workflow(f"{op_id}.{n}")
                except Exception as e:  # absent (never enqueued) is fine
                    log.debug("janitor: %s.%s: %s", op_id, n, e)
            with self.store.tx() as c:
                c.execute(sa.delete(logs).where(logs.c.op_id == op_id))
                c.execute(sa.delete(diag).where(diag.c.op_id == op_id))
                c.execute(sa.delete(ops).where(ops.c.id == op_id))
        return len(rows)

    # -- background threads --------------------------------------------------------------------------------

    def _loop(self, interval: float, fn: Any, use_wake: bool = False) -> None:
        while not self._stop.is_set():
            try:
                fn()
            except Exception:
                log.exception("engine background task %s failed", getattr(fn, "__name__", fn))
            if use_wake:
                self._wake.wait(interval)
                self._wake.clear()
            else:
                self._stop.wait(interval)

    def _dispatch_loop(self) -> None:
        self._loop(self.config.dispatch_interval_s, self.dispatch_once, use_wake=True)

    def dispatch_once(self) -> int:
        """Admit what may start and enqueue admitted runs; returns the number of runs enqueued."""
        with self.store.locked() as c:
            self.admission.admit(c, set(self._registry))
            due = c.execute(sa.select(ops.c.id, ops.c.type, ops.c.run_no).where(
                ops.c.admitted == 1, ops.c.enqueued == 0, ops.c.not_before <= time.time(),
                ops.c.state.in_(_ACTIVE), ops.c.type.in_(list(self._registry))).order_by(ops.c.created)).all()
        for op_id, op_type, run_no in due:
            with SetWorkflowID(f"{op_id}.{run_no}"):
                self._queues[op_type].enqueue(runner.op_run, op_id, run_no)
            with self.store.tx() as c:
                c.execute(sa.update(ops).where(ops.c.id == op_id, ops.c.run_no == run_no).values(enqueued=1))
        return len(due)

    def _heartbeat(self) -> None:
        now = time.time()
        with self.store.tx() as c:
            n = c.execute(sa.update(peers).where(peers.c.executor_id == self.config.executor_id)
                          .values(last_seen=now)).rowcount
            if not n:
                c.execute(sa.insert(peers).values(executor_id=self.config.executor_id, last_seen=now, started=now))

    def _watchdog_loop(self) -> None:
        self._loop(self.config.heartbeat_s, self.watchdog_once)

    def watchdog_once(self) -> int:
        """Heartbeat, then take over the running operations of peers silent for ``peer_timeout_s``."""
        self._heartbeat()
        cutoff = time.time() - self.config.peer_timeout_s
        me = self.config.executor_id
        with self.store.tx() as c:
            dead = [r[0] for r in c.execute(sa.select(peers.c.executor_id).where(
                peers.c.last_seen < cutoff, peers.c.executor_id != me))]
        taken = 0
        for peer in dead:
            # every run the dead peer owned, whether or not its first step had run yet (DBOS is the truth)
            pending = DBOS.list_workflows(status="PENDING", executor_id=peer, workflow_id_prefix="op-",
                                          load_input=False, load_output=False)
            for wf in pending:
                op_id, _, run = wf.workflow_id.rpartition(".")
                if not run.isdigit():
                    continue
                with self.store.tx() as c:
                    row = c.execute(sa.select(ops.c.type, ops.c.executor_id).where(ops.c.id == op_id)).first()
                    if row is None or row[0] not in self._registry:
                        continue
                    op_type, owner = row[0], row[1]
                    if owner is not None and owner != peer and owner not in dead:
                        continue  # a live coordinator (maybe another survivor) has it
                    # compare-and-set on the owner read above: one survivor wins
                    owner_is = ops.c.executor_id.is_(None) if owner is None else ops.c.executor_id == owner
                    won = c.execute(sa.update(ops).where(
                        ops.c.id == op_id, ops.c.run_no == int(run), ops.c.state.in_(_ACTIVE), owner_is
                    ).values(executor_id=me)).rowcount
                if not won:
                    continue
                try:
                    DBOS.resume_workflow(wf.workflow_id, queue_name=f"frieze_{op_type}")
                except Exception as e:
                    log.warning("takeover of %s from %s failed: %s", wf.workflow_id, peer, e)
                    continue
                self.store.add_log(op_id, "warning", None, f"coordinator {peer} is silent; {me} takes over")
                taken += 1
            if not pending:
                with self.store.tx() as c:
                    c.execute(sa.delete(peers).where(peers.c.executor_id == peer, peers.c.last_seen < cutoff))
        return taken

    def _janitor_loop(self) -> None:
        self._loop(self.config.janitor_interval_s, self.janitor)
