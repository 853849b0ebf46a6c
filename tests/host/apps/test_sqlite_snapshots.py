"""SQLite plug-in with real writer threads (WAL mode, newer SQLite from pysqlite3): snapshots taken under the
held write lock restore to databases that pass PRAGMA integrity_check and keep the counter invariant."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.engines import SQLiteCounter, sqlite_check

from frieze.core.errors import UsageError
from frieze.host.apps.base import AppSpec
from frieze.host.apps.sqlite import SQLitePlugin


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="frieze-sqsnap-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_snapshots(workdir: Path, n: int, threads: int, wal: bool, gap_s: float) -> None:
    plugin = SQLitePlugin()
    db = workdir / "live" / "app.db"
    db.parent.mkdir()
    spec = AppSpec("sq", "sqlite", str(db))
    last_n = -1
    with SQLiteCounter(db, threads=threads, wal=wal) as w:
        time.sleep(0.3)
        snaps = []
        for i in range(n):
            h = plugin.quiesce(spec, epoch=i + 1, lease_s=30)
            t1 = time.monotonic()
            dst = workdir / f"snap{i}"
            dst.mkdir()
            for f in h.info["files"]:
                shutil.copy2(f, dst / Path(f).name)
            time.sleep(0.2)  # held well past the clients' observation lag, so a write that goes through counts
            t2 = time.monotonic()
            res = plugin.unquiesce(spec, epoch=i + 1)
            assert res.changed
            assert w.log.ended_during_hold(t1, t2) == 0, "a write committed while the write lock was held"
            snaps.append((dst, h.info))
            time.sleep(gap_s)
    assert not w.log.errors, w.log.errors[:3]
    for i, (dst, info) in enumerate(snaps):
        restored = workdir / f"restore{i}"
        shutil.copytree(dst, restored)
        ic, cnt, logged = sqlite_check(restored / "app.db")
        v = plugin.verify(AppSpec("sq-restored", "sqlite", str(restored / "app.db")))
        print(f"RESULT SQ-SNAP{i} wal={wal} counter={cnt} log_rows={logged} integrity={ic}"
              f" wal_bytes={info['wal_bytes']} quiesce_ms={info['quiesce_ms']}")
        assert ic == "ok" and v.info["ok"]
        assert cnt == logged, f"counter {cnt} != log rows {logged} in snapshot {i}"
        assert cnt >= last_n
        last_n = cnt
    assert last_n > 0


def test_snapshots_under_writers_wal(workdir: Path) -> None:
    run_snapshots(workdir, n=5, threads=2, wal=True, gap_s=0.2)


def test_snapshots_under_writers_rollback_journal(workdir: Path) -> None:
    run_snapshots(workdir, n=3, threads=2, wal=False, gap_s=0.2)


@pytest.mark.heavy
def test_snapshots_wal_checkpoint_stress(workdir: Path) -> None:
    run_snapshots(workdir, n=60, threads=4, wal=True, gap_s=0.02)


def test_online_backup_api_under_writers(workdir: Path) -> None:
    plugin = SQLitePlugin()
    db = workdir / "live" / "app.db"
    db.parent.mkdir()
    last = -1
    with SQLiteCounter(db, threads=2) as w:
        time.sleep(0.3)
        for i in range(3):
            out = workdir / f"copy{i}.db"
            spec = AppSpec("sq", "sqlite", str(db), options={"method": "backup_api", "backup_to": str(out)})
            h = plugin.quiesce(spec, epoch=i + 1, lease_s=30)
            assert h.info["files"] == [str(out)]
            assert plugin.unquiesce(spec, epoch=i + 1).changed
            ic, cnt, logged = sqlite_check(out)
            print(f"RESULT SQ-BACKUPAPI{i} counter={cnt} log_rows={logged} integrity={ic} ms={h.info['quiesce_ms']}")
            assert ic == "ok" and cnt == logged and cnt >= last
            last = cnt
            time.sleep(0.2)
    assert not w.log.errors and last > 0
    with pytest.raises(UsageError):
        plugin.quiesce(AppSpec("sq", "sqlite", str(db), options={"method": "backup_api"}), epoch=9, lease_s=5)
