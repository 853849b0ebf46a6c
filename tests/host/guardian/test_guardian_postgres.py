"""The guardian with the real PostgreSQL plug-in against a private PostgreSQL 15: the backup session
(``pg_backup_start``) lives in the guardian; a normal thaw returns the backup label; killing the agent ends
the session (and the backup) within 2 s."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.host.guardian.test_guardian import ENV, p99, spawn_agent, wait_thawed

from frieze.host.apps.base import AppSpec
from frieze.host.apps.testbed import PG_BIN, pg_server
from frieze.host.guardian.client import GuardianClient, spawn_guardian

pytestmark = pytest.mark.skipif(not (PG_BIN / "pg_ctl").exists(), reason="PostgreSQL 15 binaries not installed")


@pytest.fixture
def pg_guardian(tmp_path: Path) -> Iterator[str]:
    sock = str(tmp_path / "g.sock")
    proc = spawn_guardian(sock, plugins={"postgres": "frieze.host.apps.postgres:PostgresPlugin"}, env=ENV)
    try:
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_postgres_quiesce_lives_in_the_guardian(pg_guardian: str) -> None:
    with pg_server() as srv:
        spec = AppSpec(name="pg", kind="postgres", data_dir=str(srv.data_dir), options=srv.options())
        with GuardianClient(pg_guardian) as c:
            f = c.quiesce_app(spec, 30, epoch=1)
            backend = f.info["backend_pid"]
            assert srv.sql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {int(backend)}") == [(1,)]
            r = c.thaw_result(f.freeze_id, 1)
            assert r.reason == "thawed" and r.changed
            assert "START WAL LOCATION" in r.info["backup_label"]
            assert r.window_ms < 30_000

        wire = json.dumps({"name": "pg", "kind": "postgres", "data_dir": str(srv.data_dir),
                           "options": srv.options()})
        trials, lease, ms, frozen_ms = 5, 60.0, [], []
        for i in range(trials):
            t_start = time.monotonic()
            agent, fid = spawn_agent(pg_guardian, "spec:" + wire, lease, 10 + i)
            try:
                with GuardianClient(pg_guardian) as c:
                    rec = next(x for x in c.status()["freezes"] if x["freeze_id"] == fid)
                backend = int(rec["info"]["backend_pid"])
                assert srv.sql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {backend}") == [(1,)]
                t0 = time.monotonic()
                agent.kill()
                while srv.sql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {backend}") != [(0,)]:
                    assert time.monotonic() - t0 < 5, "the backup session outlived the agent"
                    time.sleep(0.01)
                t_thaw = time.monotonic()
                ms.append((t_thaw - t0) * 1000)
                frozen_ms.append((t_thaw - t_start) * 1000)
            finally:
                agent.kill()
                agent.wait()
            assert wait_thawed(pg_guardian, fid)["thaw_reason"] == "client_gone"
        over_lease = sum(1 for f in frozen_ms if f > lease * 1000)
        print(f"RESULT Z1 trials={trials} thaw_after_death_ms_p99={p99(ms):.1f} over_lease={over_lease} "
              f"target=postgres-session via=guardian-client max={max(ms):.1f} frozen_ms_max={max(frozen_ms):.0f}")
        assert p99(ms) < 2000
        assert over_lease == 0
