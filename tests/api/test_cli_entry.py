"""The ``frieze`` command itself (the installed console script, as a user runs it) against a live
coordinator: uvicorn on a free port in a thread, over a real coordinator with its engine, a real local
repository and a real SQLite app; the agent is the in-process stand-in (tests/coordinator/local_port.py).

Every resource group and operation is driven through the entry point: tables for people, ``--json`` for
scripts, exit codes from the error tree (usage 2, not found 3, exists/conflict 4, auth 5, integrity 6,
not supported 10), the token and passwords read from files, and the progress bar on a terminal.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from frieze.coordinator.service import Coordinator
from tests.api.support import serve_in_thread
from tests.coordinator.local_port import LocalPort
from tests.coordinator.support import CounterApp, coordinator

pytestmark = pytest.mark.timeout(300)

FRIEZE = Path(sys.executable).with_name("frieze")


@dataclass
class Live:
    url: str
    token: Path
    coord: Coordinator
    port: LocalPort
    tmp: Path
    outputs: list[str]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRIEZE_")}
        env.update(FRIEZE_SERVER=self.url, FRIEZE_TOKEN_FILE=str(self.token), COLUMNS="200")
        return env

    def run(self, *args: str, code: int = 0, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``frieze ARGS`` in an empty working directory; asserts the exit code."""
        p = subprocess.run([str(FRIEZE), *args], capture_output=True, text=True, timeout=timeout, env=self.env(),
                           cwd=self.tmp / "cwd", stdin=subprocess.DEVNULL)
        assert p.returncode == code, (args, p.returncode, p.stdout[-2000:], p.stderr[-2000:])
        self.outputs += [p.stdout, p.stderr]
        return p

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self.run(*args, "--json", code=code).stdout)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    (tmp_path / "cwd").mkdir()
    port = LocalPort("h1", tmp_path / "snaps")
    with coordinator(tmp_path, port, repository_roots=[tmp_path]) as c, serve_in_thread(c) as url:
        yield Live(url, tmp_path / "state" / "admin.token", c, port, tmp_path, [])
    assert list((tmp_path / "cwd").iterdir()) == [], "the CLI wrote into its working directory"


def _err(p: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    e: dict[str, Any] = json.loads(p.stdout)["error"]
    return e


def test_frieze_entry_point_resources_operations_and_exit_codes(live: Live) -> None:
    t0 = time.monotonic()
    tmp = live.tmp
    vol = tmp / "vol"
    vol.mkdir()
    calls = 0

    def count(p: Any) -> Any:
        nonlocal calls
        calls += 1
        return p

    # -- hosts ---------------------------------------------------------------------------------------
    out = count(live.json("host", "add", "h1", "--address", "local", "--max-concurrent", "2"))
    assert out["host"]["name"] == "h1" and out["host"]["state"] == "pending"
    assert out["enrollment_token"].startswith("enr_")
    live.coord.registry.heartbeat("h1", None, "0.1.0")  # what the agent's enrollment + heartbeat would do
    table = count(live.run("host", "list")).stdout
    assert "h1" in table and "online" in table and "┃" in table  # a rich table
    assert [h["name"] for h in count(live.json("host", "list"))] == ["h1"]
    p = count(live.run("host", "add", "h1", code=4))
    assert "host 'h1' already exists" in p.stderr
    assert _err(count(live.run("host", "add", "h1", "--json", code=4)))["code"] == "already_exists"
    assert count(live.json("host", "limit", "h1", "3"))["max_concurrent"] == 3
    p = count(live.run("host", "limit", "h1", "0", "--json", code=2))
    assert _err(p)["code"] == "usage.invalid_request"
    assert count(live.json("host", "show", "nohost", code=3))["error"]["code"] == "not_found"

    # -- volumes, apps, repositories, protection sets, policies -------------------------------------
    count(live.json("volume", "add", "h1", "v1", str(vol), "--provider", "copy"))
    p = count(live.run("volume", "add", "nohost", "v2", str(vol), "--json", code=3))
    assert "host 'nohost' does not exist" in _err(p)["message"]
    assert "v1" in count(live.run("volume", "list")).stdout
    with CounterApp(vol / "app.db") as app:
        a = count(live.json("app", "add", "h1", "counter", "sqlite", str(vol), "--volume", "v1", "-o", "db=app.db"))
        assert a["kind"] == "sqlite" and a["options"] == {"db": "app.db"}
        p = count(live.run("app", "add", "h1", "x", "oracle", str(vol), "--json", code=2))
        assert _err(p)["code"] == "usage.invalid_request"
        pw = tmp / "pw"
        pw.write_text("CANARY-cli-repo-pw-31f9\n")
        r = count(live.json("repository", "add", "r1", f"file://{tmp}/repo", "--password-file", str(pw), "--init"))
        assert r["name"] == "r1" and r["secrets"] == ["password"]
        bad = tmp / "bad"
        bad.write_text("not-the-password\n")
        p = count(live.run("repository", "add", "r2", f"file://{tmp}/repo", "--password-file", str(bad), "--json",
                           code=5))
        assert _err(p)["code"] == "auth.wrong_password"
        p = count(live.run("repository", "add", "r3", "relative/repo", "--password-file", str(pw), "--init",
                           code=2))
        assert "absolute" in p.stderr
        assert [x["name"] for x in count(live.json("repository", "list"))] == ["r1"]
        count(live.json("pset", "add", "ps1", "--app", "counter"))
        assert "ps1" in count(live.run("pset", "list")).stdout
        pol = count(live.json("policy", "add", "nightly", "ps1", "r1", "--cron", "0 2 * * *", "--timezone",
                              "Europe/Berlin", "--keep-last", "3", "--max-per-host", "1"))
        assert len(pol["next_runs"]) == 3 and pol["max_per_host"] == 1 and pol["retention"] == {"keep_last": 3}
        p = count(live.run("policy", "add", "bad", "ps1", "r1", "--cron", "61 * * * *", code=2))
        assert "invalid cron expression" in p.stderr
        assert "nightly" in count(live.run("policy", "list")).stdout

        # -- operations ------------------------------------------------------------------------------
        st = count(live.json("op", "backup", "ps1", "--policy", "nightly"))
        assert st["state"] == "complete" and st["result"]["consistency"] == "application-consistent"
        rp_id = st["result"]["restore_point_id"]
        p = count(live.run("op", "backup", "ps1", "--repository", "r1"))  # a table for people
        assert "complete" in p.stdout and "application-consistent" in p.stdout
        acc = count(live.json("op", "backup", "ps1", "--repository", "r1", "--no-wait"))
        assert set(acc) == {"operation_id", "state"}
        assert count(live.json("op", "wait", acc["operation_id"]))["state"] == "complete"
        ops = count(live.json("op", "list", "--type", "backup"))
        assert len(ops) == 3 and {o["state"] for o in ops} == {"complete"}
        assert "complete" in count(live.run("op", "list")).stdout
        assert count(live.json("op", "status", st["id"]))["result"]["restore_point_id"] == rp_id
        lines = count(live.json("op", "logs", st["id"]))
        assert any("restore point" in ln["message"] for ln in lines)
        assert "checkpoint recorded" in count(live.run("op", "logs", st["id"])).stderr
        p = count(live.run("op", "cancel", st["id"], "--json", code=4))
        assert _err(p)["code"] == "engine.op_finished"
        p = count(live.run("op", "status", "op-nope", "--json", code=3))
        assert _err(p)["code"] == "engine.op_not_found"
        p = count(live.run("op", "backup", "nope", "--repository", "r1", code=3))
        assert "protection set 'nope' does not exist" in p.stderr
        diag = tmp / "diag.tar.gz"
        assert count(live.json("op", "diagnostics", st["id"], "-o", str(diag)))["bytes"] == diag.stat().st_size > 0

        # -- restore points and restore ------------------------------------------------------------------
        rps = count(live.json("restore-point", "list"))
        assert len(rps) == 3 and rps[0]["consistency"] == "application-consistent"
        assert "application-consistent" in count(live.run("restore-point", "list")).stdout
        show = count(live.json("restore-point", "show", rp_id))
        assert show["label"]["freeze"][0]["app"] == "counter"
        assert "app.db" in {e["path"] for e in count(live.json("restore-point", "ls", rp_id))}
        data = subprocess.run([str(FRIEZE), "restore-point", "cat", rp_id, "app.db"], capture_output=True,
                              env=live.env(), cwd=tmp / "cwd", timeout=60, check=True).stdout
        calls += 1
        assert data[:16] == b"SQLite format 3\x00"
        target = tmp / "restored"
        rst = count(live.json("op", "restore", rp_id, "--to", str(target)))
        assert rst["state"] == "complete" and (target / "app.db").exists()
        p = count(live.run("op", "restore", rp_id, "--to", str(target), "--json", code=4))
        assert _err(p)["code"] == "already_exists" and "exists and is not empty" in _err(p)["message"]
        # recover: the SQLite plug-in cannot; the failed operation's code gives the exit code
        p = count(live.run("op", "recover", "counter", "--time", "2026-01-01T00:00:00Z", "--json", code=10))
        assert json.loads(p.stdout)["error"]["code"] == "not_supported"
        # credentials rotated without downtime: repository password (key slots), the app's password
        new_pw = tmp / "new-pw"
        new_pw.write_text("CANARY-cli-rotated-pw-77b0\n")
        rot = count(live.json("repository", "rotate-password", "r1", "--password-file", str(new_pw)))
        assert rot["rotation"]["old_slot_removed"] is True
        p = count(live.run("repository", "rotate-password", "r1", "--password-file", str(new_pw), code=2))
        assert "is the current one" in p.stderr
        app_pw = tmp / "app-pw"
        app_pw.write_text("CANARY-cli-app-pw-19d3\n")
        assert count(live.json("app", "set-password", "counter", "--password-file", str(app_pw)))["secrets"] == [
            "password"]
        assert count(live.json("op", "backup", "ps1", "--repository", "r1"))["state"] == "complete"
        # a corrupt transfer: the operation fails with integrity, exit code 6
        live.port.corrupt = "app.db"
        p = count(live.run("op", "backup", "ps1", "--repository", "r1", code=6))
        assert "failed" in p.stdout and "does not match the digest" in p.stdout
        live.port.corrupt = None
        # maintenance: nothing is sent to the host meanwhile; the operation fails with a conflict (4)
        assert count(live.json("host", "maintenance", "h1", "--on"))["state"] == "maintenance"
        p = count(live.run("op", "backup", "ps1", "--repository", "r1", "--json", code=4))
        assert "in maintenance" in json.loads(p.stdout)["error"]["message"]
        count(live.json("host", "maintenance", "h1", "--off"))
        assert app.n > 0

    # -- tokens and roles ------------------------------------------------------------------------------
    tok = count(live.json("token", "create", "ci", "--role", "read-only"))
    assert tok["token"]["role"] == "read-only" and tok["secret"].startswith("frz_")
    ro = tmp / "ro.token"
    ro.write_text(tok["secret"] + "\n")
    assert "ci" in {t["name"] for t in count(live.json("token", "list"))}
    p = count(live.run("host", "list", "--token-file", str(ro), "--json"))
    assert [h["name"] for h in json.loads(p.stdout)] == ["h1"]
    p = count(live.run("host", "add", "h9", "--token-file", str(ro), "--json", code=5))
    assert _err(p)["code"] == "auth.forbidden"
    count(live.json("token", "revoke", tok["token"]["id"]))
    assert "not valid" in count(live.run("host", "list", "--token-file", str(ro), code=5)).stderr
    rot = count(live.json("token", "rotate-vault-key"))
    assert rot["reencrypted"] >= 1
    # unreachable coordinator: retryable storage error, exit 8
    p = subprocess.run([str(FRIEZE), "op", "list", "--server", "http://127.0.0.1:1", "--json"], capture_output=True,
                       text=True, env=live.env(), cwd=tmp / "cwd", timeout=60)
    calls += 1
    assert p.returncode == 8 and _err(p)["retryable"] is True
    everything = "\n".join(live.outputs)
    for canary in ("CANARY-cli-repo-pw-31f9", "CANARY-cli-rotated-pw-77b0", "CANARY-cli-app-pw-19d3"):
        assert canary not in everything
    print(f"RESULT CLI-ENTRY invocations={calls} seconds={time.monotonic() - t0:.1f}")


def test_frieze_op_backup_shows_a_progress_bar_on_a_terminal(live: Live) -> None:
    vol = live.tmp / "vol"
    vol.mkdir()
    from tests.coordinator.support import provision

    provision(live.coord, vol, f"file://{live.tmp}/repo")
    live.port.slow_snapshot_s = 1.5
    with CounterApp(vol / "app.db"):
        master, slave = pty.openpty()
        p = subprocess.Popen([str(FRIEZE), "op", "backup", "ps1", "--repository", "r1"], stdin=subprocess.DEVNULL,
                             stdout=slave, stderr=slave, env=live.env(), cwd=live.tmp / "cwd")
        os.close(slave)
        seen = b""
        while True:
            r, _w, _x = select.select([master], [], [], 60)
            if not r:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        assert p.wait(timeout=60) == 0
        os.close(master)
    text = seen.decode(errors="replace")
    assert "backup running" in text and "━" in text, text[-2000:]  # the bar while it polls
    assert "complete" in text
