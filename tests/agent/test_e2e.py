"""End to end through the real agent process, with the real freeze guardian, the sqlite plug-in and the copy
provider: quiesce → snapshot → unquiesce → read the snapshot (listing, file, range, tar) → restore it and
check it with PRAGMA integrity_check; restore rules. (kill -9 of the agent while quiesced:
test_kill_frozen.py, every engine.)"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from frieze.core.errors import Conflict
from frieze.host.guardian.client import spawn_guardian
from tests.agent.conftest import cleanup_snapshots, make_db
from tests.agent.support import PKI, run_agent


class Writer:
    """Inserts one row every 2 ms into ``t``; counts committed rows."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.n = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=30)
        while not self.stop.is_set():
            conn.execute("INSERT INTO t (v) VALUES ('w')")
            conn.commit()
            self.n += 1
            time.sleep(0.002)
        conn.close()

    def __enter__(self) -> Writer:
        self.t.start()
        return self

    def __exit__(self, *a: object) -> None:
        self.stop.set()
        self.t.join(30)


@pytest.fixture
def guardian_sock(tmp_path: Path) -> Iterator[str]:
    sock = str(tmp_path / "guardian.sock")
    # plug-ins named explicitly: the installed metadata may predate the frieze.apps entry points
    proc = spawn_guardian(sock, state_dir=str(tmp_path / "gstate"),
                          plugins={"sqlite": "frieze.host.apps.sqlite:SQLitePlugin"})
    try:
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except Exception:
            proc.kill()
            proc.wait()


def _host(tmp: Path, guardian: str | None) -> dict[str, object]:
    vol = tmp / "data" / "vol"
    make_db(vol, rows=100)
    (tmp / "restore").mkdir(exist_ok=True)
    extra = {"guardian_socket": guardian} if guardian else {}
    return {"apps": {"db1": {"kind": "sqlite", "data_dir": str(vol), "volume": "v1",
                             "options": {"database": "app.db"}}},
            "volumes": {"v1": {"path": str(vol), "provider": "copy"}}, "extra": extra}


def test_quiesce_snapshot_read_restore(tmp_path: Path, pki: PKI, guardian_sock: str) -> None:
    host = _host(tmp_path, guardian_sock)
    db = tmp_path / "data" / "vol" / "app.db"
    with run_agent(tmp_path, pki, **host) as a, a.client(expected_cn="h1") as c:  # type: ignore[arg-type]
        try:
            with Writer(db) as w:
                time.sleep(0.2)
                q = c.wait(c.quiesce("db1", epoch=1, lease_s=20).id)
                assert q.changed and q.result is not None and q.result["info"]["freeze_id"]
                st = c.wait(c.status("db1").id).result
                assert st is not None and st["quiesced"] is True and st["guardian"]["socket"] == guardian_sock
                n_at_freeze = w.n
                s = c.wait(c.snapshot("v1", snap_id="snap-1", epoch=1).id)
                u = c.wait(c.unquiesce("db1", epoch=1).id)
                assert u.changed and u.result is not None and u.result["lease_held"] is True
                time.sleep(0.2)
            print(f"RESULT E2E-sqlite-copy frozen_ms={u.result['frozen_ms']:.1f} rows_written={w.n}")
            assert s.result is not None
            # listing and digests match the bytes read one by one (what the mover checks)
            entries = c.entries("v1", "snap-1")
            files = {e.path: e for e in entries if e.type == "file"}
            assert "app.db" in files
            for e in files.values():
                data = b"".join(c.read_file("v1", "snap-1", e.path))
                assert len(data) == e.size and blake3.blake3(data).hexdigest() == e.digest
            whole = b"".join(c.read_file("v1", "snap-1", "app.db"))
            assert b"".join(c.read_file("v1", "snap-1", "app.db", offset=100, length=50)) == whole[100:150]
            assert b"".join(c.read_file("v1", "snap-1", "app.db", offset=4096)) == whole[4096:]
            # tar of the snapshot → restore into a fresh target under a restore root → integrity_check
            tar = b"".join(c.read_tar("v1", "snap-1"))
            with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
                assert set(tf.getnames()) >= set(files)
            target = str(tmp_path / "restore" / "r1")
            r = c.wait(c.restore_tar(target, [tar]).id)
            assert r.changed and r.result is not None and r.result["files"] == len(files)
            conn = sqlite3.connect(os.path.join(target, "app.db"))
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = conn.execute("SELECT count(*) FROM t").fetchone()[0]
            conn.close()
            assert 100 + n_at_freeze <= rows <= 100 + n_at_freeze + 1
            print(f"RESULT E2E-restore rows={rows} integrity=ok")
            # restore rules: a non-empty target needs force; the running app's own data needs force
            with pytest.raises(Conflict, match="not empty"):
                c.restore_tar(target, [tar])
            with pytest.raises(Conflict, match="running app 'db1'"):
                c.restore_tar(str(tmp_path / "data" / "vol"), [tar], force=False)
            before = db.read_bytes()
            with pytest.raises(Conflict):
                c.restore_tar(str(tmp_path / "data" / "vol"), [tar])
            assert db.read_bytes() == before
            # the per-file API: a file with its digest lands exactly; the same file again needs force
            from frieze.protocol.models import FileEntry

            e = files["app.db"]
            t2 = str(tmp_path / "restore" / "r2")
            c.put_file(t2, FileEntry(path="sub/app.db", type="file", digest=e.digest, mode=0o640), [whole])
            assert (Path(t2) / "sub" / "app.db").read_bytes() == whole
            with pytest.raises(Conflict, match="already exists"):
                c.put_file(t2, FileEntry(path="sub/app.db", type="file", digest=e.digest), [whole])
            state = c.wait(c.target_state(t2).id).result
            assert state == {"exists": True, "empty": False}
            c.wait(c.remove_target(t2).id)
            assert not os.path.exists(t2)
            assert c.wait(c.remove_target(t2).id).changed is False
        finally:
            cleanup_snapshots(a)

