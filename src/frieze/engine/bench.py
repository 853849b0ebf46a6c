"""Engine benchmark: per-task overhead and sustained operations per second, on SQLite (WAL) and PostgreSQL.

    python -m frieze.engine.bench [--pg-url postgresql://...] [--no-pg] [--ops 200] [--rounds 5]
    frieze bench engine ...        (same options; src/frieze/cli/bench_engine.py)

Without ``--pg-url``, a private PostgreSQL 15 (fsync on, as in production) is started in a temp dir (if the
binaries are installed) and removed afterwards. Prints one ``RESULT ENGINE-BENCH-ENV`` line (date, load average,
CPUs) and one ``RESULT ENGINE-BENCH ...`` line per backend: the median over ``--rounds`` rounds and the
min-max spread (the noise), with the load average before and after. Target: < 10 ms per task on SQLite.

- ``per_task_ms``: one run of 50 no-op tasks and one checkpoint, from the run's start to the op's end, / 50;
- ``per_task_with_checkpoint_ms``: 25 (no-op task, checkpoint) pairs, / 25;
- ``ops_per_s``: ``--ops`` small operations (3 tasks + 3 checkpoints) submitted at once, pool 8, until all
  are complete (submit and admission included).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from frieze.engine.engine import Engine
from frieze.engine.model import EngineConfig
from frieze.engine.workflow import Checkpoint, Task, TaskContext, Workflow

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _noop(ctx: TaskContext[Any, Any]) -> None:
    """Does nothing: the time measured is the engine's."""


class _Empty(BaseModel):
    n: int = 0


def _tasks(prefix: str, n: int) -> list[Task]:
    return [Task(name=f"{prefix}{i}", fn=_noop) for i in range(n)]


class ManyTasks(Workflow[_Empty, _Empty]):
    """50 no-op tasks, one checkpoint."""

    name = "bench_tasks"
    Args = _Empty
    Vars = _Empty
    forward = [*_tasks("t", 50), Checkpoint("done")]


class TaskCheckpointPairs(Workflow[_Empty, _Empty]):
    """25 (no-op task, checkpoint) pairs."""

    name = "bench_pairs"
    Args = _Empty
    Vars = _Empty
    forward = [x for i in range(25) for x in (Task(name=f"p{i}", fn=_noop), Checkpoint(f"c{i}"))]


class Small(Workflow[_Empty, _Empty]):
    """Three no-op tasks each closed by a checkpoint: a small operation."""

    name = "bench_small"
    Args = _Empty
    Vars = _Empty
    forward = [x for i in range(3) for x in (Task(name=f"s{i}", fn=_noop), Checkpoint(f"k{i}"))]


def _run_span(eng: Engine, op_id: str) -> float:
    """Seconds from the run's start to the operation's end (queueing excluded)."""
    logs = eng.logs(op_id)
    start = next(ln.ts for ln in logs if ln.message.startswith("run 1 started"))
    st = eng.status(op_id)
    assert st.finished is not None
    return (st.finished - start).total_seconds()


def _load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def env_line() -> str:
    """The ``RESULT ENGINE-BENCH-ENV`` line: when and on what the figures were taken."""
    return (f"RESULT ENGINE-BENCH-ENV date={time.strftime('%Y-%m-%dT%H:%M:%S%z')} loadavg={_load()} "
            f"cpus={os.cpu_count()} python={platform.python_version()} dbos={_dist_version('dbos')}")


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "n/a"


def _spread(xs: list[float]) -> str:
    return f"{min(xs):.2f}-{max(xs):.2f}" if xs else "n/a"


def bench(url: str, label: str, n_ops: int, rounds: int = 3) -> dict[str, float]:
    """Measure on the database at ``url``; prints the ``RESULT ENGINE-BENCH`` line and returns the figures."""
    load_before = _load()
    eng = Engine(EngineConfig(database_url=url, executor_id=f"bench-{os.getpid()}", default_pool=8,
                              dispatch_interval_s=0.02, queue_poll_s=0.05), [ManyTasks, TaskCheckpointPairs, Small])
    eng.start()
    try:
        warm = eng.submit("bench_small", {"n": -1})
        eng.wait(warm, 60)
        per_task = []
        per_pair = []
        for r in range(rounds):
            a = eng.submit("bench_tasks", {"n": r})
            if eng.wait(a, 120).state.value == "complete":
                per_task.append(_run_span(eng, a) / 50 * 1000)
            b = eng.submit("bench_pairs", {"n": r})
            if eng.wait(b, 120).state.value == "complete":
                per_pair.append(_run_span(eng, b) / 25 * 1000)
        t0 = time.perf_counter()
        ids = [eng.submit("bench_small", {"n": i}) for i in range(n_ops)]
        t_submit = time.perf_counter() - t0
        for i in ids:
            eng.wait(i, 600, poll=0.05)
        dt = time.perf_counter() - t0
        done = sum(1 for i in ids if eng.status(i).state.value == "complete")
    finally:
        eng.shutdown()
    nan = float("nan")
    out = {
        "per_task_ms": statistics.median(per_task) if per_task else nan,
        "per_task_with_checkpoint_ms": statistics.median(per_pair) if per_pair else nan,
        "ops_per_s": done / dt,
        "submit_ms": t_submit / n_ops * 1000,
    }
    print(f"RESULT ENGINE-BENCH backend={label} per_task_ms={out['per_task_ms']:.2f} "
          f"(rounds={rounds} range={_spread(per_task)}) "
          f"per_task_with_checkpoint_ms={out['per_task_with_checkpoint_ms']:.2f} (range={_spread(per_pair)}) "
          f"ops_per_s={out['ops_per_s']:.1f} (ops of 3 tasks+3 checkpoints, pool 8, {done}/{n_ops} complete) "
          f"submit_ms={out['submit_ms']:.2f} loadavg_before={load_before} loadavg_after={_load()}", flush=True)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_pg(argv: list[str]) -> list[str]:
    return ["/usr/sbin/runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class _PrivatePg:
    """A throwaway PostgreSQL cluster (trust auth on loopback), stopped and removed by ``stop()``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="frieze-engine-bench-"))
        self.data = self.root / "data"
        self.port = _free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(_as_pg([str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                               "--no-sync"]), check=True, capture_output=True)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                    "max_connections = 100\n")
        subprocess.run(_as_pg([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w",
                               "start"]), check=True, capture_output=True)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run(_as_pg([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
                       check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def run(*, pg_url: str | None = None, no_pg: bool = False, ops: int = 200,
        rounds: int = 3) -> dict[str, dict[str, float]]:
    """Run the benchmark on SQLite and (unless ``no_pg``) PostgreSQL; prints the RESULT lines, returns the figures."""
    print(env_line(), flush=True)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="frieze-engine-bench-") as d:
        out["sqlite-wal"] = bench(f"sqlite:///{d}/engine.sqlite", "sqlite-wal", ops, rounds)
    if no_pg:
        return out
    if pg_url:
        out["postgresql"] = bench(pg_url, "postgresql", ops, rounds)
        return out
    if not (PG_BIN / "initdb").exists():
        print("RESULT ENGINE-BENCH backend=postgresql skipped=no-postgresql-binaries", flush=True)
        return out
    pg = _PrivatePg()
    try:
        out["postgresql"] = bench(pg.url, "postgresql", ops, rounds)
    finally:
        pg.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--pg-url", help="PostgreSQL URL (default: start a private server)")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    ap.add_argument("--ops", type=int, default=200, help="operations for the ops/s figure")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the per-task figures (median and range)")
    a = ap.parse_args(argv)
    run(pg_url=a.pg_url, no_pg=a.no_pg, ops=a.ops, rounds=a.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
