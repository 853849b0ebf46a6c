"""PostgreSQL plug-in against a real PostgreSQL 15: snapshots under pgbench load restore to consistent clusters
(pg_amcheck --heapallindexed + the pgbench balance invariant), and point-in-time recovery lands exactly on the
target (time, named restore point, LSN, end of WAL), checked against the workload's own commit log."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.support.engines import (
    PgBench,
    PgCommitLog,
    PgServer,
    copy_tree_live,
    owned_tempdir,
    pg_commit_times,
    pg_restored_copy,
    pg_server,
    pgbench_sums,
)

from frieze.core.errors import UsageError
from frieze.host.apps.base import AppSpec, RecoveryTarget
from frieze.host.apps.postgres import PostgresPlugin, RecoveryTargetNotReached

PG_SKIP = ("postmaster.pid", "postmaster.opts", "pg_wal/*", "pg_replslot/*")


def spec_of(srv: PgServer, name: str = "pg", archive: Path | None = None) -> AppSpec:
    opts: dict[str, Any] = srv.options()
    if archive is not None:
        opts["archive_dir"] = str(archive)
    return AppSpec(name=name, kind="postgres", data_dir=str(srv.data_dir), options=opts)


def take_snapshot(plugin: PostgresPlugin, spec: AppSpec, dst: Path, epoch: int) -> dict[str, Any]:
    """Quiesce, copy the data dir (the provider's job; a plain copy here), unquiesce, write the backup label."""
    h = plugin.quiesce(spec, epoch=epoch, lease_s=60)
    copy_tree_live(Path(spec.data_dir), dst, PG_SKIP)
    (dst / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
    res = plugin.unquiesce(spec, epoch=epoch)
    assert res.changed, res.message
    (dst / "backup_label").write_text(res.info["backup_label"])
    if res.info["tablespace_map"]:
        (dst / "tablespace_map").write_text(res.info["tablespace_map"])
    return {**h.info, **res.info}


@pytest.fixture
def snapdir() -> Any:
    import shutil

    d = owned_tempdir("frieze-pgsnap-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_snapshots_under_pgbench_restore_consistent(snapdir: Path) -> None:
    run_snapshots(snapdir, 2)


@pytest.mark.heavy
def test_snapshots_under_pgbench_restore_consistent_many(snapdir: Path) -> None:
    run_snapshots(snapdir, 8)


def run_snapshots(snapdir: Path, n: int) -> None:
    plugin = PostgresPlugin()
    with pg_server() as pg:
        spec = spec_of(pg)
        bench = PgBench(pg, scale=1)
        bench.init()
        bench.start(clients=2)
        time.sleep(1.0)
        snaps = []
        for i in range(n):
            dst = snapdir / f"s{i}"
            snaps.append((dst, take_snapshot(plugin, spec, dst, epoch=i + 1)))
            time.sleep(0.7)
        out = bench.stop()
        assert "tps" in out or "progress" in out
        pg.switch_wal_and_wait_archived()
        for i, (dst, info) in enumerate(snaps):
            with pg_restored_copy(dst) as r:
                rspec = spec_of(r, "pg-restored", archive=pg.archive_dir)
                res = plugin.recover(rspec, RecoveryTarget(position=info["stop_lsn"]))
                assert res.changed
                sums = pgbench_sums(r)
                assert len(set(sums)) == 1, f"pgbench balance invariant broken in snapshot {i}: {sums}"
                v = plugin.verify(rspec)  # pg_amcheck --heapallindexed --all
                assert v.info["ok"] and "pg_amcheck" in v.info["tool"]
                n_hist = r.sql("SELECT count(*) FROM pgbench_history")[0][0]
                print(f"RESULT PG-SNAP{i} history_rows={n_hist} sums={sums[0]} quiesce_ms={info['quiesce_ms']}"
                      f" held_ms={info['held_ms']} amcheck=ok")


def test_pitr_lands_exactly_on_time_name_lsn_and_end(snapdir: Path) -> None:
    plugin = PostgresPlugin()
    with pg_server() as pg:
        spec = spec_of(pg)
        with PgCommitLog(pg, threads=2):
            time.sleep(0.3)
            take_snapshot(plugin, spec, snapdir / "base", epoch=1)
            time.sleep(1.0)
        # Named restore point and LSN with the writers stopped: exactly the rows before it.
        rows_at_name = {i for i, _ in pg_commit_times(pg)}
        pg.sql("SELECT pg_create_restore_point('frieze-rp1')")
        pg.sql("INSERT INTO commit_log (writer) SELECT 99 FROM generate_series(1, 50)")
        lsn = pg.sql("SELECT pg_current_wal_insert_lsn()::text")[0][0]
        rows_at_lsn = {i for i, _ in pg_commit_times(pg)}
        pg.sql("INSERT INTO commit_log (writer) SELECT 98 FROM generate_series(1, 50)")
        pg.switch_wal_and_wait_archived()
        commits = pg_commit_times(pg)
        all_rows = {i for i, _ in commits}
        # The time target: the commit time of a row in the middle of the run after the snapshot.
        _, target_ts = commits[len(rows_at_name) * 3 // 4]
        expect_time = {i for i, ct in commits if ct <= target_ts}
        assert 0 < len(expect_time) < len(all_rows)

        cases = [
            ("time", RecoveryTarget(time=target_ts.isoformat()), expect_time),
            ("name", RecoveryTarget(name="frieze-rp1"), rows_at_name),
            ("lsn", RecoveryTarget(position=lsn), rows_at_lsn),
            ("end", RecoveryTarget(), all_rows),
        ]
        for label, target, expected in cases:
            with pg_restored_copy(snapdir / "base") as r:
                rspec = spec_of(r, "pg-pitr", archive=pg.archive_dir)
                res = plugin.recover(rspec, target)
                assert res.changed
                assert not plugin.recover(rspec, target).changed  # already recovered: nothing to do
                got = {int(x[0]) for x in r.sql("SELECT id FROM commit_log")}
                missing, extra = expected - got, got - expected
                print(f"RESULT PG-PITR-{label} expected={len(expected)} got={len(got)} missing={len(missing)}"
                      f" extra={len(extra)} recover_s={res.info['seconds']}")
                assert not missing and not extra, (label, sorted(missing)[:5], sorted(extra)[:5])

        # A time beyond all archived WAL: PostgreSQL refuses to promote; a clear error.
        with pg_restored_copy(snapdir / "base") as r:
            later = (commits[-1][1] + timedelta(hours=1)).isoformat()
            with pytest.raises(RecoveryTargetNotReached):
                plugin.recover(spec_of(r, "pg-late", archive=pg.archive_dir), RecoveryTarget(time=later))

        # Bad input: a clear error and nothing changed in the data dir.
        with pg_restored_copy(snapdir / "base") as r:
            before = sorted(p.name for p in r.data_dir.iterdir())
            conf = (r.data_dir / "postgresql.auto.conf").read_text()
            for bad in (RecoveryTarget(position="nonsense"), RecoveryTarget(time="yesterday"),
                        RecoveryTarget(time=datetime(2026, 1, 1).isoformat()), RecoveryTarget(time="x", name="y")):
                with pytest.raises(UsageError):
                    plugin.recover(spec_of(r, "pg-bad", archive=pg.archive_dir), bad)
            noarch = spec_of(r, "pg-bad")
            del noarch.options["archive_dir"]
            with pytest.raises(UsageError):
                plugin.recover(noarch, RecoveryTarget())  # no archive given
            assert sorted(p.name for p in r.data_dir.iterdir()) == before
            assert (r.data_dir / "postgresql.auto.conf").read_text() == conf
