"""The task model, idempotence and epochs through the real agent process (agent-protocol.md §3, §4)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from frieze.core.errors import Conflict, NotFound, StaleEpoch
from tests.agent.support import Agent


def test_task_polling(agent: Agent) -> None:
    with agent.client() as c:
        t0 = time.monotonic()
        t = c.discover()
        submit_ms = (time.monotonic() - t0) * 1000
        assert t.id.startswith("tsk_") and t.state in ("pending", "running", "done")
        assert t.action == "discover" and t.target == "host"
        done = c.wait(t.id)
        assert done.state == "done" and done.finished_at is not None and done.result is not None
        vols = {v["name"]: v for v in done.result["volumes"]}
        assert vols["v1"]["provider_supported"] is True and vols["v1"]["fs_type"]
        assert vols["gone"]["exists"] is False
        assert c.task(t.id).state == "done"
        with pytest.raises(NotFound):
            c.task("tsk_doesnotexist")
        print(f"RESULT T1 submit_ms={submit_ms:.1f}")


def test_quiesce_returns_at_once_and_holds(agent: Agent) -> None:
    """The quiesce task is answered before it finishes; while held, a writer waits; after unquiesce it goes on."""
    db = agent.config.parent / "data" / "vol" / "app.db"
    with agent.client() as c:
        t = c.wait(c.quiesce("db1", epoch=100, lease_s=10).id)
        assert t.changed is True and t.result is not None and t.result["epoch"] == 100
        wrote = threading.Event()

        def writer() -> None:
            conn = sqlite3.connect(db, timeout=10)
            conn.execute("INSERT INTO t (v) VALUES ('during')")
            conn.commit()
            conn.close()
            wrote.set()

        th = threading.Thread(target=writer)
        th.start()
        assert not wrote.wait(0.5), "a write went through while the app was quiesced"
        u = c.wait(c.unquiesce("db1", epoch=100).id)
        assert u.changed is True and u.result is not None and u.result["lease_held"] is True
        assert u.result["frozen_ms"] >= 500
        th.join(10)
        assert wrote.is_set()


def test_idempotent_calls(agent: Agent) -> None:
    with agent.client() as c:
        # unquiesce when not quiesced
        u = c.wait(c.unquiesce("db1", epoch=200).id)
        assert u.state == "done" and u.changed is False and "not quiesced" in u.message
        # quiesce twice with the same epoch: the second changes nothing
        q1 = c.wait(c.quiesce("db1", epoch=200, lease_s=10).id)
        q2 = c.wait(c.quiesce("db1", epoch=200, lease_s=10).id)
        assert q1.changed is True and q2.changed is False and "already quiesced" in q2.message
        # snapshot twice with the same id
        s1 = c.wait(c.snapshot("v1", snap_id="idem", epoch=200).id)
        s2 = c.wait(c.snapshot("v1", snap_id="idem", epoch=200).id)
        assert s1.changed is True and s2.changed is False and "already exists" in s2.message
        assert s1.result == s2.result
        u1 = c.wait(c.unquiesce("db1", epoch=200).id)
        u2 = c.wait(c.unquiesce("db1", epoch=200).id)
        assert u1.changed is True and u2.changed is False
        # delete twice
        d1 = c.wait(c.delete_snapshot("v1", "idem").id)
        d2 = c.wait(c.delete_snapshot("v1", "idem").id)
        assert d1.changed is True and d2.changed is False and "does not exist" in d2.message
        # a retried POST with the same Idempotency-Key is the same task
        k1 = c.snapshot("v1", snap_id="idem-key", epoch=200, idempotency_key="k-1")
        k2 = c.snapshot("v1", snap_id="idem-key", epoch=200, idempotency_key="k-1")
        assert k1.id == k2.id
        c.wait(k1.id)
        c.wait(c.delete_snapshot("v1", "idem-key").id)


def test_stale_and_conflicting_epochs(agent: Agent) -> None:
    with agent.client() as c:
        c.wait(c.quiesce("db1", epoch=300, lease_s=10).id)
        # another epoch while held: the task fails with conflict (the plug-in's rule), nothing released
        with pytest.raises(Conflict):
            c.wait(c.quiesce("db1", epoch=301, lease_s=10).id)
        # unquiesce with the wrong epoch is refused, the freeze stays
        with pytest.raises(StaleEpoch):
            c.wait(c.unquiesce("db1", epoch=299).id)
        st = c.wait(c.status("db1").id).result
        assert st is not None and st["quiesced"] is True and st["epoch"] == 300
        failed = c.wait(c.unquiesce("db1", epoch=299).id, raise_on_failure=False)
        assert failed.state == "failed" and failed.error is not None and failed.error.code == "stale_epoch"
        c.wait(c.unquiesce("db1", epoch=300).id)
        # a snapshot with an epoch older than one already seen for the volume: refused before any task
        with pytest.raises(StaleEpoch):
            c.snapshot("v1", snap_id="old", epoch=299)
        ex = c.wait(c.snapshot_exists("v1", "old").id).result
        assert ex is not None and ex["exists"] is False


def test_lease_runs_out(agent: Agent) -> None:
    """A lease that runs out releases the app by itself; unquiesce then says so (lease_held=false)."""
    db = agent.config.parent / "data" / "vol" / "app.db"
    with agent.client() as c:
        c.wait(c.quiesce("db1", epoch=400, lease_s=0.5).id)
        time.sleep(0.8)
        conn = sqlite3.connect(db, timeout=10)  # the agent's lease timer may fire late on a loaded machine
        conn.execute("INSERT INTO t (v) VALUES ('after lease')")
        conn.commit()
        conn.close()
        u = c.wait(c.unquiesce("db1", epoch=400).id)
        assert u.changed is False and u.result is not None and u.result["lease_held"] is False


def test_default_lease_when_none_given(agent: Agent) -> None:
    """A quiesce without ``lease_s`` gets the documented default: 60 s for an app (10 s for files)."""
    with agent.client() as c:
        q = c.wait(c.quiesce("db1", epoch=500).id)
        assert q.changed and q.result is not None and q.result["lease_s"] == 60.0
        u = c.wait(c.unquiesce("db1", epoch=500).id)
        assert u.changed and u.result is not None and u.result["lease_held"] is True
