"""The backup and restore workflows in-process: real engine (DBOS on SQLite), real repository library,
real SQLite app under write load; the agent is an in-process stand-in (tests/coordinator/local_port.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from frieze.core.errors import AlreadyExists
from tests.coordinator.local_port import LocalPort
from tests.coordinator.support import CounterApp, coordinator, provision

pytestmark = pytest.mark.timeout(180)


def _count(db: Path) -> tuple[str, int]:
    conn = sqlite3.connect(db)
    try:
        ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
        n = conn.execute("SELECT count(*) FROM counter").fetchone()[0]
        return ok, n
    finally:
        conn.close()


def test_backup_restore_application_consistent(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = LocalPort("h1", tmp_path / "snaps")
    for d in ("static/a", "static/b"):  # unchanged between backups: the second keeps them unwalked
        (vol / d).mkdir(parents=True)
        for i in range(5):
            (vol / d / f"f{i}").write_text(f"{d} {i}\n")
    with coordinator(tmp_path, port) as c, CounterApp(vol / "app.db") as app:
        provision(c, vol, f"file://{tmp_path}/repo")
        acc = c.submit_backup("ps1", None, "r1", None)
        st = c.engine.wait(acc["operation_id"], timeout=120)
        assert st.state.value == "complete", (st.error, st.undo_errors)
        # a second backup: the mover hands the backup what its ingest changed, the rest is the parent's
        acc_b = c.submit_backup("ps1", None, "r1", None)
        st_b = c.engine.wait(acc_b["operation_id"], timeout=120)
        assert st_b.state.value == "complete", (st_b.error, st_b.undo_errors)
        lines = [x["message"] for x in c.operation_logs(acc_b["operation_id"], 0)]
        assert any("paths changed since the parent snapshot" in x for x in lines), lines
        assert any("1 directories kept from the parent unwalked" in x for x in lines), lines
        # its restore point's size counts the kept files too (the parent's figures stand in for them)
        rp_b = c.resources.get_restore_point(
            c.operation_status(acc_b["operation_id"])["result"]["restore_point_id"])
        listed = c.list_files(rp_b["id"], None, "", True)
        assert any(e["path"].startswith("static/a/") for e in listed)
        assert rp_b["bytes_total"] == sum(e["size"] or 0 for e in listed if e["type"] == "file")
        res = c.operation_status(acc["operation_id"])["result"]
        rp = c.resources.get_restore_point(res["restore_point_id"])
        assert rp["consistency"] == "application-consistent"
        assert rp["label"]["freeze"][0]["frozen_ms"] > 0
        f = rp["label"]["freeze"][0]
        assert f["quiesce_sent"] <= f["frozen_from"] <= f["frozen_until"] <= f["thawed_by"], f
        assert rp["label"]["consistent_instant"]["overlap"] is True
        assert not port.frozen
        n_before = app.n
        target = tmp_path / "restored"
        acc2 = c.submit_restore(rp["id"], None, None, str(target), [], False)
        st2 = c.engine.wait(acc2["operation_id"], timeout=120)
        assert st2.state.value == "complete", st2.error
        restored = (target / "app.db").read_bytes()  # before SQLite opens it (a WAL would be folded in)
        ok, n = _count(target / "app.db")
        assert ok == "ok" and 0 < n <= n_before
        from prometheus_client import generate_latest

        from frieze.coordinator.metrics import REGISTRY

        text = generate_latest(REGISTRY).decode()
        assert 'frieze_restore_points_total{consistency="application-consistent"}' in text
        assert 'frieze_freeze_window_seconds_count{kind="sqlite"}' in text
        # chosen paths only, to another place
        part = tmp_path / "partial"
        st5 = c.engine.wait(c.submit_restore(rp["id"], "v1", "h1", str(part), ["app.db"], False)["operation_id"],
                            timeout=120)
        assert st5.state.value == "complete", st5.error
        assert sorted(p.name for p in part.iterdir()) == ["app.db"]
        # access through the coordinator: browse the restore point and read a file from the repository
        names = {e["path"]: e for e in c.list_files(rp["id"], None, "", False)}
        assert "app.db" in names and names["app.db"]["type"] == "file"
        size, chunks = c.read_file(rp["id"], "v1", "app.db")
        assert b"".join(chunks) == restored and size == names["app.db"]["size"]
        # a second restore to the same (now non-empty) place is refused at once and changes nothing
        mtime = (target / "app.db").stat().st_mtime_ns
        n_ops = len(c.engine.list())
        with pytest.raises(AlreadyExists, match="exists and is not empty"):
            c.submit_restore(rp["id"], None, None, str(target), [], False)
        assert len(c.engine.list()) == n_ops
        assert (target / "app.db").stat().st_mtime_ns == mtime
        # recover: the SQLite plug-in cannot go to a point in time; the operation says so
        acc4 = c.submit_recover("counter", None, "2026-01-01T00:00:00Z", None, None)
        st4 = c.engine.wait(acc4["operation_id"], timeout=60)
        assert st4.state.value == "failed" and st4.error["code"] == "not_supported"
        print(f"RESULT W1 consistency={rp['consistency']} freeze_ms={rp['label']['freeze'][0]['frozen_ms']:.1f} "
              f"bytes={rp['bytes_total']} rows={n}")


def test_quiesce_failure_aborts_and_thaws(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = LocalPort("h1", tmp_path / "snaps", fail_quiesce={"counter"})
    with coordinator(tmp_path, port) as c, CounterApp(vol / "app.db"):
        provision(c, vol, f"file://{tmp_path}/repo")
        acc = c.submit_backup("ps1", None, "r1", None)
        st = c.engine.wait(acc["operation_id"], timeout=120)
        assert st.state.value == "failed"
        assert st.error["code"] == "deadline_exceeded"
        assert not port.frozen
        assert c.resources.list_restore_points() == []
        assert any(x.startswith("unquiesce counter") for x in port.calls)


def test_corrupt_transfer_is_refused(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = LocalPort("h1", tmp_path / "snaps", corrupt="app.db")
    with coordinator(tmp_path, port) as c, CounterApp(vol / "app.db"):
        provision(c, vol, f"file://{tmp_path}/repo")
        acc = c.submit_backup("ps1", None, "r1", None)
        st = c.engine.wait(acc["operation_id"], timeout=120)
        assert st.state.value == "failed" and st.error["code"] == "integrity"
        assert c.resources.list_restore_points() == []
        assert not list((tmp_path / "snaps").glob("*/*")), "host snapshots are deleted by undo"


def test_old_agent_is_upgraded_first_or_refused(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = LocalPort("h1", tmp_path / "snaps", version="0.0.9")
    with coordinator(tmp_path, port) as c, CounterApp(vol / "app.db"):
        provision(c, vol, f"file://{tmp_path}/repo")
        acc = c.submit_backup("ps1", None, "r1", None)
        st = c.engine.wait(acc["operation_id"], timeout=120)
        assert st.state.value == "failed" and "older than the required 0.1.0" in st.error["message"]
        assert not any(x.startswith("quiesce") for x in port.calls), "nothing is asked of an old agent"
        dist = tmp_path / "frieze-0.1.0-py3-none-any.whl"
        dist.write_bytes(b"not really a wheel")
        c.config.agent_dist = dist
        c.agents.close()
        acc = c.submit_backup("ps1", None, "r1", None)
        st = c.engine.wait(acc["operation_id"], timeout=120)
        assert st.state.value == "complete", st.error
        assert port.calls.index(f"upgrade {dist.name}") < next(
            i for i, x in enumerate(port.calls) if x.startswith("quiesce"))


def test_scheduled_ticks_start_exactly_once(tmp_path: Path) -> None:
    """Two schedulers (as two coordinators would) race over the same catalog: each tick of a policy starts
    one backup, never two; a later pass starts nothing new."""
    from datetime import timedelta

    from frieze.coordinator.catalog.models import Policy
    from frieze.coordinator.scheduler import Scheduler
    from frieze.core.clock import now

    vol = tmp_path / "vol"
    vol.mkdir()
    port = LocalPort("h1", tmp_path / "snaps")
    with coordinator(tmp_path, port) as c, CounterApp(vol / "app.db"):
        provision(c, vol, f"file://{tmp_path}/repo")
        c.create_policy("every-minute", "ps1", "r1", "* * * * *", "Europe/Berlin", "application", "abort", 30.0,
                        {"keep_last": 1}, 0)
        with c.catalog.session() as s:
            for p in s.query(Policy).all():
                p.created_at = now() - timedelta(minutes=3, seconds=30)
        a, b = Scheduler(c), Scheduler(c)
        at = now()
        import threading

        got: list[list[str]] = []
        ts = [threading.Thread(target=lambda s=s: got.append(s.tick(at))) for s in (a, b, a, b)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        from frieze.coordinator.scheduler import due_ticks

        with c.catalog.session() as s:
            created = s.query(Policy).one().created_at
        expected = due_ticks("* * * * *", "Europe/Berlin", created.replace(tzinfo=at.tzinfo), at)
        ops = [o for g in got for o in g]
        assert len(expected) in (3, 4) and len(ops) == len(set(ops)) == len(expected), got
        assert a.tick(at) == [] and b.tick(at) == []
        for op in ops:
            assert c.engine.wait(op, timeout=120).state.value == "complete"
        rps = c.resources.list_restore_points()
        assert len(rps) == 1, "retention keep_last=1 forgot the older restore points"
        assert {x["label"]["scheduled_for"] for x in rps} <= {c.engine.status(o).args["scheduled_for"] for o in ops}


def test_cancel_mid_backup_runs_the_undo_path(tmp_path: Path) -> None:
    import time

    vol = tmp_path / "vol"
    vol.mkdir()
    port = LocalPort("h1", tmp_path / "snaps", slow_snapshot_s=2.0)
    with coordinator(tmp_path, port) as c, CounterApp(vol / "app.db") as app:
        provision(c, vol, f"file://{tmp_path}/repo")
        op = c.submit_backup("ps1", None, "r1", None)["operation_id"]
        deadline = time.monotonic() + 60
        while c.engine.status(op).step != "snapshot":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert port.frozen, "the app is quiesced while the snapshot runs"
        assert c.cancel_operation(op)["state"] in ("aborting", "canceled")
        st = c.engine.wait(op, timeout=60)
        assert st.state.value == "canceled", st
        assert not port.frozen and c.resources.list_restore_points() == []
        assert not list((tmp_path / "snaps").glob("*/*")), "the snapshot made before the cancel is deleted"
        n = app.n
        deadline = time.monotonic() + 10  # the app writes again (a commit may stall a while on a loaded machine)
        while app.n <= n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.n > n


def test_honest_labels_quiesce_skipped_and_crash(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    port = LocalPort("h1", tmp_path / "snaps", fail_quiesce={"counter"})
    with coordinator(tmp_path, port) as c, CounterApp(vol / "app.db"):
        provision(c, vol, f"file://{tmp_path}/repo")
        c.create_policy("go-on", "ps1", "r1", None, "UTC", "application", "continue", 30.0, {}, 0)
        st = c.engine.wait(c.submit_backup("ps1", "go-on", None, None)["operation_id"], timeout=120)
        assert st.state.value == "complete", st.error
        rp = c.resources.list_restore_points()[-1]
        assert rp["consistency"] == "quiesce-skipped"
        assert rp["label"]["skipped"] == [{"app": "counter", "reason": "quiesce of counter timed out"}]
        st = c.engine.wait(c.submit_backup("ps1", None, "r1", "crash")["operation_id"], timeout=120)
        assert st.state.value == "complete", st.error
        rp = c.resources.list_restore_points()[-1]
        assert rp["consistency"] == "crash-consistent" and rp["label"]["reason"] == "no quiesce was asked for"
        assert not port.frozen
