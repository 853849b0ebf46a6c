"""Crash tests: coordinator processes (tests/engine/driver.py) killed with SIGKILL at every checkpoint boundary
of a five-step workflow and at random times, on SQLite and on a private PostgreSQL; takeover between two
coordinators on one PostgreSQL. Side effects are counted in a separate ledger (tests/engine/flows.py)."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from frieze.engine.store import normalize_pg_url, ops
from tests.engine.driver import forked_main
from tests.engine.flows import Ledger, expected_effects
from tests.support.pg import PgInstance, pg_available, start_postgres

RANDOM_KILLS = int(os.environ.get("FRIEZE_C8_RANDOM_KILLS", "50"))


@pytest.fixture(scope="module")
def pg() -> Iterator[PgInstance]:
    if not pg_available():
        pytest.skip("PostgreSQL 15 binaries not installed")
    inst = start_postgres(None)  # under /tmp: concurrent pytest runs chmod 0700 pytest-of-<user>
    yield inst
    inst.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/engine.sqlite"
    inst: PgInstance = request.getfixturevalue("pg")
    return inst.create_database(f"eng_{tmp_path.name.lower().replace('-', '_')[:40]}_{random.randrange(10**6)}")


class Coordinator:
    """A coordinator process forked from the test process (``tests.engine.driver.forked_main``).

    Forking keeps a restart cheap (no re-import of SQLAlchemy and DBOS, seconds on a loaded machine); the child
    is a separate process with its own DBOS singleton, killed with a real SIGKILL."""

    def __init__(self, args: list[str], log: Path) -> None:
        ctx = multiprocessing.get_context("fork")
        self._parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=forked_main, args=(args, child, str(log)), daemon=True)
        self.proc.start()
        child.close()

    def wait_ready(self, timeout: float = 90) -> bool:
        """True once the engine is started; False if the process exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._parent.poll(0.05):
                try:
                    return bool(self._parent.recv() == "ready")
                except EOFError:
                    return False
            if not self.proc.is_alive():
                return False
        raise AssertionError("coordinator did not become ready")

    def kill(self) -> None:
        if self.proc.pid is not None and self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)

    def terminate(self) -> None:
        if self.proc.pid is not None and self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        self.proc.join(timeout)
        return self.proc.exitcode

    def close(self) -> None:
        self.kill()
        self.proc.join(10)
        self._parent.close()


def db_ops(url: str) -> list[dict[str, Any]]:
    eng = sa.create_engine(normalize_pg_url(url))
    try:
        with eng.connect() as c:
            return [dict(r) for r in c.execute(sa.select(ops).order_by(ops.c.created)).mappings()]
    finally:
        eng.dispose()


@dataclass
class Kill:
    t_kill: float
    t_respawn: float
    t_ready: float = 0.0
    running: list[str] = field(default_factory=list)
    random: bool = False


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def crash_loop(url: str, tmp: Path, plan: list[dict[str, Any]], *, sleep: float, pool: int, random_kills: int = 0,
               seed: int = 1, wait_s: tuple[float, float] = (0.05, 0.9)) -> Run:
    """Run the driver on ``plan`` (one ``five`` operation per entry) until every operation is final, killing it with
    SIGKILL: at the operations' own kill points (``kill_after``), and ``random_kills`` times at a random moment
    (uniform in ``wait_s`` seconds after the restarted coordinator is ready)."""
    t_start = time.time()
    led = Ledger(str(tmp / "ledger.sqlite"))
    log = tmp / "driver.log"
    plan_file = tmp / "plan.json"
    plan_file.write_text(json.dumps(plan))
    base = ["--db", url, "--ledger", led.path, "--ops-file", str(tmp / "ops.json"), "--pool", str(pool),
            "--sleep", str(sleep)]
    # while random kills remain the coordinator serves on when idle (so every kill is made); then it exits when idle
    idle = [] if random_kills else ["--until-idle"]
    args = [*base, *idle, "--plan", str(plan_file)]
    rng = random.Random(seed)
    kills: list[Kill] = []
    pending: Kill | None = None
    point_kills = sum(1 for p in plan if p.get("kill_after"))
    for _ in range(point_kills + random_kills + 10):
        t_spawn = time.time()
        if pending is not None:
            pending.t_respawn = t_spawn
            kills.append(pending)
            pending = None
        random_left = random_kills - sum(k.random for k in kills)
        if random_kills and random_left <= 0:
            args = [a for a in args if a != "--until-idle"] + ["--until-idle"]
        p = Coordinator(args, log)
        args = [*base, *idle]
        rc: int | None = None
        ready = p.wait_ready()
        if kills and kills[-1].t_respawn == t_spawn:
            kills[-1].t_ready = time.time() if ready else kills[-1].t_respawn
        if random_left > 0:
            if ready:
                time.sleep(rng.uniform(*wait_s))
            was_alive = p.proc.is_alive()
            p.kill()
            rc = p.wait(60)
            is_random = was_alive
        else:
            rc = p.wait(240)
            is_random = False
        p.close()
        if rc == -signal.SIGKILL:
            t_kill = time.time()
            running = [r["id"] for r in db_ops(url) if r["state"] in ("running", "aborting")]
            pending = Kill(t_kill=t_kill, t_respawn=0.0, running=running, random=is_random)
            continue
        assert rc == 0, f"driver exited with {rc}; see {log}: {log.read_text()[-3000:]}"
        break
    rows = db_ops(url)
    stuck = sum(1 for r in rows if r["state"] not in ("complete", "failed", "canceled"))
    ids = json.loads((tmp / "ops.json").read_text())
    return Run(kills=kills, led=led, rows={r["id"]: r for r in rows}, stuck=stuck, ids=ids, plan=plan,
               url=url, wall_s=time.time() - t_start, drain_s=time.time() - (kills[-1].t_kill if kills else t_start))


@dataclass
class Run:
    """What a crash loop left: the kills, the ledger, the operations' rows by id, in submission order."""

    kills: list[Kill]
    led: Ledger
    rows: dict[str, dict[str, Any]]
    stuck: int
    ids: list[str]
    plan: list[dict[str, Any]]
    wall_s: float = 0.0
    drain_s: float = 0.0
    url: str = ""

    def resume_times(self, from_ready: bool = False) -> list[float]:
        """Per (kill, running op): time from the kill (or from the restarted coordinator being ready) to the op's
        first task attempt (or finish) after the restart."""
        attempts = self.led.rows("attempts")
        out: list[float] = []
        for k in self.kills:
            for op in k.running:
                ts = [r[4] for r in attempts if r[1] == op and r[4] > k.t_respawn]
                fin = self.rows[op]["finished"] if op in self.rows else None
                if fin and fin > k.t_respawn:
                    ts.append(fin)
                if ts:
                    out.append(min(ts) - (k.t_ready if from_ready else k.t_kill))
        return out

    def unexplained_reruns(self) -> list[tuple[str, float, float]]:
        """Re-runs of a task body with no coordinator kill between the previous attempt and this one: a task run
        twice by the engine itself (not allowed; crash plans have no pause)."""
        by_key: dict[str, list[float]] = {}
        for r in self.led.rows("attempts"):
            by_key.setdefault(r[0], []).append(r[4])
        out = []
        for key, ts in by_key.items():
            for t0, t1 in itertools.pairwise(sorted(ts)):
                if not any(t0 < k.t_kill < t1 for k in self.kills):
                    out.append((key, t0, t1))
        return out

    def expected(self, i: int) -> tuple[str, list[str]]:
        """(final state, applied effects in order) that operation ``i`` of the plan must end with."""
        p = self.plan[i]
        if p.get("fail_at"):
            return "failed", expected_effects(k_fail=int(p["fail_at"][1:]))
        if p.get("cancel_at"):
            return "canceled", expected_effects(k_cancel=int(p["cancel_at"][1:]))
        return "complete", expected_effects()

    def wrong(self) -> list[dict[str, Any]]:
        """Operations that did not reach the state and the effects they must, with what they did instead."""
        out = []
        for i, op in enumerate(self.ids):
            state, effects = self.expected(i)
            row = self.rows[op]
            if row["state"] == state and self.led.effects_of(op) == effects:
                continue
            out.append({"i": i, "op": op, "plan": self.plan[i], "state": row["state"], "want": state,
                        "effects": self.led.effects_of(op), "want_effects": effects,
                        "attempts": self.led.attempts_of(op), "error": row["error_json"],
                        "log": _op_logs(self.url, op) if self.url else []})
        return out

    def resumed(self) -> int:
        """Operations that reached the state and the effects they must (the kills changed nothing)."""
        return len(self.ids) - len(self.wrong())

    def check(self) -> None:
        for i, op in enumerate(self.ids):
            state, effects = self.expected(i)
            row = self.rows[op]
            assert row["state"] == state, (i, self.plan[i], row)
            assert self.led.effects_of(op) == effects, (i, self.plan[i], self.led.effects_of(op))
            if state == "failed":
                err = json.loads(row["error_json"])
                assert err["task"] == self.plan[i]["fail_at"] and json.loads(row["undo_errors_json"]) == [], row
        assert self.unexplained_reruns() == []

    def result(self, name: str, mode: str, backend: str) -> str:
        line = (f"RESULT {name} mode={mode} backend={backend} kills={len(self.kills)} "
                f"resumed={self.resumed()}/{len(self.ids)} duplicate_side_effects={self.led.duplicates()} "
                f"stuck={self.stuck} resume_p99_s={percentile(self.resume_times(), 99):.2f} "
                f"resume_after_ready_p99_s={percentile(self.resume_times(from_ready=True), 99):.2f} "
                f"reruns={self.led.reruns()} absorbed={self.led.absorbed()} "
                f"unexplained_reruns={len(self.unexplained_reruns())} "
                f"kills_with_ops_running={sum(1 for k in self.kills if k.running)} wall_s={self.wall_s:.1f} "
                f"after_last_kill_s={self.drain_s:.1f}")
        print(line)
        return line


def _backend(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def test_c8_kill_at_every_checkpoint_boundary(db_url: str, tmp_path: Path) -> None:
    """Ten operations run one at a time; operation i kills the coordinator at boundary i: right after the side
    effect of task k (before its checkpoint) or right after checkpoint ck is recorded, for k = 1..5."""
    points = [p for k in range(1, 6) for p in (f"effect:s{k}", f"checkpoint:c{k}")]
    run = crash_loop(db_url, tmp_path, [{"kill_after": p} for p in points], sleep=0.0, pool=1)
    run.result("C8", "boundaries", _backend(db_url))
    led = run.led
    assert len(run.kills) == len(points) and run.stuck == 0 and led.duplicates() == 0
    assert run.resumed() == len(run.ids) == len(points)
    run.check()
    # each kill after a side effect re-runs exactly that task once, and the re-run finds its effect applied
    assert led.reruns() == 5 and led.absorbed() == 5
    for op_id, point in zip(run.ids, points, strict=True):
        attempts = led.attempts_of(op_id)
        kind, where = point.split(":")
        k = int(where[1:])
        if kind == "checkpoint":  # the checkpoint was recorded: no task runs again
            assert attempts == ["s1", "s2", "s3", "s4", "s5"], (point, attempts)
        else:  # killed between the side effect and the checkpoint: that task (only) runs again
            expected = [f"s{j}" for j in range(1, 6)]
            expected.insert(k, f"s{k}")
            assert attempts == expected, (point, attempts)
    # in queue order: with one worker, operations finish in the order they were submitted
    fin = sorted(run.rows.values(), key=lambda r: r["finished"])
    assert [r["id"] for r in fin] == run.ids


#: Undo-path boundaries: right after a step is recorded, or right after an undo task's side effect (before its
#: step is recorded). The op fails in s3 (or is canceled during s3), so the undo path is u3, u2, u1.
UNDO_POINTS = ["begin_undo", "effect:u3", "undo:u3", "effect:u2", "undo:u2", "effect:u1", "undo:u1", "finish"]


@pytest.mark.parametrize("mode", ["failed", "canceled"])
def test_c8_kill_at_every_undo_boundary(db_url: str, tmp_path: Path, mode: str) -> None:
    """An operation fails in s3 (or asks for its own cancel during s3); operation i kills the coordinator at
    boundary i of the undo path: after the failing (or last) task's step, after its checkpoint (cancel), after
    the undo is begun, after each undo task's side effect and after its step, after the final state. After the
    restart each undo task's effect is applied exactly once and the op ends failed (canceled)."""
    if mode == "failed":
        points = ["task:s3", *UNDO_POINTS]
        plan = [{"kill_after": p, "fail_at": "s3"} for p in points]
    else:
        points = ["task:s3", "checkpoint:c3", *UNDO_POINTS]
        plan = [{"kill_after": p, "cancel_at": "s3"} for p in points]
    run = crash_loop(db_url, tmp_path, plan, sleep=0.0, pool=1)
    run.result("C8-undo", mode, _backend(db_url))
    led = run.led
    assert len(run.kills) == len(points) and run.stuck == 0 and led.duplicates() == 0
    assert run.resumed() == len(run.ids) == len(points)
    run.check()
    effect_kills = [p for p in points if p.startswith("effect:")]
    assert led.reruns() == len(effect_kills) and led.absorbed() == len(effect_kills)
    for op_id, point in zip(run.ids, points, strict=True):
        expected = ["s1", "s2", "s3", "u3", "u2", "u1"]
        if point.startswith("effect:"):  # killed between an undo effect and its step: that undo task runs again
            expected.insert(expected.index(point[7:]) + 1, point[7:])
        assert led.attempts_of(op_id) == expected, (point, led.attempts_of(op_id))
        if mode == "failed":
            assert run.rows[op_id]["checkpoint"] == "c2"
        else:
            assert run.rows[op_id]["checkpoint"] == "c3" and run.rows[op_id]["cancel_requested"] == 1


def random_plan(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` operations: a quarter fail in a random task, a quarter cancel themselves during one, half complete.
    Each task sleeps 0.1 s before and 0.1 s after its side effect, so kills land on both sides of it."""
    rng = random.Random(seed)
    plan: list[dict[str, Any]] = []
    for _ in range(n):
        r = rng.random()
        k = f"s{rng.randint(1, 5)}"
        kind = {"fail_at": k} if r < 0.25 else {"cancel_at": k} if r < 0.5 else {}
        plan.append({**kind, "sleep_s": 0.1, "sleep_after_s": 0.1})
    return plan


def _random(db_url: str, tmp_path: Path, n_kills: int) -> None:
    plan = random_plan(max(8, n_kills * 3 // 5 + 6), seed=n_kills)
    run = crash_loop(db_url, tmp_path, plan, sleep=0.1, pool=2, random_kills=n_kills, seed=n_kills)
    run.result("C8", "random", _backend(db_url))
    led = run.led
    assert sum(k.random for k in run.kills) == n_kills and run.stuck == 0 and led.duplicates() == 0
    assert run.wrong() == []
    run.check()
    # every re-run is one interrupted by a kill: at most one task in flight per running operation per kill
    assert led.reruns() <= sum(len(k.running) for k in run.kills)


def test_c8_random_kills(db_url: str, tmp_path: Path) -> None:
    """50 kills at random moments (``FRIEZE_C8_RANDOM_KILLS`` to change) while ops run forward and undo paths."""
    _random(db_url, tmp_path, RANDOM_KILLS)


@pytest.mark.heavy
def test_c8_random_kills_soak(db_url: str, tmp_path: Path) -> None:
    _random(db_url, tmp_path, 200)


def test_ledger_detects_double_application(tmp_path: Path) -> None:
    """The measure can fail: the same kill after a side effect, once with the flow's key check and once without
    (``naive``): the naive re-run applies the effect a second time and the ledger counts it."""
    url = f"sqlite:///{tmp_path}/engine.sqlite"
    run = crash_loop(url, tmp_path, [{"kill_after": "effect:s2"}, {"kill_after": "effect:s2", "naive": True}],
                     sleep=0.0, pool=1)
    good, naive = run.ids
    print(f"RESULT C8-ledger-selftest kills={len(run.kills)} duplicate_side_effects={run.led.duplicates()} "
          f"absorbed={run.led.absorbed()}")
    assert len(run.kills) == 2 and run.stuck == 0
    assert run.led.effects_of(good) == ["s1", "s2", "s3", "s4", "s5"]
    assert run.led.effects_of(naive) == ["s1", "s2", "s2", "s3", "s4", "s5"]
    assert run.led.duplicates() == 1 and run.led.absorbed() == 1


def check_effects(led: Ledger, rows: list[dict[str, Any]]) -> None:
    """Every operation complete, each of its five effects applied once, in order."""
    for r in rows:
        assert r["state"] == "complete", r
        assert led.effects_of(r["id"]) == expected_effects(), r["id"]


def _wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_c9_takeover_between_two_coordinators(pg: PgInstance, tmp_path: Path) -> None:
    """Coordinator A runs three operations; B and C run beside it on the same PostgreSQL; A is killed with
    SIGKILL. The survivors must take A's operations over (peer silent for peer_timeout_s = 10 s), each operation
    exactly once, and finish them, each effect once."""
    url = pg.create_database(f"takeover_{random.randrange(10**6)}")
    led = Ledger(str(tmp_path / "ledger.sqlite"))
    common = ["--db", url, "--ledger", led.path, "--pool", "4", "--peer-timeout", "10"]
    # 2 s a task (10 s an operation): A's operations still run once B and C have started beside it, on a loaded
    # machine too
    a = Coordinator([*common, "--executor", "coord-A", "--ops-file", str(tmp_path / "ops.json"), "--submit", "3",
                     "--sleep", "2.0"], tmp_path / "a.log")
    survivors: list[Coordinator] = []
    try:
        assert a.wait_ready()
        ids = json.loads((tmp_path / "ops.json").read_text())
        _wait_for(lambda: {r[1] for r in led.rows("attempts") if r[3] == "coord-A"} >= set(ids), 60,
                  "A to run all three operations")
        for name in ("coord-B", "coord-C"):
            survivors.append(Coordinator([*common, "--executor", name], tmp_path / f"{name}.log"))
        assert all(s.wait_ready() for s in survivors)
        time.sleep(1.0)
        running_on_a = [r["id"] for r in db_ops(url) if r["executor_id"] == "coord-A" and r["state"] == "running"]
        assert sorted(running_on_a) == sorted(ids)
        t_kill = time.time()
        a.kill()
        assert a.wait(30) == -signal.SIGKILL

        def taken() -> bool:
            by = {r[1] for r in led.rows("attempts") if r[3] in ("coord-B", "coord-C") and r[4] > t_kill}
            return by >= set(ids)

        _wait_for(taken, 60, "the survivors to take over")
        first = {op: min(r[4] for r in led.rows("attempts") if r[1] == op and r[3] != "coord-A") for op in ids}
        takeover_s = max(first.values()) - t_kill
        _wait_for(lambda: all(r["state"] == "complete" for r in db_ops(url)), 60, "the operations to complete")
        rows = db_ops(url)
        dup = led.duplicates()
        takeovers = {r["id"]: sum("is silent" in m for m in _op_logs(url, r["id"])) for r in rows}
        print(f"RESULT C9 takeover_s={takeover_s:.2f} peer_timeout_s=10 ops={len(ids)} survivors=2 "
              f"completed={sum(r['state'] == 'complete' for r in rows)}/{len(ids)} "
              f"takeovers_per_op={sorted(takeovers.values())} duplicate_side_effects={dup}")
        assert takeover_s < 30 and dup == 0
        assert all(n == 1 for n in takeovers.values()), takeovers
        assert all(r["executor_id"] in ("coord-B", "coord-C") for r in rows)
        check_effects(led, rows)
        # each operation's re-run after the takeover happened on one survivor only
        for op in ids:
            after = {r[3] for r in led.rows("attempts") if r[1] == op and r[4] > t_kill}
            assert len(after) == 1, (op, after)
    finally:
        a.close()
        for s in survivors:
            s.terminate()
            s.wait(30)
            s.close()


def _op_logs(url: str, op_id: str) -> list[str]:
    from frieze.engine.store import logs

    eng = sa.create_engine(normalize_pg_url(url))
    try:
        with eng.connect() as c:
            return [r[0] for r in c.execute(sa.select(logs.c.message).where(logs.c.op_id == op_id))]
    finally:
        eng.dispose()


@pytest.mark.heavy
def test_c9_zombie_coordinator_is_fenced(pg: PgInstance, tmp_path: Path) -> None:
    """A is stopped (SIGSTOP), not killed: B takes its operations over; when A continues (SIGCONT), DBOS fences
    it (the runs are no longer its own) and it starts no further task; every operation completes once on B."""
    url = pg.create_database(f"zombie_{random.randrange(10**6)}")
    led = Ledger(str(tmp_path / "ledger.sqlite"))
    common = ["--db", url, "--ledger", led.path, "--pool", "4", "--peer-timeout", "10"]
    a = Coordinator([*common, "--executor", "coord-A", "--ops-file", str(tmp_path / "ops.json"), "--submit", "3",
                     "--sleep", "1.0"], tmp_path / "a.log")
    b: Coordinator | None = None
    try:
        assert a.wait_ready()
        ids = json.loads((tmp_path / "ops.json").read_text())
        _wait_for(lambda: {r[1] for r in led.rows("attempts") if r[3] == "coord-A"} >= set(ids), 60, "A")
        b = Coordinator([*common, "--executor", "coord-B"], tmp_path / "b.log")
        assert b.wait_ready()
        time.sleep(1.0)
        assert a.proc.pid is not None
        t_stop = time.time()
        os.kill(a.proc.pid, signal.SIGSTOP)
        _wait_for(lambda: {r[1] for r in led.rows("attempts") if r[3] == "coord-B" and r[4] > t_stop} >= set(ids),
                  60, "B to take over")
        t_cont = time.time()
        os.kill(a.proc.pid, signal.SIGCONT)
        _wait_for(lambda: all(r["state"] == "complete" for r in db_ops(url)), 60, "the operations to complete")
        time.sleep(3.0)
        rows = db_ops(url)
        a_after = [r for r in led.rows("attempts") if r[3] == "coord-A" and r[4] > t_cont]
        print(f"RESULT C9Z zombie_task_starts_after_cont={len(a_after)} completed="
              f"{sum(r['state'] == 'complete' for r in rows)}/{len(ids)} duplicate_side_effects={led.duplicates()}")
        assert a_after == [] and led.duplicates() == 0
        assert all(r["executor_id"] == "coord-B" for r in rows)
        check_effects(led, rows)
    finally:
        a.close()
        if b is not None:
            b.terminate()
            b.wait(30)
            b.close()
