"""PostgreSQL through the real agent and guardian: quiesce (pg_backup_start) → copy snapshot of the data dir
under write load → unquiesce (pg_backup_stop) → the snapshot as the agent serves it (tar) now holds the
``backup_label`` the engine handed back → restore it, recover it through the agent's API with all archived
WAL, and check it with pg_amcheck and the workload: every row committed before the quiesce is there."""

from __future__ import annotations

import io
import signal
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frieze.core.errors import UsageError
from frieze.host.guardian.client import spawn_guardian
from frieze.host.providers.copy import CopyProvider
from tests.agent.support import PKI, run_agent
from tests.support.engines import owned_tempdir, pg_amcheck, pg_restored_copy, pg_server
from tests.support.pg import pg_available

pytestmark = pytest.mark.skipif(not pg_available(), reason="PostgreSQL 15 binaries are not installed")


@pytest.fixture
def guardian_sock(tmp_path: Path) -> Iterator[str]:
    sock = str(tmp_path / "guardian.sock")
    proc = spawn_guardian(sock, state_dir=str(tmp_path / "gstate"),
                          plugins={"postgres": "frieze.host.apps.postgres:PostgresPlugin"})
    try:
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_postgres_snapshot_through_agent_restores(tmp_path: Path, pki: PKI, guardian_sock: str) -> None:
    import shutil

    with pg_server() as srv:
        srv.sql("CREATE TABLE t (n serial PRIMARY KEY, v text)")
        stop = threading.Event()
        committed: list[int] = []

        def writer() -> None:
            conn = srv.connect()
            while not stop.is_set():
                committed.append(conn.execute("INSERT INTO t (v) VALUES ('x') RETURNING n").fetchone()[0])
                time.sleep(0.002)
            conn.close()

        apps = {"pg1": {"kind": "postgres", "data_dir": str(srv.data_dir), "volume": "v1",
                        "options": srv.options()}}
        volumes = {"v1": {"path": str(srv.data_dir), "provider": "copy"}}
        restore_root = owned_tempdir("frieze-agent-pgr-")
        extra = {"guardian_socket": guardian_sock, "restore_roots": [str(restore_root)]}
        th = threading.Thread(target=writer)
        th.start()
        try:
            with run_agent(tmp_path, pki, apps=apps, volumes=volumes, extra=extra) as a, a.client() as c:
                time.sleep(0.3)
                q = c.wait(c.quiesce("pg1", epoch=1, lease_s=60).id)
                assert q.result is not None and q.result["info"]["start_lsn"]
                before = len(committed)
                last_before = committed[-1]
                c.wait(c.snapshot("v1", snap_id="pg-1", epoch=1).id)
                u = c.wait(c.unquiesce("pg1", epoch=1).id)
                assert u.result is not None and u.result["snapshot_files_added"] == ["pg-1:backup_label"]
                stop.set()
                th.join(10)
                srv.switch_wal_and_wait_archived()
                entries = {e.path: e for e in c.entries("v1", "pg-1")}
                assert "backup_label" in entries and "PG_VERSION" in entries
                label = b"".join(c.read_file("v1", "pg-1", "backup_label")).decode()
                assert "START WAL LOCATION" in label and label == u.result["info"]["backup_label"]
                tar = b"".join(c.read_tar("v1", "pg-1"))
                target = restore_root / "pg"
                r = c.wait(c.restore_tar(str(target), [tar]).id)
                assert r.result is not None and r.result["files"] == sum(1 for e in entries.values()
                                                                         if e.type == "file")
                with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
                    assert "backup_label" in tf.getnames()
                c.wait(c.delete_snapshot("v1", "pg-1").id)
                assert not (a.state / "snapshot-extras" / "v1" / "pg-1").exists()
            # the restored copy recovers with the archived WAL and holds every row committed before the quiesce
            with pg_restored_copy(target) as r2:
                # recovery through the agent's API too: an agent whose host config names the restored cluster
                opts = {**r2.options(), "archive_dir": str(srv.archive_dir)}
                d2 = tmp_path / "agent2"
                d2.mkdir()
                apps2 = {"pgr": {"kind": "postgres", "data_dir": str(r2.data_dir), "options": opts}}
                with run_agent(d2, pki, apps=apps2) as a2, a2.client() as c2:
                    with pytest.raises(UsageError, match="exactly one"):
                        c2.recover("pgr", time="2026-01-01T00:00:00Z", all_logs=True)
                    rec = c2.wait(c2.recover("pgr", all_logs=True).id, 300)
                    assert rec.changed is True
                    st = c2.wait(c2.status("pgr").id).result
                    assert st is not None and st["running"] is True
                n = r2.sql("SELECT count(*), max(n) FROM t")[0]
                assert n[0] >= before and n[1] >= last_before
                chk = pg_amcheck(r2)
                assert chk.returncode == 0, chk.stdout + chk.stderr
                print(f"RESULT PG-agent rows_at_quiesce={before} rows_restored={n[0]} amcheck=ok "
                      f"frozen_ms={u.result['frozen_ms']}")
        finally:
            stop.set()
            th.join(10)
            for ref in CopyProvider().list(str(srv.data_dir)):
                CopyProvider().delete(ref)
            shutil.rmtree(restore_root, ignore_errors=True)
