"""Several coordinators, one schedule: two coordinator PROCESSES share one PostgreSQL (catalog and engine
database, as DESIGN.md prescribes for several coordinators) and race over the due ticks of a policy with
three scheduler threads each, at the same instant. One tick was claimed by a coordinator that died before
submitting (an orphan). Every tick must start exactly one backup: one operation, one restore point, no
duplicate; the orphan is taken over by exactly one of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.pg import pg_available, postgres

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not pg_available(), reason="PostgreSQL 15 binaries are not installed")]

ROOT = Path(__file__).resolve().parents[2]


def test_two_coordinator_processes_start_each_tick_exactly_once(tmp_path: Path) -> None:
    import sqlite3

    from frieze.coordinator.catalog.models import Policy, ScheduleRun
    from frieze.coordinator.config import CoordinatorConfig
    from frieze.coordinator.scheduler import due_ticks
    from frieze.coordinator.service import Coordinator
    from frieze.core.clock import iso, now
    from tests.coordinator.support import cheap_params

    with postgres(tmp_path) as pg:
        catalog = pg.create_database("catalog")
        engine = pg.create_database("engine")
        vol = tmp_path / "vol"
        vol.mkdir()
        conn = sqlite3.connect(vol / "app.db")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE counter (n INTEGER PRIMARY KEY, t REAL)")
        conn.commit()
        conn.close()
        # provisioning, as an admin would do it through any one coordinator (no engine here)
        boot = Coordinator(CoordinatorConfig(state_dir=tmp_path / "boot", catalog_url=catalog, scheduler=False),
                           start_engine=False)
        boot.repos.init_params = cheap_params()
        boot.create_host("h1", "local")
        boot.registry.heartbeat("h1", None, "0.1.0")
        boot.resources.create_volume("h1", "v1", str(vol), "copy")
        boot.create_app("h1", "counter", "sqlite", str(vol), "v1", {"db": "app.db"}, {})
        boot.create_repository("r1", f"file://{tmp_path}/repo", "pw-multi-coordinator", True, {})
        boot.resources.create_protection_set("ps1", ["counter"], [])
        pol = boot.create_policy("every-minute", "ps1", "r1", "* * * * *", "Europe/Berlin", "application", "abort",
                                 30.0, {}, 0)
        at = now()
        created = at - timedelta(minutes=4, seconds=30)
        ticks = [iso(t) for t in due_ticks("* * * * *", "Europe/Berlin", created, at + timedelta(seconds=8))]
        with boot.catalog.session() as s:
            p = s.get(Policy, pol["id"])
            assert p is not None
            p.created_at = created
            # the second tick was claimed by a coordinator that died before it submitted
            s.add(ScheduleRun(policy_id=pol["id"], tick=ticks[1], claimed_by="coord-dead",
                              created_at=at - timedelta(minutes=3)))
        boot.close()
        ctl = tmp_path / "ctl"
        ctl.mkdir()
        procs = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRIEZE_")}
        try:
            for ex in ("coord-a", "coord-b"):
                st = tmp_path / ex
                st.mkdir(mode=0o700)
                shutil.copy2(tmp_path / "boot" / "master.key", st / "master.key")  # one vault key for all
                log = open(tmp_path / f"{ex}.log", "wb")  # noqa: SIM115 - the child's for its life
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tests.coordinator.sched_proc", str(st), catalog, engine, ex,
                     str(tmp_path / "snaps"), str(ctl)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
                log.close()
                deadline = time.monotonic() + 90
                while not (ctl / f"ready-{ex}").exists():
                    assert procs[-1].poll() is None, (tmp_path / f"{ex}.log").read_text()[-3000:]
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            (ctl / "go").write_text("1")
            deadline = time.monotonic() + 60
            while not all((ctl / f"submitted-{ex}.json").exists() for ex in ("coord-a", "coord-b")):
                assert all(p.poll() is None for p in procs), [(tmp_path / f"{e}.log").read_text()[-3000:]
                                                            for e in ("coord-a", "coord-b")]
                assert time.monotonic() < deadline
                time.sleep(0.1)
            submitted = {ex: json.loads((ctl / f"submitted-{ex}.json").read_text()) for ex in ("coord-a", "coord-b")}
            eng = sa.create_engine("postgresql+psycopg://" + engine.split("://", 1)[1])
            cat = sa.create_engine("postgresql+psycopg://" + catalog.split("://", 1)[1])
            deadline = time.monotonic() + 180
            while True:
                with eng.connect() as c:
                    rows = c.execute(sa.text("SELECT id, state, args_json FROM frieze_engine_ops "
                                             "WHERE type = 'backup'")).all()
                if rows and all(r[1] in ("complete", "failed", "canceled") for r in rows):
                    break
                assert time.monotonic() < deadline, rows
                time.sleep(0.3)
            with cat.connect() as c:
                rps = c.execute(sa.text("SELECT operation_id, label FROM restore_points")).all()
                runs = {r[0]: (r[1], r[2], r[3]) for r in c.execute(sa.text(
                    "SELECT tick, op_id, claimed_by, claim_no FROM schedule_runs"))}
            eng.dispose()
            cat.dispose()
        finally:
            (ctl / "stop").write_text("1")
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        due = [t for t in ticks if t in runs]
        per_tick: dict[str, list[str]] = {}
        later: dict[str, list[str]] = {}  # ticks that fell due after the window the test computed (a slow run)
        for op_id, state, args in rows:
            a = json.loads(args)
            if a["scheduled_for"] not in ticks:
                assert a["scheduled_for"] > ticks[-1], a
                later.setdefault(a["scheduled_for"], []).append(op_id)
                continue
            assert state == "complete", (op_id, state)
            per_tick.setdefault(a["scheduled_for"], []).append(op_id)
        assert all(len(v) == 1 for v in later.values()), later
        labels = [json.loads(lb) if isinstance(lb, str) else lb for _o, lb in rps]
        rp_ticks = sorted(t for t in (lb["scheduled_for"] for lb in labels) if t in ticks)
        ids = [o for ex in submitted.values() for o in ex]
        print(f"RESULT SCHED-MULTI coordinators=2 threads=6 ticks={len(due)} operations={len(rows)} "
              f"restore_points={len(rps)} duplicates={len(rows) - len(per_tick) - len(later)} "
              f"submitted_a={len(submitted['coord-a'])} submitted_b={len(submitted['coord-b'])} "
              f"orphan_taken_by={runs[ticks[1]][1]}")
        assert len(due) >= 4 and ticks[1] in due
        assert sorted(per_tick) == sorted(due) and all(len(v) == 1 for v in per_tick.values()), per_tick
        assert rp_ticks == sorted(due), "one restore point per tick"
        assert len(ids) == len(set(ids)) == len(due) + sum(map(len, later.values())), submitted
        assert all(runs[t][0] == per_tick[t][0] for t in due), "each tick is bound to its one operation"
        assert runs[ticks[1]][1] in ("coord-a", "coord-b") and runs[ticks[1]][2] == 1, "one takeover of the orphan"
