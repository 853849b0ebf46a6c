"""Benchmark: the freeze window each application saw while a load ran, per engine × snapshot provider
(p50, p99, max), with the real providers making the real snapshot inside every freeze.

Run (root, for the loop devices): ``python -m frieze.host.apps.bench_quiesce [--engines
postgres,mariadb,sqlite,redis] [--providers copy,reflink,btrfs] [--cycles 20] [--interval 0.4]``.

For each provider the engine's data lives on a volume the provider can snapshot: ``copy`` a directory under
/tmp (whatever file system that is), ``reflink`` a directory on a fresh XFS (``-m reflink=1``) loop mount,
``btrfs`` a subvolume of a fresh btrfs loop mount. A private engine is started there (see
:mod:`frieze.host.apps.testbed`), its load runs (pgbench -c 2 for PostgreSQL, 4 threads of concurrent
transfers for MariaDB, 2 writer threads for SQLite and for Redis), and ``cycles`` times: quiesce (the real
plug-in) → the provider's ``snapshot`` of the volume → unquiesce; the snapshot is deleted after the
unquiesce (outside the window). Before each quiesce the provider's ``prepare`` runs, as in the backup
workflow (the copy provider's pre-copy; ``--no-prepare`` leaves it out, to compare). The window the app
saw in one cycle is the longest write latency overlapping the freeze, or the longest gap between write
completions inside it, whichever is larger (so a stalled app shows up even if no write was in flight).
Goal (issue 4): p50 ≤ 200 ms, p99 ≤ 1 s.

Prints one line per engine and provider: ``RESULT BENCH engine=… provider=… cycles=… window_ms_p50=…
window_ms_p99=… window_ms_max=… snapshot_ms_p50=… snapshot_ms_max=… quiesce_ms_p50=… baseline_write_ms_p99=…
writes=…``, then ``RESULT BENCH-GOAL ...``. A provider that cannot run here (not root, no loop devices) is
reported as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from frieze.host.apps import testbed as tb
from frieze.host.apps.base import AppPlugin, AppSpec
from frieze.host.apps.registry import load
from frieze.host.providers.base import SnapshotProvider
from frieze.host.providers.btrfs import BtrfsProvider
from frieze.host.providers.copy import CopyProvider
from frieze.host.providers.reflink import ReflinkProvider

PROVIDERS: dict[str, Callable[[], SnapshotProvider]] = {
    "copy": CopyProvider, "reflink": ReflinkProvider, "btrfs": BtrfsProvider}
LOOP_MB = 2048


def _traversable(path: Path) -> None:
    """Let the engines' OS users (postgres) reach a volume below root-owned 0700 temp dirs."""
    p = path
    while str(p) not in ("/", "/tmp"):
        os.chmod(p, os.stat(p).st_mode | 0o711)
        p = p.parent


@contextlib.contextmanager
def volume_for(provider: str) -> Iterator[Path]:
    """A fresh, empty volume that ``provider`` can snapshot."""
    if provider == "copy":
        d = Path(tempfile.mkdtemp(prefix="frieze-bench-"))
        try:
            vol = d / "vol"
            vol.mkdir()
            _traversable(vol)
            yield vol
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return
    fstype = "xfs" if provider == "reflink" else "btrfs"
    with tb.loop_mount(LOOP_MB, fstype) as mnt:
        vol = mnt / "vol"
        if fstype == "btrfs":
            subprocess.run(["btrfs", "subvolume", "create", str(vol)], check=True, capture_output=True)
        else:
            vol.mkdir()
        _traversable(vol)
        try:
            yield vol
        finally:
            for ref in PROVIDERS[provider]().list(str(vol)):
                with contextlib.suppress(Exception):
                    PROVIDERS[provider]().delete(ref)


#: whether the cycles call the provider's ``prepare`` before each quiesce (as the backup workflow does)
PREPARE = True


def cycle_loop(plugin: AppPlugin, spec: AppSpec, provider: SnapshotProvider, volume: Path, cycles: int,
               interval_s: float, clock: Callable[[], float]) -> dict[str, list[Any]]:
    """Run the cycles: (prepare, outside the window →) quiesce → snapshot → unquiesce (→ delete, outside)."""
    spans: list[tuple[float, float]] = []
    qms: list[float] = []
    sms: list[float] = []
    pms: list[float] = []
    for i in range(cycles):
        time.sleep(interval_s)
        if PREPARE:
            pms.append(float(provider.prepare(str(volume), f"bench-{i:03d}")["ms"]))
        t0 = clock()
        h = plugin.quiesce(spec, epoch=i + 1, lease_s=60)
        ts = time.monotonic()
        try:
            ref = provider.snapshot(str(volume), f"bench-{i:03d}")
            sms.append((time.monotonic() - ts) * 1000)
        finally:
            plugin.unquiesce(spec, epoch=i + 1)
        spans.append((t0, clock()))
        qms.append(float(h.info.get("quiesce_ms", 0.0)))
        provider.delete(ref)
    return {"spans": spans, "quiesce_ms": qms, "snapshot_ms": sms, "prepare_ms": pms}


def summarize(engine: str, provider: str, log: tb.OpLog, r: dict[str, list[Any]],
              load_desc: str) -> dict[str, Any]:
    spans = r["spans"]
    windows = [log.window(a, b) * 1000 for a, b in spans]
    outside = [(b - a) * 1000 for a, b in log.ops if not any(x - 0.05 <= b and a <= y + 0.05 for x, y in spans)]
    out = {
        "engine": engine, "provider": provider, "cycles": len(spans),
        "window_ms_p50": round(tb.percentile(windows, 50), 1), "window_ms_p99": round(tb.percentile(windows, 99), 1),
        "window_ms_max": round(max(windows), 1),
        "snapshot_ms_p50": round(tb.percentile(r["snapshot_ms"], 50), 1),
        "snapshot_ms_max": round(max(r["snapshot_ms"]), 1),
        "quiesce_ms_p50": round(tb.percentile(r["quiesce_ms"], 50), 1),
        "prepare_ms_p50": round(tb.percentile(r["prepare_ms"], 50), 1) if r["prepare_ms"] else "off",
        "baseline_write_ms_p99": round(tb.percentile(outside, 99), 1) if outside else None,
        "writes": log.count(), "load": load_desc,
    }
    print("RESULT BENCH " + " ".join(f"{k}={v}" for k, v in out.items()), flush=True)
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


Bench = Callable[[SnapshotProvider, Path, int, float], dict[str, Any]]


def bench_postgres(prov: SnapshotProvider, vol: Path, cycles: int, interval_s: float) -> dict[str, Any]:
    with tb.temp_base(vol), tb.pg_server() as pg:
        bench = tb.PgBench(pg, scale=2)
        bench.init()
        logdir = Path(tempfile.mkdtemp(prefix="frieze-pgbench-log-"))
        duration = int(cycles * (interval_s + 3.0) + 10)
        argv = [*bench._base(), "-n", "-c", "2", "-j", "1", "-T", str(duration), "-l", "--log-prefix",
                str(logdir / "pgbench_log"), "postgres"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            spec = AppSpec("pg", "postgres", str(pg.data_dir), options=pg.options())
            r = cycle_loop(load("postgres"), spec, prov, vol, cycles, interval_s, time.time)
            proc.terminate()
            proc.wait(timeout=60)
            return summarize("postgres", prov.name, _pgbench_oplog(logdir), r, "pgbench-c2-scale2")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            shutil.rmtree(logdir, ignore_errors=True)


def bench_mariadb(prov: SnapshotProvider, vol: Path, cycles: int, interval_s: float) -> dict[str, Any]:
    with tb.temp_base(vol), tb.mariadb_server() as m:
        spec = AppSpec("ma", "mariadb", str(m.data_dir), options=m.options(), secrets=m.secrets())
        with tb.MariaTransfers(m, threads=4, pause_s=0.0) as w:
            time.sleep(0.5)
            r = cycle_loop(load("mariadb"), spec, prov, vol, cycles, interval_s, time.monotonic)
        return summarize("mariadb", prov.name, w.log, r, "transfers-4-threads")


def bench_sqlite(prov: SnapshotProvider, vol: Path, cycles: int, interval_s: float) -> dict[str, Any]:
    d = vol / "sq"
    d.mkdir()
    db = d / "app.db"
    with tb.SQLiteCounter(db, threads=2, pause_s=0.002) as w:
        time.sleep(0.3)
        r = cycle_loop(load("sqlite"), AppSpec("sq", "sqlite", str(db)), prov, vol, cycles, interval_s,
                       time.monotonic)
    return summarize("sqlite", prov.name, w.log, r, "writers-2-threads")


def bench_redis(prov: SnapshotProvider, vol: Path, cycles: int, interval_s: float) -> dict[str, Any]:
    with tb.temp_base(vol), tb.redis_server() as rs:
        spec = AppSpec("rd", "redis", str(rs.data_dir), options=rs.options(), secrets=rs.secrets())
        with tb.RedisCounter(rs, threads=2, pause_s=0.0) as w:
            time.sleep(0.3)
            r = cycle_loop(load("redis"), spec, prov, vol, cycles, interval_s, time.monotonic)
        return summarize("redis", prov.name, w.log, r, "writers-2-threads")


BENCHES: dict[str, Bench] = {
    "postgres": bench_postgres, "mariadb": bench_mariadb, "sqlite": bench_sqlite, "redis": bench_redis,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--engines", default=",".join(BENCHES))
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--interval", type=float, default=0.4, help="seconds between cycles")
    ap.add_argument("--no-prepare", action="store_true",
                    help="do not call the provider's prepare (pre-copy) before each freeze")
    a = ap.parse_args(argv)
    global PREPARE
    PREPARE = not a.no_prepare
    results = []
    for p in a.providers.split(","):
        if p not in PROVIDERS:
            ap.error(f"unknown provider {p!r}; known: {', '.join(PROVIDERS)}")
        for e in a.engines.split(","):
            if e not in BENCHES:
                ap.error(f"unknown engine {e!r}; known: {', '.join(BENCHES)}")
            try:
                with volume_for(p) as vol:
                    results.append(BENCHES[e](PROVIDERS[p](), vol, a.cycles, a.interval))
            except (OSError, subprocess.CalledProcessError, RuntimeError) as err:
                print(f"RESULT BENCH engine={e} provider={p} skipped={type(err).__name__}: {err}", flush=True)
    missed = [f"{r['engine']}/{r['provider']}" for r in results
              if r["window_ms_p50"] > 200 or r["window_ms_p99"] > 1000]
    ok = bool(results) and not missed
    print(f"RESULT BENCH-GOAL runs={len(results)} p50<=200ms_and_p99<=1s={'met' if ok else 'missed'} "
          f"missed_by={','.join(missed) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
