"""Admission limits per host, per repository and per policy (through the engine's admission control),
the undo of the recording segment, the operations-finished metric, and the scheduler's orphan takeover.

Real engine (DBOS on SQLite), real repository library, real SQLite databases; the agent is the in-process
stand-in (tests/coordinator/local_port.py) with a counter of snapshots running at once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from frieze.coordinator.agents import VolumeRef
from frieze.coordinator.metrics import REGISTRY
from frieze.coordinator.service import Coordinator
from tests.coordinator.local_port import LocalPort
from tests.coordinator.support import coordinator

pytestmark = pytest.mark.timeout(240)


class CountingPort(LocalPort):
    """LocalPort that records how many snapshots run at once, per host of the catalog."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.running = 0
        self.peak = 0
        self._n = threading.Lock()

    def snapshot(self, volume: VolumeRef, *, snap_id: str, epoch: int) -> dict[str, Any]:
        with self._n:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            return super().snapshot(volume, snap_id=snap_id, epoch=epoch)
        finally:
            with self._n:
                self.running -= 1


def _db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS counter (n INTEGER PRIMARY KEY, t REAL)")
    conn.execute("INSERT INTO counter (t) VALUES (1.0)")
    conn.commit()
    conn.close()


def _fleet(c: Coordinator, tmp: Path, n: int, *, hosts: int = 1) -> None:
    """``n`` protection sets ps0..ps{n-1}, each one SQLite app on its own volume, spread over ``hosts``."""
    for h in range(hosts):
        c.create_host(f"h{h}", "local")
        c.registry.heartbeat(f"h{h}", None, "0.1.0")
    for i in range(n):
        host = f"h{i % hosts}"
        vol = tmp / f"vol{i}"
        _db(vol / "app.db")
        c.resources.create_volume(host, f"v{i}", str(vol), "copy")
        c.create_app(host, f"a{i}", "sqlite", str(vol), f"v{i}", {"db": "app.db"}, {})
        c.resources.create_protection_set(f"ps{i}", [f"a{i}"], [])
    c.create_repository("r1", f"file://{tmp}/repo", "pw-limits", True, {})
    c.create_repository("r2", f"file://{tmp}/repo2", "pw-limits", True, {})


def _run_all(c: Coordinator, reqs: list[tuple[str, str | None, str | None]]) -> list[Any]:
    ops = [c.submit_backup(ps, pol, repo, None)["operation_id"] for ps, pol, repo in reqs]
    sts = [c.engine.wait(op, timeout=180) for op in ops]
    assert all(st.state.value == "complete" for st in sts), [(st.state, st.error) for st in sts]
    return sts


def test_limits_per_host_repository_and_policy(tmp_path: Path) -> None:
    # 2 s a snapshot: the three that may overlap do, even if their starts spread over a second under load
    port = CountingPort("h0", tmp_path / "snaps", slow_snapshot_s=2.0)
    with coordinator(tmp_path, port) as c:
        _fleet(c, tmp_path, 3)
        peaks = {}
        # host h0 may run 1 backup at a time: three sets on it are serialized
        c.resources.set_host_limit("h0", 1)
        t0 = time.monotonic()
        sts = _run_all(c, [("ps0", None, "r1"), ("ps1", None, "r2"), ("ps2", None, "r1")])
        peaks["host=1"] = (port.peak, round(time.monotonic() - t0, 1))
        assert port.peak == 1, "the host allows one backup at a time"
        held = [(k, n) for st in sts for k, n in st.resources.counted if k.startswith("limit:host:")]
        assert len(held) == 3 and len(set(held)) == 1 and held[0][1] == 1, held  # one key, the host's limit
        # host 3 and repositories 2: two sets into r1 plus one into r2 run together
        c.resources.set_host_limit("h0", 3)
        port.peak = 0
        _run_all(c, [("ps0", None, "r1"), ("ps1", None, "r1"), ("ps2", None, "r2")])
        peaks["host=3,repo=2"] = (port.peak,)
        assert port.peak == 3
        # repository r1 allows one: three sets into r1 are serialized although the host allows three
        c.resources.set_repository_limit("r1", 1)
        port.peak = 0
        _run_all(c, [("ps0", None, "r1"), ("ps1", None, "r1"), ("ps2", None, "r1")])
        peaks["repo=1"] = (port.peak,)
        assert port.peak == 1
        # policies with max_per_host=1 narrow the host's 3: their backups never overlap on the host
        c.resources.set_repository_limit("r1", 3)
        for i in range(3):
            c.create_policy(f"p{i}", f"ps{i}", "r1", None, "UTC", "application", "abort", 30.0, {}, 0,
                            max_per_host=1)
        port.peak = 0
        _run_all(c, [("ps0", "p0", None), ("ps1", "p1", None), ("ps2", "p2", None)])
        peaks["policy max_per_host=1"] = (port.peak,)
        assert port.peak == 1
        # the limits are visible in the views
        assert c.resources.get_host("h0")["max_concurrent"] == 3
        assert c.resources.get_policy("p0")["max_per_host"] == 1
        # operations finished are counted once each, by type and state
        c.refresh_gauges()
        text = generate_latest(REGISTRY).decode()
        line = next(ln for ln in text.splitlines()
                    if ln.startswith('frieze_operations_finished_total{state="complete",type="backup"}'))
        assert float(line.split()[-1]) >= 12
        c.refresh_gauges()
        assert next(ln for ln in generate_latest(REGISTRY).decode().splitlines() if ln.startswith(
            'frieze_operations_finished_total{state="complete",type="backup"}')) == line, "counted once"
        print(f"RESULT LIMITS peaks={peaks}")


def test_failure_while_recording_undoes_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure in record_restore_point after its row was committed: the undo path deletes the row, forgets
    the repository snapshots and deletes the host snapshots; the app is not left frozen."""
    from frieze.coordinator.workflows import backup as B

    class Broken:
        def labels(self, *_a: object) -> Any:
            raise RuntimeError("metrics backend went away")

    port = LocalPort("h0", tmp_path / "snaps")
    with coordinator(tmp_path, port) as c:
        _fleet(c, tmp_path, 1)
        monkeypatch.setattr(B, "RESTORE_POINTS", Broken())
        op = c.submit_backup("ps0", None, "r1", None)["operation_id"]
        st = c.engine.wait(op, timeout=120)
        assert st.state.value == "failed" and st.error["task"] == "record_restore_point", st.error
        assert st.undo_errors == []
        msgs = [ln.message for ln in c.engine.logs(op)]
        assert any("deleted the restore point" in m for m in msgs), msgs
        assert c.resources.list_restore_points() == []
        with c.repos.open(c.resources.get_repository("r1")["id"]) as repo:
            assert [s.id for s in repo.list_snapshots() if f"op:{op}" in s.tags] == []
        assert not list((tmp_path / "snaps").glob("*/*")), "host snapshots are deleted by undo"
        assert not port.frozen
        c.count_finished()
        text = generate_latest(REGISTRY).decode()
        assert 'frieze_operations_finished_total{state="failed",type="backup"}' in text
        monkeypatch.undo()
        st = c.engine.wait(c.submit_backup("ps0", None, "r1", None)["operation_id"], timeout=120)
        assert st.state.value == "complete" and len(c.resources.list_restore_points()) == 1


def test_orphaned_tick_is_taken_over_once_and_duplicates_do_nothing(tmp_path: Path) -> None:
    """A tick claimed by a coordinator that died before submitting: several schedulers race to take it
    over and exactly one submits. An operation for a tick already bound to another stops with a conflict
    before it quiesces anything."""
    from frieze.coordinator.catalog.models import Policy, ScheduleRun
    from frieze.coordinator.scheduler import Scheduler
    from frieze.core.clock import iso, now

    port = LocalPort("h0", tmp_path / "snaps")
    with coordinator(tmp_path, port) as c:
        _fleet(c, tmp_path, 1)
        pol = c.create_policy("hourly", "ps0", "r1", "0 * * * *", "UTC", "application", "abort", 30.0, {}, 0)
        tick = iso((now() - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0))
        with c.catalog.session() as s:
            s.get(Policy, pol["id"]).created_at = now() - timedelta(minutes=30)  # type: ignore[union-attr]
            s.add(ScheduleRun(policy_id=pol["id"], tick=tick, claimed_by="coord-dead",
                              created_at=now() - timedelta(minutes=5)))
        scheds = [Scheduler(c, orphan_after_s=60) for _ in range(4)]
        barrier = threading.Barrier(len(scheds))
        got: list[list[str]] = []

        def race(sc: Scheduler) -> None:
            barrier.wait()
            got.append(sc._orphans(pol["id"], "hourly", pol["protection_set_id"], now()))

        ts = [threading.Thread(target=race, args=(sc,)) for sc in scheds]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        ops = [o for g in got for o in g]
        assert len(ops) == 1, got
        with c.catalog.session() as s:
            row = s.get(ScheduleRun, (pol["id"], tick))
            assert row is not None and row.op_id == ops[0] and row.claim_no == 1
        assert c.engine.wait(ops[0], timeout=120).state.value == "complete"
        # a second operation for the same tick (as a coordinator that stalled would submit) does nothing
        calls = len(port.calls)
        dup = c.submit_backup("ps0", "hourly", None, None, scheduled_for=tick)["operation_id"]
        st = c.engine.wait(dup, timeout=60)
        assert st.state.value == "failed" and st.error["code"] == "conflict" and ops[0] in st.error["message"]
        assert port.calls[calls:] == [], "the duplicate touched no app"
        assert len(c.resources.list_restore_points()) == 1
