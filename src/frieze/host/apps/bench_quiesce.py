"""Benchmark: the freeze window each application saw while a load ran, per engine (p50, p99, max).

Run: ``python -m frieze.host.apps.bench_quiesce [--engines postgres,mariadb,sqlite,redis,files] [--cycles 20]
[--hold-ms 50] [--interval 0.4]``. Starts private engines in temp dirs (see :mod:`frieze.host.apps.testbed`),
runs the load (pgbench for PostgreSQL, concurrent transfers for MariaDB, writer threads for SQLite and Redis,
fsynced small-file writers on an ext4 loop mount for files/fsfreeze — root only),
and ``cycles`` times: quiesce → hold ``hold-ms`` (stands in for a provider's snapshot; a btrfs/reflink
snapshot takes tens of ms) → unquiesce. The window the app saw for one cycle is the longest write latency
overlapping the freeze, or the longest gap between write completions inside it, whichever is larger (so a
stalled app shows up even if no write was in flight). Goal (issue 4): p50 ≤ 200 ms, p99 ≤ 1 s.

Prints one line per engine: ``RESULT BENCH-<engine> cycles=… window_ms_p50=… window_ms_p99=… window_ms_max=…
quiesce_ms_p50=… baseline_write_ms_p99=… writes=…``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from frieze.host.apps import testbed as tb
from frieze.host.apps.base import AppPlugin, AppSpec
from frieze.host.apps.registry import load


def cycle_loop(plugin: AppPlugin, spec: AppSpec, cycles: int, hold_s: float, interval_s: float,
               clock: Callable[[], float]) -> tuple[list[tuple[float, float]], list[float]]:
    """Run the quiesce cycles; returns ([(t_quiesce_called, t_unquiesce_returned)] on ``clock``, quiesce_ms)."""
    spans: list[tuple[float, float]] = []
    qms: list[float] = []
    for i in range(cycles):
        time.sleep(interval_s)
        t0 = clock()
        h = plugin.quiesce(spec, epoch=i + 1, lease_s=30)
        if "freeze_ms" in h.info:  # files: the writers only see the freeze itself, not the pre-sync
            t0 = clock() - h.info["freeze_ms"] / 1000
        time.sleep(hold_s)
        plugin.unquiesce(spec, epoch=i + 1)
        spans.append((t0, clock()))
        qms.append(float(h.info.get("quiesce_ms", 0.0)))
    return spans, qms


def summarize(engine: str, log: tb.OpLog, spans: list[tuple[float, float]], qms: list[float]) -> dict[str, Any]:
    windows = [log.window(a, b) * 1000 for a, b in spans]
    outside = [(b - a) * 1000 for a, b in log.ops if not any(x - 0.05 <= b and a <= y + 0.05 for x, y in spans)]
    out = {
        "engine": engine, "cycles": len(spans), "writes": log.count(),
        "window_ms_p50": round(tb.percentile(windows, 50), 1), "window_ms_p99": round(tb.percentile(windows, 99), 1),
        "window_ms_max": round(max(windows), 1), "quiesce_ms_p50": round(tb.percentile(qms, 50), 1),
        "baseline_write_ms_p99": round(tb.percentile(outside, 99), 1) if outside else None,
    }
    print(f"RESULT BENCH-{engine} " + " ".join(f"{k}={v}" for k, v in out.items() if k != "engine"), flush=True)
    return out


def _pgbench_oplog(logdir: Path) -> tb.OpLog:
    """pgbench -l lines: client tx_no latency_us script_no epoch_s epoch_us → (start, end) in wall time."""
    log = tb.OpLog()
    for f in logdir.glob("pgbench_log*"):
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) < 6 or parts[2] == "skipped":
                continue
            end = int(parts[4]) + int(parts[5]) / 1e6
            log.add(end - int(parts[2]) / 1e6, end)
    return log


def bench_postgres(cycles: int, hold_s: float, interval_s: float) -> dict[str, Any]:
    import subprocess

    with tb.pg_server() as pg:
        bench = tb.PgBench(pg, scale=2)
        bench.init()
        logdir = Path(tempfile.mkdtemp(prefix="frieze-pgbench-log-"))
        duration = int(cycles * (interval_s + hold_s + 0.5) + 6)
        argv = [*bench._base(), "-n", "-c", "2", "-j", "1", "-T", str(duration), "-l", "--log-prefix",
                str(logdir / "pgbench_log"), "postgres"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            spec = AppSpec("pg", "postgres", str(pg.data_dir), options=pg.options())
            spans, qms = cycle_loop(load("postgres"), spec, cycles, hold_s, interval_s, time.time)
            proc.wait(timeout=duration + 60)
            return summarize("postgres", _pgbench_oplog(logdir), spans, qms)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            shutil.rmtree(logdir, ignore_errors=True)


def bench_mariadb(cycles: int, hold_s: float, interval_s: float) -> dict[str, Any]:
    with tb.mariadb_server() as m:
        spec = AppSpec("ma", "mariadb", str(m.data_dir), options=m.options(), secrets=m.secrets())
        with tb.MariaTransfers(m, threads=4, pause_s=0.0) as w:
            time.sleep(0.5)
            spans, qms = cycle_loop(load("mariadb"), spec, cycles, hold_s, interval_s, time.monotonic)
        return summarize("mariadb", w.log, spans, qms)


def bench_sqlite(cycles: int, hold_s: float, interval_s: float) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="frieze-sqbench-"))
    try:
        db = d / "app.db"
        with tb.SQLiteCounter(db, threads=2, pause_s=0.002) as w:
            time.sleep(0.3)
            spans, qms = cycle_loop(load("sqlite"), AppSpec("sq", "sqlite", str(db)), cycles, hold_s, interval_s,
                                    time.monotonic)
        return summarize("sqlite", w.log, spans, qms)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def bench_redis(cycles: int, hold_s: float, interval_s: float) -> dict[str, Any]:
    with tb.redis_server() as r:
        spec = AppSpec("rd", "redis", str(r.data_dir), options=r.options(), secrets=r.secrets())
        with tb.RedisCounter(r, threads=2, pause_s=0.0) as w:
            time.sleep(0.3)
            spans, qms = cycle_loop(load("redis"), spec, cycles, hold_s, interval_s, time.monotonic)
        return summarize("redis", w.log, spans, qms)


def bench_files(cycles: int, hold_s: float, interval_s: float) -> dict[str, Any]:
    with tb.loop_mount(64, "ext4") as mnt, tb.FileWriter(mnt, threads=2) as w:
        time.sleep(0.3)
        spans, qms = cycle_loop(load("files"), AppSpec("fs", "files", str(mnt)), cycles, hold_s, interval_s,
                                time.monotonic)
    return summarize("files", w.log, spans, qms)


BENCHES: dict[str, Callable[[int, float, float], dict[str, Any]]] = {
    "postgres": bench_postgres, "mariadb": bench_mariadb, "sqlite": bench_sqlite, "redis": bench_redis,
    "files": bench_files,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--engines", default=",".join(BENCHES))
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--hold-ms", type=float, default=50.0)
    ap.add_argument("--interval", type=float, default=0.4, help="seconds between cycles")
    a = ap.parse_args(argv)
    results = []
    for e in a.engines.split(","):
        if e not in BENCHES:
            ap.error(f"unknown engine {e!r}; known: {', '.join(BENCHES)}")
        results.append(BENCHES[e](a.cycles, a.hold_ms / 1000, a.interval))
    ok = all(r["window_ms_p50"] <= 200 and r["window_ms_p99"] <= 1000 for r in results)
    print(f"RESULT BENCH-GOAL p50<=200ms_and_p99<=1s={'met' if ok else 'missed'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
