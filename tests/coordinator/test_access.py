"""Access: a restore point read through the coordinator as an operation (workflows/access.py): chosen paths or
the whole volume extracted from the repository, packed into a tar archive, downloaded over the API or with
``frieze op access``, identical to what was backed up; bad paths refused before anything is submitted; roles;
expired archives swept."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from frieze.api.app import create_app
from frieze.cli import ops
from frieze.coordinator.service import Coordinator
from frieze.coordinator.workflows.access import sweep
from frieze.core.errors import NotFound, UsageError
from tests.api.support import serve_in_thread
from tests.coordinator.local_port import LocalPort
from tests.coordinator.support import CounterApp, coordinator, provision

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def backed_up(tmp_path: Path) -> Iterator[tuple[Coordinator, str]]:
    """A coordinator (in-process agent stand-in) whose volume, a live SQLite app and a small docs tree with a
    symlink, has one application-consistent restore point: yields (coordinator, restore point id)."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "docs").mkdir()
    (vol / "docs" / "a.txt").write_text("alpha\n" * 1000)
    (vol / "docs" / "link").symlink_to("a.txt")
    port = LocalPort("h1", tmp_path / "snaps")
    with coordinator(tmp_path, port) as c, CounterApp(vol / "app.db"):
        provision(c, vol, f"file://{tmp_path}/repo")
        st = c.engine.wait(c.submit_backup("ps1", None, "r1", None)["operation_id"], timeout=120)
        assert st.state.value == "complete", st.error
        yield c, str(c.operation_status(st.id)["result"]["restore_point_id"])


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return {m.name: m for m in t.getmembers()}


def test_access_archive_of_paths_and_of_the_whole_volume(tmp_path: Path,
                                                         backed_up: tuple[Coordinator, str]) -> None:
    c, rp = backed_up
    vol = tmp_path / "vol"
    n_ops = len(c.engine.list())
    for bad, exc in ((["../etc"], UsageError), (["/abs"], UsageError), (["nope.txt"], NotFound)):
        with pytest.raises(exc):
            c.submit_access(rp, None, bad, 3600)
    with pytest.raises(NotFound):
        c.submit_access("rp-none", None, [], 3600)
    assert len(c.engine.list()) == n_ops  # nothing submitted

    acc = c.submit_access(rp, None, ["docs"], 3600)
    st = c.engine.wait(acc["operation_id"], timeout=120)
    assert st.state.value == "complete", (st.error, st.undo_errors)
    res = c.operation_status(acc["operation_id"])["result"]
    data = c.access_archive(acc["operation_id"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == res["sha256"] and len(data) == res["archive_bytes"]
    m = _members(data)
    assert set(m) == {"docs", "docs/a.txt", "docs/link"}
    assert m["docs/link"].issym() and m["docs/link"].linkname == "a.txt"
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        f = t.extractfile("docs/a.txt")
        assert f is not None and f.read() == (vol / "docs" / "a.txt").read_bytes()

    whole = c.submit_access(rp, "v1", [], 3600)
    st2 = c.engine.wait(whole["operation_id"], timeout=120)
    assert st2.state.value == "complete", st2.error
    data2 = c.access_archive(whole["operation_id"]).read_bytes()
    assert {"app.db", "docs/a.txt"} <= set(_members(data2))
    with tarfile.open(fileobj=io.BytesIO(data2)) as t:  # the database in the archive is a consistent one
        f = t.extractfile("app.db")
        assert f is not None
        (tmp_path / "x.db").write_bytes(f.read())
    conn = sqlite3.connect(tmp_path / "x.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM counter").fetchone()[0] > 0
    finally:
        conn.close()

    # expiry: swept (as on every request), then gone
    assert sweep(c.config.staging_dir, at=time.time() + 7200) == 2
    with pytest.raises(NotFound):
        c.access_archive(acc["operation_id"])


def test_access_over_the_api_and_the_cli(tmp_path: Path, backed_up: tuple[Coordinator, str]) -> None:
    c, rp = backed_up
    client = TestClient(create_app(c))
    admin = {"Authorization": "Bearer " + (tmp_path / "state" / "admin.token").read_text().strip()}
    ro = client.post("/v1/tokens", json={"name": "ro", "role": "read-only"}, headers=admin).json()["secret"]
    ro_h = {"Authorization": f"Bearer {ro}"}
    assert client.post("/v1/operations/access", json={"restore_point": rp}, headers=ro_h).status_code == 403
    r = client.post("/v1/operations/access", json={"restore_point": rp, "paths": ["docs/a.txt"]}, headers=admin)
    assert r.status_code == 202, r.text
    op_id = r.json()["operation_id"]
    st = c.engine.wait(op_id, timeout=120)
    assert st.state.value == "complete", st.error
    assert client.get(f"/v1/access/{op_id}/archive", headers=ro_h).status_code == 403
    r = client.get(f"/v1/access/{op_id}/archive", headers=admin)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    assert set(_members(r.content)) == {"docs", "docs/a.txt"}
    r = client.get("/v1/access/op-unknown/archive", headers=admin)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = client.post("/v1/operations/access", json={"restore_point": rp, "paths": ["../x"]}, headers=admin)
    assert r.status_code == 400 and ".." in r.json()["message"]

    with serve_in_thread(c) as url:
        common = ["--server", url, "--token-file", str(tmp_path / "state" / "admin.token"), "--json"]
        out = tmp_path / "docs.tar"
        res = CliRunner().invoke(ops.app, ["access", rp, "--path", "docs", "-o", str(out), *common])
        assert res.exit_code == 0, res.output
        got = json.loads(res.stdout)
        assert got["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() and got["bytes"] == out.stat().st_size
        assert set(_members(out.read_bytes())) == {"docs", "docs/a.txt", "docs/link"}
        res = CliRunner().invoke(ops.app, ["access", rp, "-o", str(out), *common])  # exists: refused
        assert res.exit_code != 0 and not list(tmp_path.glob("*.part"))
