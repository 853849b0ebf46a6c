"""kill -9 the coordinator process in the middle of a provision (right after a step's checkpoint): after a
restart the operation completes, every item exists exactly once, the repository the first run created is
opened (not created twice), and no pending secret is left."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.coordinator.test_crash import _start
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(240)


def _batch(tmp: Path) -> dict[str, Any]:
    return {
        "hosts": [{"name": "h1", "address": "local"}, {"name": "h2"}],
        "volumes": [{"host": "h1", "name": "v1", "path": str(tmp / "vol"), "provider": "copy"}],
        "repositories": [{"name": "r1", "url": f"file://{tmp}/repo", "password": "pw-crash-1", "init": True}],
        "apps": [{"host": "h1", "name": "counter", "kind": "sqlite", "data_dir": str(tmp / "vol"), "volume": "v1",
                  "options": {"db": "app.db"}, "secrets": {"password": "pw-crash-2"}}],
        "protection_sets": [{"name": "ps1", "apps": ["counter"]}],
        "policies": [{"name": "p1", "protection_set": "ps1", "repository": "r1", "cron": "0 3 * * *"}],
    }


@pytest.mark.parametrize("die_at", ["repositories_created", "apps_created"])
def test_kill9_mid_provision_then_it_completes_once(tmp_path: Path, die_at: str) -> None:
    state, snaps = tmp_path / "state", tmp_path / "snaps"
    (tmp_path / "vol").mkdir()
    port = free_port()
    p = _start(state, port, snaps, die_at)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        h = {"Authorization": "Bearer " + (state / "admin.token").read_text().strip()}
        r = httpx.post(url + "/operations/provision", json=_batch(tmp_path), headers=h, timeout=30)
        assert r.status_code == 202, r.text
        op = r.json()["operation_id"]
        assert p.wait(timeout=60) == -signal.SIGKILL
        assert (tmp_path / "died").read_text().split() == [op, die_at]
        p = _start(state, port, snaps, None)
        deadline = time.monotonic() + 90
        while True:
            st = httpx.get(f"{url}/operations/{op}", headers=h, timeout=10).json()
            if st["state"] in ("complete", "failed", "canceled"):
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.2)
        assert st["state"] == "complete", st
        assert st["result"]["counts"] == {"created": 7, "unchanged": 0}
        for route, n in (("hosts", 2), ("volumes", 1), ("repositories", 1), ("apps", 1), ("protection-sets", 1),
                         ("policies", 1)):
            assert len(httpx.get(f"{url}/{route}", headers=h, timeout=10).json()) == n, route
        conn = sqlite3.connect(state / "catalog.sqlite")
        try:
            names = [n for (n,) in conn.execute("SELECT name FROM secrets")]
        finally:
            conn.close()
        assert not [n for n in names if n.startswith("pending/")], names
        assert sum(n.startswith("repo/") for n in names) == 1 and sum(n.startswith("app/") for n in names) == 1
        assert (tmp_path / "repo" / "config").exists()
    finally:
        if p.poll() is None:
            p.terminate()
            p.wait(timeout=30)
