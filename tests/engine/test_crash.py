"""Crash tests: coordinator processes (tests/engine/driver.py) killed with SIGKILL at every checkpoint boundary
of a five-step workflow and at random times, on SQLite and on a private PostgreSQL; takeover between two
coordinators on one PostgreSQL. Side effects are counted in a separate ledger (tests/engine/flows.py)."""

from __future__ import annotations

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
from tests.engine.flows import Ledger
from tests.support.pg import PgInstance, pg_available, start_postgres

RANDOM_KILLS_CI = int(os.environ.get("FRIEZE_C8_RANDOM_KILLS", "6"))


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgInstance]:
    if not pg_available():
        pytest.skip("PostgreSQL 15 binaries not installed")
    inst = start_postgres(tmp_path_factory.mktemp("pg"))
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
                    return self._parent.recv() == "ready"
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


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def crash_loop(url: str, tmp: Path, *, n_ops: int, kill_points: list[str], sleep: float, pool: int,
               random_kills: int = 0, seed: int = 1) -> tuple[list[Kill], Ledger, list[dict[str, Any]], int]:
    """Run the driver until every operation is final, killing it (randomly, or at the ops' kill points)."""
    led = Ledger(str(tmp / "ledger.sqlite"))
    log = tmp / "driver.log"
    base = ["--db", url, "--ledger", led.path, "--ops-file", str(tmp / "ops.json"), "--pool", str(pool),
            "--until-idle", "--sleep", str(sleep)]
    args = [*base, "--submit", str(n_ops), "--kill-points", ",".join(kill_points)]
    rng = random.Random(seed)
    kills: list[Kill] = []
    pending: Kill | None = None
    for _ in range(len(kill_points) + random_kills + 10):
        t_spawn = time.time()
        if pending is not None:
            pending.t_respawn = t_spawn
            kills.append(pending)
            pending = None
        p = Coordinator(args, log)
        args = base
        rc: int | None = None
        ready = p.wait_ready()
        if kills and kills[-1].t_respawn == t_spawn:
            kills[-1].t_ready = time.time() if ready else kills[-1].t_respawn
        if random_kills and len(kills) < random_kills:
            if ready:
                time.sleep(rng.uniform(0.2, 1.5))
            p.kill()
            rc = p.wait(60)
        else:
            rc = p.wait(240)
        p.close()
        if rc == -signal.SIGKILL:
            t_kill = time.time()
            running = [r["id"] for r in db_ops(url) if r["state"] in ("running", "aborting")]
            pending = Kill(t_kill=t_kill, t_respawn=0.0, running=running)
            continue
        assert rc == 0, f"driver exited with {rc}; see {log}: {log.read_text()[-3000:]}"
        break
    rows = db_ops(url)
    stuck = sum(1 for r in rows if r["state"] not in ("complete", "failed", "canceled"))
    return kills, led, rows, stuck


def resume_times(kills: list[Kill], led: Ledger, rows: list[dict[str, Any]], from_ready: bool = False
                 ) -> list[float]:
    """Per (kill, running op): time from the kill (or from the restarted coordinator being ready) to the op's
    first task attempt (or finish) after the restart."""
    attempts = led.rows("attempts")
    finished = {r["id"]: r["finished"] for r in rows}
    out: list[float] = []
    for k in kills:
        for op in k.running:
            ts = [r[4] for r in attempts if r[1] == op and r[4] > k.t_respawn]
            if finished.get(op) and finished[op] > k.t_respawn:
                ts.append(finished[op])
            if ts:
                out.append(min(ts) - (k.t_ready if from_ready else k.t_kill))
    return out


def check_effects(led: Ledger, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        assert r["state"] == "complete", r
        assert led.effects_of(r["id"]) == ["s1", "s2", "s3", "s4", "s5"], r["id"]


def test_c8_kill_at_every_checkpoint_boundary(db_url: str, tmp_path: Path) -> None:
    """Ten operations run one at a time; operation i kills the coordinator at boundary i: right after the side
    effect of task k (before its checkpoint) or right after checkpoint ck is recorded, for k = 1..5."""
    points = [p for k in range(1, 6) for p in (f"effect:s{k}", f"checkpoint:c{k}")]
    kills, led, rows, stuck = crash_loop(db_url, tmp_path, n_ops=len(points), kill_points=points, sleep=0.0,
                                         pool=1)
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    resumed = sum(1 for r in rows if r["state"] == "complete")
    rt = resume_times(kills, led, rows)
    rr = resume_times(kills, led, rows, from_ready=True)
    dup = led.duplicates()
    print(f"RESULT C8 mode=boundaries backend={backend} kills={len(kills)} resumed={resumed}/{len(rows)} "
          f"duplicate_side_effects={dup} stuck={stuck} resume_p99_s={percentile(rt, 99):.2f} "
          f"resume_after_ready_p99_s={percentile(rr, 99):.2f}")
    assert len(kills) == len(points) and stuck == 0 and dup == 0 and resumed == len(rows) == len(points)
    check_effects(led, rows)
    opsorder = json.loads((tmp_path / "ops.json").read_text())
    for op_id, point in zip(opsorder, points, strict=True):
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
    fin = sorted(rows, key=lambda r: r["finished"])
    assert [r["id"] for r in fin] == opsorder


def _random(db_url: str, tmp_path: Path, n_kills: int) -> None:
    kills, led, rows, stuck = crash_loop(db_url, tmp_path, n_ops=n_kills + 4, kill_points=[], sleep=0.3,
                                         pool=2, random_kills=n_kills, seed=n_kills)
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    resumed = sum(1 for r in rows if r["state"] == "complete")
    rt = resume_times(kills, led, rows)
    rr = resume_times(kills, led, rows, from_ready=True)
    dup = led.duplicates()
    print(f"RESULT C8 mode=random backend={backend} kills={len(kills)} resumed={resumed}/{len(rows)} "
          f"duplicate_side_effects={dup} stuck={stuck} resume_p99_s={percentile(rt, 99):.2f} "
          f"resume_after_ready_p99_s={percentile(rr, 99):.2f} "
          f"reruns={len(led.rows('attempts')) - len(led.rows('effects'))}")
    assert len(kills) == n_kills and stuck == 0 and dup == 0 and resumed == len(rows)
    check_effects(led, rows)


def test_c8_random_kills(db_url: str, tmp_path: Path) -> None:
    _random(db_url, tmp_path, RANDOM_KILLS_CI)


@pytest.mark.heavy
def test_c8_random_kills_full(db_url: str, tmp_path: Path) -> None:
    _random(db_url, tmp_path, 50)


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
    a = Coordinator([*common, "--executor", "coord-A", "--ops-file", str(tmp_path / "ops.json"), "--submit", "3",
                     "--sleep", "1.0"], tmp_path / "a.log")
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
