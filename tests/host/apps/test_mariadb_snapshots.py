"""MariaDB plug-in against a real MariaDB 10.11: snapshots under a concurrent transfer workload restore to
consistent servers (mariadb-check + the constant-total invariant), and binlog-replay recovery to a chosen time
or position lands exactly on it, checked against the workload's own commit log."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from tests.support.engines import (
    MariaServer,
    MariaTransfers,
    copy_tree_live,
    maria_sum,
    mariadb_restored_copy,
    mariadb_server,
    owned_tempdir,
)

from frieze.core.errors import NotFound, NotSupported, UsageError
from frieze.host.apps.base import AppSpec, RecoveryTarget
from frieze.host.apps.mariadb import MariaDBPlugin


def spec_of(srv: MariaServer, name: str = "maria", **extra: Any) -> AppSpec:
    return AppSpec(name=name, kind="mariadb", data_dir=str(srv.data_dir), options={**srv.options(), **extra},
                   secrets=srv.secrets())


def take_snapshot(plugin: MariaDBPlugin, spec: AppSpec, dst: Path, epoch: int,
                  w: MariaTransfers | None = None) -> dict[str, Any]:
    h = plugin.quiesce(spec, epoch=epoch, lease_s=30)
    t1 = time.monotonic()
    copy_tree_live(Path(spec.data_dir), dst, ("mariadb.pid",))
    if w is not None:
        time.sleep(0.2)  # give blocked writers a chance to (wrongly) commit
    t2 = time.monotonic()
    res = plugin.unquiesce(spec, epoch=epoch)
    assert res.changed, res.message
    if w is not None:
        assert w.log.ended_during_hold(t1, t2) == 0, "a transfer committed while BACKUP STAGE BLOCK_COMMIT was held"
    return {**h.info, **res.info}


@pytest.fixture
def snapdir() -> Any:
    d = owned_tempdir("frieze-masnap-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_snapshots(snapdir: Path, n: int) -> None:
    plugin = MariaDBPlugin()
    with mariadb_server() as m:
        snaps = []
        with MariaTransfers(m, threads=3) as w:
            time.sleep(0.5)
            for i in range(n):
                # The last snapshot uses the FLUSH TABLES WITH READ LOCK fallback (what MySQL gets).
                spec = spec_of(m, method="ftwrl") if i == n - 1 else spec_of(m)
                snaps.append((snapdir / f"s{i}", take_snapshot(plugin, spec, snapdir / f"s{i}", i + 1, w)))
                time.sleep(0.4)
        assert not [e for e in w.log.errors if not e.startswith("retry")], w.log.errors[:3]
        assert maria_sum(m) == (MariaTransfers.total(), MariaTransfers.ACCOUNTS)
        for i, (dst, info) in enumerate(snaps):
            with mariadb_restored_copy(dst, m.password) as r:
                total, n = maria_sum(r)
                logged = r.sql("SELECT COUNT(*) FROM commit_log")[0][0]
                v = plugin.verify(spec_of(r, "maria-restored"))
                method = info["method"].replace(" ", "_")
                print(f"RESULT MA-SNAP{i} method={method} commits={logged} total={total} accounts={n}"
                      f" tables_ok={v.info['tables_ok']}"
                      f" quiesce_ms={info['quiesce_ms']} held_ms={info['held_ms']} binlog={info['binlog_start']}")
                assert (total, n) == (MariaTransfers.total(), MariaTransfers.ACCOUNTS)
                assert v.info["ok"]
        assert snaps[-1][1]["method"] == "FTWRL" and snaps[0][1]["method"].startswith("BACKUP STAGE")


def test_snapshots_under_transfers_restore_consistent(snapdir: Path) -> None:
    run_snapshots(snapdir, 3)


@pytest.mark.heavy
def test_snapshots_under_transfers_restore_consistent_many(snapdir: Path) -> None:
    run_snapshots(snapdir, 15)


class PopenSpy(subprocess.Popen):  # type: ignore[type-arg]
    """Records the argv and environment of every child process started while installed."""

    seen: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, args: Any, *a: Any, **kw: Any) -> None:
        env = kw.get("env")
        PopenSpy.seen.append((repr(args), repr(env if env is not None else dict(os.environ))))
        super().__init__(args, *a, **kw)


def test_binlog_pitr_lands_exactly_on_time_and_position(snapdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = MariaDBPlugin()
    monkeypatch.setattr(subprocess, "Popen", PopenSpy)
    PopenSpy.seen.clear()
    with mariadb_server() as m:
        spec = spec_of(m)
        with MariaTransfers(m, threads=3, pause_s=0.01) as w:
            time.sleep(0.3)
            info = take_snapshot(plugin, spec, snapdir / "base", 1)
            time.sleep(2.6)
        assert w.log.count() > 0
        # A position target with the writers stopped: exactly the rows committed before it.
        f, pos = m.sql("SHOW MASTER STATUS")[0][:2]
        rows_at_pos = {int(r[0]) for r in m.sql("SELECT id FROM commit_log")}
        c = m.connect()
        with c.cursor() as cur:
            for _ in range(20):
                cur.execute("INSERT INTO commit_log (src, dst, amount, ts, ts_unix) VALUES (0, 0, 0, NOW(), 0)")
        c.close()
        log = m.sql("SELECT id, ts_unix FROM commit_log WHERE ts_unix > 0 ORDER BY id")
        all_rows = {int(r[0]) for r in m.sql("SELECT id FROM commit_log")}
        seconds = sorted({int(t) for _, t in log})
        assert len(seconds) >= 3, seconds
        target_s = seconds[len(seconds) // 2]
        expect_time = {int(i) for i, t in log if int(t) <= target_s}
        at_snapshot = None
        cases = [
            ("time", RecoveryTarget(time=datetime.fromtimestamp(target_s, UTC).isoformat()), expect_time),
            ("position", RecoveryTarget(position=f"{f}:{pos}"), rows_at_pos),
            ("end", RecoveryTarget(), all_rows),
        ]
        for label, target, expected in cases:
            with mariadb_restored_copy(snapdir / "base", m.password) as r:
                at_snapshot = at_snapshot or len(r.sql("SELECT id FROM commit_log"))
                rspec = spec_of(r, "maria-pitr", binlog_dir=str(m.data_dir), binlog_start=info["binlog_start"])
                res = plugin.recover(rspec, target)
                assert res.changed
                again = plugin.recover(rspec, target)  # replay is not idempotent: a second call must do nothing
                assert not again.changed
                got = {int(x[0]) for x in r.sql("SELECT id FROM commit_log")}
                total, n = maria_sum(r)
                missing, extra = expected - got, got - expected
                print(f"RESULT MA-PITR-{label} at_snapshot={at_snapshot} expected={len(expected)} got={len(got)}"
                      f" missing={len(missing)} extra={len(extra)} total={total} replay_s={res.info['seconds']}")
                assert not missing and not extra, (label, sorted(missing)[:5], sorted(extra)[:5])
                assert (total, n) == (MariaTransfers.total(), MariaTransfers.ACCOUNTS)
        assert at_snapshot is not None and at_snapshot < len(expect_time)

        # Bad input: a clear error, nothing replayed, no marker written.
        with pytest.raises(NotSupported):
            plugin.recover(spec, RecoveryTarget(name="rp1"))
        with pytest.raises(UsageError):
            plugin.recover(spec, RecoveryTarget())  # no binlog_start
        for start, target in (("nonsense", RecoveryTarget()), (info["binlog_start"], RecoveryTarget(time="2026-01-01")),
                              (info["binlog_start"], RecoveryTarget(position="binlog.000001"))):
            with pytest.raises(UsageError):
                plugin.recover(spec_of(m, binlog_dir=str(m.data_dir), binlog_start=start), target)
        with pytest.raises(NotFound):
            plugin.recover(spec_of(m, binlog_dir=str(m.data_dir), binlog_start="binlog.000099:4"), RecoveryTarget())
        assert not (m.data_dir / "frieze-recovered.json").exists()

        # Tools get the password through a 0600 defaults file: quoting must survive odd characters.
        odd = 'a"b\\c\'d$e #f;g'
        sql_pw = odd.replace("\\", "\\\\").replace("'", "''")
        m.root_sql(f"CREATE USER 'odd'@'localhost' IDENTIFIED BY '{sql_pw}'; GRANT ALL ON *.* TO 'odd'@'localhost';")
        oddspec = AppSpec("maria-odd", "mariadb", str(m.data_dir), options={**m.options(), "user": "odd"},
                          secrets={"password": odd})
        assert plugin.verify(oddspec).info["ok"]

        # No child (mariadb-binlog, mariadb, mariadb-check, mariadbd) ever saw a password in argv or environment.
        tools = [a for a, _ in PopenSpy.seen if "mariadb-binlog" in a or "mariadb-check" in a]
        assert len(tools) >= 4, PopenSpy.seen
        for argv, env in PopenSpy.seen:
            for secret in (m.password, odd):
                assert secret not in argv and secret not in env
