"""In-process tests of the engine on a real SQLite (WAL) database: API, bad input, failure and undo, cancel at
every step, pause and resume, admission rules, duplicate detection, diagnostics, janitor."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from frieze.engine import (
    Engine,
    EngineConfig,
    InvalidArgs,
    Limit,
    LimitExceeded,
    Limits,
    OpFinished,
    OpNotFound,
    OpState,
    UnknownOpType,
)
from tests.engine import flows
from tests.engine.flows import ALL, ARRIVED, GATES, Ledger, expected_effects, gate

MakeEngine = Callable[..., Engine]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(str(tmp_path / "ledger.sqlite"))


@pytest.fixture
def mk(tmp_path: Path) -> Iterator[MakeEngine]:
    engines: list[Engine] = []

    def make(**cfg: Any) -> Engine:
        cfg.setdefault("dispatch_interval_s", 0.05)
        cfg.setdefault("queue_poll_s", 0.05)
        e = Engine(EngineConfig(database_url=f"sqlite:///{tmp_path}/engine.sqlite", **cfg), ALL)
        e.start()
        flows.CANCEL = e.cancel
        engines.append(e)
        return e

    yield make
    for ev in list(GATES.values()):
        ev.set()
    for e in engines:
        e.shutdown()
    GATES.clear()
    ARRIVED.clear()
    flows.CANCEL = None


def _count_ops(e: Engine) -> int:
    return len(e.list(limit=10_000))


def wait_state(e: Engine, op_id: str, state: OpState, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while e.status(op_id).state != state:
        assert time.monotonic() < deadline, f"{op_id} stayed {e.status(op_id).state}, wanted {state}"
        time.sleep(0.02)


def test_complete_with_progress_logs_and_variables(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk()
    op = e.submit("five", {"ledger": ledger.path, "tag": "ok"})
    st = e.wait(op, 30)
    assert st.state == OpState.COMPLETE
    assert (st.steps_done, st.steps_total, st.bytes_done, st.bytes_total) == (5, 5, 500, 500)
    assert st.checkpoint == "c5" and st.error is None and st.undo_errors == []
    assert ledger.effects_of(op) == ["s1", "s2", "s3", "s4", "s5"]
    msgs = [ln.message for ln in e.logs(op)]
    assert "s5 done (trail ['s1', 's2', 's3', 's4', 's5'])" in msgs  # variables flow from task to task
    assert msgs[-1] == "operation complete"
    seq = e.logs(op)[2].seq
    assert all(ln.seq > seq for ln in e.logs(op, since=seq))
    assert [s.id for s in e.list(state=OpState.COMPLETE, type="five")] == [op]
    assert e.list(state="queued") == []


def test_bad_input_is_rejected_and_changes_nothing(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk()
    before = _count_ops(e)
    with pytest.raises(UnknownOpType, match="unknown operation type 'nope'"):
        e.submit("nope", {})
    with pytest.raises(InvalidArgs, match="invalid arguments for five: ledger: Field required") as ei:
        e.submit("five", {"tag": "x"})
    assert ei.value.to_dict()["code"] == "engine.invalid_args"
    with pytest.raises(InvalidArgs, match="sleep_s"):
        e.submit("five", {"ledger": ledger.path, "sleep_s": "slow", "token": "hunter22"})
    assert "hunter22" not in json.dumps(ei.value.to_dict())
    with pytest.raises(OpNotFound, match="no operation 'op-missing'"):
        e.cancel("op-missing")
    with pytest.raises(OpNotFound):
        e.status("op-missing")
    with pytest.raises(OpNotFound):
        e.logs("op-missing")
    with pytest.raises(OpNotFound):
        e.diagnostics("op-missing")
    assert _count_ops(e) == before
    assert ledger.rows("attempts") == []


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_failure_at_each_step_runs_undo_from_the_segment_point(mk: MakeEngine, ledger: Ledger, k: int) -> None:
    e = mk()
    op = e.submit("five", {"ledger": ledger.path, "tag": f"f{k}", "fail_at": f"s{k}", "token": "s3cr3t-t0ken"})
    st = e.wait(op, 30)
    assert st.state == OpState.FAILED
    assert st.error is not None and st.error["task"] == f"s{k}" and st.error["type"] == "RuntimeError"
    assert ledger.effects_of(op) == expected_effects(k_fail=k)  # s1..s(k-1), then uk..u1 (u5 for s5)
    assert st.undo_errors == []
    assert st.has_diagnostics
    with tarfile.open(fileobj=io.BytesIO(e.diagnostics(op)), mode="r:gz") as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert {"status.json", "logs.txt", "inputs.json", "steps.json", "versions.json", "environment.json"} <= set(files)
    assert json.loads(files["inputs.json"])["token"] == "<redacted>"
    assert f"task s{k} failed" in files["logs.txt"]
    assert all("s3cr3t-t0ken" not in v for v in files.values())
    assert all("s3cr3t-t0ken" not in ln.message for ln in e.logs(op))
    assert "dbos" in json.loads(files["versions.json"])


def test_failure_late_undoes_everything_in_reverse(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk()
    op = e.submit("five", {"ledger": ledger.path, "fail_at": "s4"})
    st = e.wait(op, 30)
    assert st.state == OpState.FAILED
    assert ledger.effects_of(op) == ["s1", "s2", "s3", "u4", "u3", "u2", "u1"]


def test_failing_undo_task_is_an_undo_error(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk()
    rel, arr = gate("ue:s3")
    op = e.submit("five", {"ledger": ledger.path, "tag": "ue", "block_at": "s3", "fail_at": "u2"})
    assert arr.wait(20)
    e.cancel(op)
    rel.set()
    st = e.wait(op, 30)
    assert st.state == OpState.CANCELED
    assert [u["task"] for u in st.undo_errors] == ["u2"]
    assert ledger.effects_of(op) == ["s1", "s2", "s3", "u3", "u1"]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_cancel_at_every_step(mk: MakeEngine, ledger: Ledger, k: int) -> None:
    """The running task finishes, its checkpoint persists, then undo from that checkpoint's point; the last task
    too: a cancel accepted before the final checkpoint is recorded ends the operation canceled, not complete."""
    e = mk()
    tag = f"c{k}"
    rel, arr = gate(f"{tag}:s{k}")
    op = e.submit("five", {"ledger": ledger.path, "tag": tag, "block_at": f"s{k}"})
    assert arr.wait(20)
    st = e.cancel(op)
    assert st.state == OpState.ABORTING and st.cancel_requested
    rel.set()
    st = e.wait(op, 30)
    assert st.state == OpState.CANCELED
    assert st.checkpoint == f"c{k}"  # the running task's checkpoint was persisted
    assert ledger.effects_of(op) == expected_effects(k_cancel=k)
    assert st.error is None and st.undo_errors == [] and st.finished is not None
    # a second cancel of a canceled op is idempotent: same state, nothing runs again
    again = e.cancel(op)
    assert again.state == OpState.CANCELED and again.finished == st.finished
    time.sleep(0.2)
    assert ledger.effects_of(op) == expected_effects(k_cancel=k)


def test_cancel_after_the_final_checkpoint_is_too_late(mk: MakeEngine, ledger: Ledger) -> None:
    """The final checkpoint completes the operation in the same transaction; a cancel arriving after it (here from
    the checkpoint hook, right after c5 is recorded) finds the operation complete: OpFinished, nothing undone."""
    seen: list[BaseException | None] = []

    def hook(op_id: str, name: str) -> None:
        if name == "c5":
            try:
                e.cancel(op_id)
                seen.append(None)
            except OpFinished as ex:
                seen.append(ex)

    e = mk(on_checkpoint=hook)
    op = e.submit("five", {"ledger": ledger.path, "tag": "late"})
    st = e.wait(op, 30)
    assert st.state == OpState.COMPLETE and not st.cancel_requested
    # the hook runs on the worker thread after c5 is durable, so wait() may see COMPLETE before the hook has run
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(seen) == 1 and isinstance(seen[0], OpFinished)
    assert ledger.effects_of(op) == expected_effects()
    with pytest.raises(OpFinished, match="already complete"):
        e.cancel(op)


def test_cancel_between_tasks_of_one_segment_stops_early(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk()
    rel, arr = gate("ts:s1")
    op = e.submit("twoseg", {"ledger": ledger.path, "tag": "ts", "block_at": "s1"})
    assert arr.wait(20)
    e.cancel(op)
    rel.set()
    st = e.wait(op, 30)
    assert st.state == OpState.CANCELED
    assert ledger.effects_of(op) == ["s1", "u1"]  # s2 never ran; undo from the segment's closing checkpoint


def test_cancel_queued_is_immediate(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk(limits=Limits(per_type={"five": Limit(soft=1)}))
    rel, arr = gate("q1:s1")
    first = e.submit("five", {"ledger": ledger.path, "tag": "q1", "block_at": "s1"})
    assert arr.wait(20)
    second = e.submit("five", {"ledger": ledger.path, "tag": "q2"})
    time.sleep(0.3)
    assert e.status(second).state == OpState.QUEUED
    st = e.cancel(second)
    assert st.state == OpState.CANCELED and st.finished is not None
    rel.set()
    assert e.wait(first, 30).state == OpState.COMPLETE
    time.sleep(0.3)
    assert e.status(second).state == OpState.CANCELED
    assert ledger.attempts_of(second) == []


def test_pause_gives_back_the_worker_and_resumes_from_last_checkpoint(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk(pools={"five": 1})
    # paused long enough for a whole other operation to run on a loaded machine
    op = e.submit("five", {"ledger": ledger.path, "tag": "p", "pause_at": "s3", "pause_s": 5.0})
    wait_state(e, op, OpState.PAUSED)
    st = e.status(op)
    assert st.checkpoint == "c2" and st.bytes_done == 1
    # the only worker of the pool is free: another operation runs to the end meanwhile
    other = e.submit("five", {"ledger": ledger.path, "tag": "p-other"})
    assert e.wait(other, 30).state == OpState.COMPLETE
    assert e.status(op).state == OpState.PAUSED
    st = e.wait(op, 30)
    assert st.state == OpState.COMPLETE
    assert ledger.attempts_of(op) == ["s1", "s2", "s3", "s3", "s4", "s5"]  # only the paused task ran again
    assert ledger.effects_of(op) == ["s1", "s2", "s3", "s4", "s5"]
    assert any("paused; looking again in 5 s" in ln.message for ln in e.logs(op))


def test_cancel_while_paused_runs_undo(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk()
    op = e.submit("five", {"ledger": ledger.path, "tag": "pc", "pause_at": "s3", "pause_s": 30.0})
    wait_state(e, op, OpState.PAUSED)
    assert e.cancel(op).state == OpState.ABORTING
    st = e.wait(op, 20)
    assert st.state == OpState.CANCELED
    assert ledger.effects_of(op) == ["s1", "s2", "u3", "u2", "u1"]


def test_hard_limits_reject_with_clear_error(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk(limits=Limits(per_type={"backup": Limit(hard=2)}, per_type_target={"restore": Limit(hard=1)},
                         per_host=Limit(hard=3)))
    rel, _ = gate("h:s1")
    base = {"ledger": ledger.path, "block_at": "s1", "tag": "h"}
    e.submit("backup", {**base, "host": "a", "target": "r1", "sleep_s": 0.0})
    e.submit("backup", {**base, "host": "b", "target": "r1", "sleep_s": 0.01})
    n = _count_ops(e)
    with pytest.raises(LimitExceeded, match=r"backup rejected: hard limit per_type backup reached \(2 active"):
        e.submit("backup", {**base, "host": "c", "sleep_s": 0.02})
    e.submit("restore", {**base, "host": "a", "target": "r1"})
    with pytest.raises(LimitExceeded, match="per_type_target restore/r1"):
        e.submit("restore", {**base, "host": "c", "target": "r1", "sleep_s": 0.03})
    e.submit("restore", {**base, "host": "a", "target": "r2"})  # another target is fine
    with pytest.raises(LimitExceeded, match="per_host a") as ei:
        e.submit("restore", {**base, "host": "a", "target": "r3"})
    assert ei.value.retryable and ei.value.to_dict()["code"] == "engine.limit_exceeded"
    assert _count_ops(e) == n + 2
    rel.set()


def _max_overlap(ledger: Ledger, ops: list[str]) -> int:
    """Largest number of the operations whose [first attempt, last effect] intervals overlap."""
    spans = []
    for op in ops:
        att = [r[4] for r in ledger.rows("attempts") if r[1] == op]
        eff = [r[3] for r in ledger.rows("effects") if r[1] == op]
        spans.append((min(att), max(eff)))
    events = sorted([(s, 1) for s, _ in spans] + [(t, -1) for _, t in spans])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_soft_limit_per_type_waits_in_queue_in_order(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk(limits=Limits(per_type={"backup": Limit(soft=1)}))
    rel, arr = gate("s0:s1")  # the first holds its slot until the others are seen queued
    ops = [e.submit("backup", {"ledger": ledger.path, "tag": f"s{i}", "sleep_s": 0.05,
                               **({"block_at": "s1"} if i == 0 else {})}) for i in range(4)]
    assert arr.wait(20)
    states = {e.status(o).state for o in ops[1:]}
    rel.set()
    assert states == {OpState.QUEUED}
    for o in ops:
        assert e.wait(o, 60).state == OpState.COMPLETE
    assert _max_overlap(ledger, ops) == 1
    first_attempt = {o: min(r[4] for r in ledger.rows("attempts") if r[1] == o) for o in ops}
    assert sorted(ops, key=lambda o: first_attempt[o]) == ops  # queue order


def test_soft_limit_per_type_target_and_per_host(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk(limits=Limits(per_type_target={"backup": Limit(soft=1)}, per_host=Limit(soft=1)),
           pools={"backup": 4})
    a = [e.submit("backup", {"ledger": ledger.path, "tag": f"t{i}", "target": "r1", "host": f"h{i}",
                             "sleep_s": 0.05}) for i in range(2)]
    b = [e.submit("backup", {"ledger": ledger.path, "tag": f"u{i}", "target": f"r{i + 2}", "host": "hx",
                             "sleep_s": 0.05}) for i in range(2)]
    gates = [gate(f"v{i}:s1") for i in range(2)]  # each waits at s1 until both are there: they run side by side
    c = [e.submit("backup", {"ledger": ledger.path, "tag": f"v{i}", "target": f"r{i + 5}", "host": f"hv{i}",
                             "sleep_s": 0.05, "block_at": "s1"}) for i in range(2)]
    try:
        assert all(arr.wait(30) for _rel, arr in gates), "the two independent backups were not running together"
    finally:
        for rel, _arr in gates:
            rel.set()
    for o in a + b + c:
        assert e.wait(o, 60).state == OpState.COMPLETE
    assert _max_overlap(ledger, a) == 1  # same target
    assert _max_overlap(ledger, b) == 1  # same host
    assert _max_overlap(ledger, c) == 2  # different targets and hosts run side by side


def test_busy_resource_delays(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk(limits=Limits(busy_delay_s=0.5))
    rel, arr = gate("x1:s2")
    first = e.submit("five", {"ledger": ledger.path, "tag": "x1", "exclusive": ["vol:db01"], "block_at": "s2"})
    assert arr.wait(20)
    second = e.submit("five", {"ledger": ledger.path, "tag": "x2", "exclusive": ["vol:db01"]})
    free = e.submit("five", {"ledger": ledger.path, "tag": "x3", "exclusive": ["vol:db02"]})
    assert e.wait(free, 30).state == OpState.COMPLETE
    assert e.status(second).state == OpState.QUEUED
    assert any("resource vol:db01 is busy; trying again in 0.5 s" in ln.message for ln in e.logs(second))
    rel.set()
    assert e.wait(second, 30).state == OpState.COMPLETE
    assert min(r[4] for r in ledger.rows("attempts") if r[1] == second) >= max(
        r[3] for r in ledger.rows("effects") if r[1] == first)


def test_counted_resources_are_exact_and_work_conserving(mk: MakeEngine, ledger: Ledger) -> None:
    """At most ``limit`` admitted holders of a counted key, each operation bringing its own limit: two blocked
    holders of ``host:h`` (limit 2) keep a third waiting; a narrower one (limit 1) waits too; when one holder
    finishes, the next in line is admitted at once (no binding to a slot)."""
    e = mk(pools={"five": 6})
    rel1, arr1 = gate("c1:s2")
    rel2, arr2 = gate("c2:s2")
    c1 = e.submit("five", {"ledger": ledger.path, "tag": "c1", "counted": [["host:h", 2]], "block_at": "s2"})
    c2 = e.submit("five", {"ledger": ledger.path, "tag": "c2", "counted": [["host:h", 2], ["repo:r", 5]],
                           "block_at": "s2"})
    assert arr1.wait(20) and arr2.wait(20)
    c3 = e.submit("five", {"ledger": ledger.path, "tag": "c3", "counted": [["host:h", 2]]})
    narrow = e.submit("five", {"ledger": ledger.path, "tag": "c4", "counted": [["host:h", 1]]})
    other = e.submit("five", {"ledger": ledger.path, "tag": "c5", "counted": [["host:g", 1], ["repo:r", 5]]})
    assert e.wait(other, 30).state == OpState.COMPLETE  # another key is not held back
    time.sleep(1.0)
    assert e.status(c3).state == OpState.QUEUED and e.status(narrow).state == OpState.QUEUED
    assert e.status(c3).resources.counted == (("host:h", 2),)
    rel1.set()
    assert e.wait(c1, 30).state == OpState.COMPLETE
    assert e.wait(c3, 30).state == OpState.COMPLETE  # admitted as soon as one of the two holders finished
    assert e.status(narrow).state == OpState.QUEUED  # c2 still holds host:h and c4 allows only one
    rel2.set()
    assert e.wait(c2, 30).state == OpState.COMPLETE
    assert e.wait(narrow, 30).state == OpState.COMPLETE
    assert _max_overlap(ledger, [c1, c2, c3]) == 2


def test_separate_pools_restores_not_starved(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk(pools={"backup": 1, "restore": 1})
    rel, arr = gate("pb:s1")
    b1 = e.submit("backup", {"ledger": ledger.path, "tag": "pb", "block_at": "s1"})
    assert arr.wait(20)
    b2 = e.submit("backup", {"ledger": ledger.path, "tag": "pb2"})
    r = e.submit("restore", {"ledger": ledger.path, "tag": "pr"})
    assert e.wait(r, 30).state == OpState.COMPLETE  # while the backup pool is fully busy
    assert e.status(b2).state == OpState.QUEUED
    rel.set()
    assert e.wait(b1, 30).state == OpState.COMPLETE and e.wait(b2, 30).state == OpState.COMPLETE


def test_duplicate_detection_under_concurrent_requests(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk()
    rel, _arr = gate("d:s1")
    args = {"ledger": ledger.path, "tag": "d", "block_at": "s1"}
    ids: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def go() -> None:
        start.wait()
        i = e.submit("five", dict(args))
        with lock:
            ids.append(i)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert len(e.list(type="five")) == 1
    other = e.submit("five", {**args, "tag": "d2", "block_at": None})
    assert other != ids[0]
    rel.set()
    assert e.wait(ids[0], 30).state == OpState.COMPLETE
    again = e.submit("five", dict(args))  # finished: the same request is a new operation
    assert again != ids[0]
    rel.set()
    assert e.wait(again, 30).state == OpState.COMPLETE
    print(f"RESULT ENG-DEDUP concurrent_requests=8 distinct_ids={len(set(ids))}")


def test_janitor_reclaims_old_finished_operations(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk()
    done = e.submit("five", {"ledger": ledger.path, "tag": "j1", "fail_at": "s2"})
    assert e.wait(done, 30).state == OpState.FAILED
    rel, arr = gate("j2:s1")
    live = e.submit("five", {"ledger": ledger.path, "tag": "j2", "block_at": "s1"})
    assert arr.wait(20)
    from dbos import DBOS

    assert e.janitor(older_than_s=3600) == 0
    assert len(DBOS.list_workflows(workflow_ids=[f"{done}.1"])) == 1
    assert e.janitor(older_than_s=0) == 1
    with pytest.raises(OpNotFound):
        e.status(done)
    assert DBOS.list_workflows(workflow_ids=[f"{done}.1"]) == []  # DBOS's rows are reclaimed too
    assert e.status(live).state == OpState.RUNNING
    rel.set()
    assert e.wait(live, 30).state == OpState.COMPLETE


def test_second_engine_in_process_is_refused(mk: MakeEngine) -> None:
    from frieze.core.errors import UsageError

    e = mk()
    other = Engine(EngineConfig(database_url=e.config.database_url), ALL)
    with pytest.raises(UsageError, match="already started"):
        other.start()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    from tests.support.pg import pg_available, start_postgres

    if not pg_available():
        pytest.skip("PostgreSQL 15 binaries not installed")
    inst = start_postgres(None)  # under /tmp: concurrent pytest runs chmod 0700 pytest-of-<user>
    try:
        yield inst.create_database("engine_inproc")
    finally:
        inst.stop()


def test_postgresql_backend_semantics(pg_url: str, tmp_path: Path) -> None:
    """The same semantics on PostgreSQL: complete, failure + undo + diagnostics, cancel mid-way, pause and resume,
    soft limit in queue order, duplicate detection under concurrency, hard limit."""
    led = Ledger(str(tmp_path / "ledger.sqlite"))
    e = Engine(EngineConfig(database_url=pg_url, dispatch_interval_s=0.05, queue_poll_s=0.05,
                            limits=Limits(per_type={"restore": Limit(soft=1, hard=3)})), ALL)
    e.start()
    try:
        ok = e.submit("five", {"ledger": led.path, "tag": "pg-ok"})
        bad = e.submit("five", {"ledger": led.path, "tag": "pg-bad", "fail_at": "s3"})
        paused = e.submit("five", {"ledger": led.path, "tag": "pg-p", "pause_at": "s2", "pause_s": 0.5})
        rel, arr = gate("pg-c:s3")
        canc = e.submit("five", {"ledger": led.path, "tag": "pg-c", "block_at": "s3"})
        assert arr.wait(30)
        assert e.cancel(canc).state == OpState.ABORTING
        rel.set()
        assert e.wait(ok, 30).state == OpState.COMPLETE
        st = e.wait(bad, 30)
        assert st.state == OpState.FAILED and st.has_diagnostics
        assert led.effects_of(bad) == ["s1", "s2", "u3", "u2", "u1"]
        assert e.wait(canc, 30).state == OpState.CANCELED
        assert led.effects_of(canc) == ["s1", "s2", "s3", "u3", "u2", "u1"]
        assert e.wait(paused, 30).state == OpState.COMPLETE
        assert led.attempts_of(paused) == ["s1", "s2", "s2", "s3", "s4", "s5"]
        rel_r, arr_r = gate("pg-r0:s1")  # the first is held, so all three are active when the fourth comes
        rs = [e.submit("restore", {"ledger": led.path, "tag": f"pg-r{i}", "sleep_s": 0.05,
                                   **({"block_at": "s1"} if i == 0 else {})}) for i in range(3)]
        try:
            with pytest.raises(LimitExceeded):
                e.submit("restore", {"ledger": led.path, "tag": "pg-r9"})
        finally:
            rel_r.set()
        assert arr_r.wait(30)
        for r in rs:
            assert e.wait(r, 60).state == OpState.COMPLETE
        assert _max_overlap(led, rs) == 1
        ids: list[str] = []
        barrier = threading.Barrier(6)

        rel_d, _arr_d = gate("pg-dup:s1")  # held until every thread has submitted: none finds it finished

        def go() -> None:
            barrier.wait()
            ids.append(e.submit("five", {"ledger": led.path, "tag": "pg-dup", "sleep_s": 0.2, "block_at": "s1"}))

        threads = [threading.Thread(target=go) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rel_d.set()
        assert len(set(ids)) == 1
        assert e.wait(ids[0], 30).state == OpState.COMPLETE
    finally:
        for ev in list(GATES.values()):
            ev.set()
        e.shutdown()


def test_engine_step_errors_are_retried_then_reported_not_stuck(mk: MakeEngine, ledger: Ledger,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A transient database error in an engine step is retried (the operation completes); a persistent one
    marks the operation failed with an internal error and a diagnostic bundle instead of leaving it running."""
    import sqlalchemy.exc

    from frieze.engine import runner

    real = runner.Runner._s_checkpoint
    calls: dict[str, int] = {}

    def flaky(self: runner.Runner, i: int, vars_json: str) -> dict[str, Any]:
        calls[self.op_id] = calls.get(self.op_id, 0) + 1
        args = json.loads(self.store.get(self.op_id)["args_json"])  # type: ignore[index]
        if args["tag"] == "transient" and calls[self.op_id] == 2:
            raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("database is restarting"))
        if args["tag"] == "broken" and i >= 3:
            raise RuntimeError("engine bug")
        return real(self, i, vars_json)

    monkeypatch.setattr(runner.Runner, "_s_checkpoint", flaky)
    monkeypatch.setattr(runner, "STEP_ATTEMPTS", 2)
    e = mk()
    ok = e.submit("five", {"ledger": ledger.path, "tag": "transient"})
    assert e.wait(ok, 30).state == OpState.COMPLETE
    assert ledger.effects_of(ok) == ["s1", "s2", "s3", "s4", "s5"]
    bad = e.submit("five", {"ledger": ledger.path, "tag": "broken"})
    st = e.wait(bad, 30)
    assert st.state == OpState.FAILED and st.error is not None
    assert st.error["code"] == "internal" and "undo path did not run" in st.error["message"]
    assert st.has_diagnostics


def test_janitor_thread_runs_by_itself(mk: MakeEngine, ledger: Ledger) -> None:
    e = mk(retention_s=0.5, janitor_interval_s=0.5)
    op = e.submit("five", {"ledger": ledger.path, "tag": "jt"})
    assert e.wait(op, 30).state == OpState.COMPLETE
    deadline = time.monotonic() + 20
    while True:
        try:
            e.status(op)
        except OpNotFound:
            break
        assert time.monotonic() < deadline, "the janitor thread did not reclaim the finished operation"
        time.sleep(0.2)


def test_failed_start_leaves_no_singleton_behind(tmp_path: Path, ledger: Ledger) -> None:
    """A start that fails (unreachable PostgreSQL) raises and a later engine starts cleanly with its own config."""
    from tests.support.ports import free_port

    bad = Engine(EngineConfig(database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/nope"), ALL)
    from frieze.core.errors import StorageError

    with pytest.raises(StorageError, match="cannot open the engine database") as ei:
        bad.start()
    assert "nobody" not in str(ei.value)
    bad.shutdown()
    good = Engine(EngineConfig(database_url=f"sqlite:///{tmp_path}/good.sqlite"), ALL)
    good.start()
    try:
        op = good.submit("five", {"ledger": ledger.path})
        assert good.wait(op, 30).state == OpState.COMPLETE
    finally:
        good.shutdown()
