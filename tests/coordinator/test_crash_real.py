"""kill -9 the real coordinator process in the middle of a backup, with the real agent holding the freeze of
a real SQLite app: after a restart the backup completes (one restore point, honestly labelled) or is undone
(none); the app is never left frozen (it writes again at the latest when the lease ends); no host
snapshot is left behind.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from frieze import demo

pytestmark = pytest.mark.timeout(240)


def _bring_up(root: Path, procs: demo.Procs) -> tuple[demo.Api, dict[str, object]]:
    for d in ("coordinator", "agent", "app", "restore", "logs"):
        (root / d).mkdir(parents=True, exist_ok=True)
    api_port, agent_port, agent_listen = demo.free_port(), demo.free_port(), demo.free_port()
    state, app_dir = root / "coordinator", root / "app"
    server = demo._cli("server", "run", "--state-dir", str(state), "--port", str(api_port), "--agent-port",
                       str(agent_port), "--no-scheduler")
    procs.start("coordinator", server)
    demo.wait_for("api", lambda: demo.port_open(api_port) and (state / "admin.token").exists(), 60, procs)
    api = demo.Api(f"http://127.0.0.1:{api_port}", (state / "admin.token").read_text().strip())
    db = app_dir / "counter.db"
    procs.start("app", [demo.sys.executable, "-m", "frieze.demo", "app", str(db)])
    demo.wait_for("app", lambda: db.exists() and demo.check_db(db)["counter"] > 5, 30, procs)
    created = api.call("POST", "/hosts", {"name": demo.HOST, "address": f"127.0.0.1:{agent_listen}"})
    tok = root / "agent" / "enroll.token"
    demo._write_0600(tok, created["enrollment_token"])
    cfg = root / "agent" / "agent.toml"
    cfg.write_text(demo.agent_toml(root, agent_listen, app_dir, root / "restore", "copy"))
    subprocess.run(demo._cli("agent", "enroll", "--coordinator", f"https://127.0.0.1:{agent_port}", "--name",
                             demo.HOST, "--state-dir", str(root / "agent" / "state"), "--ca-fingerprint",
                             demo._ca_fingerprint(state / "ca" / "ca.crt"), "--token-file", str(tok),
                             "--address", f"127.0.0.1:{agent_listen}", "--san", "127.0.0.1"),
                   check=True, capture_output=True, timeout=60)
    procs.start("agent", demo._cli("agent", "run", "--config", str(cfg)))
    demo.wait_for("agent", lambda: demo.port_open(agent_listen), 30, procs)
    api.call("POST", "/volumes", {"host": demo.HOST, "name": "appdata", "path": str(app_dir), "provider": "copy"})
    api.call("POST", "/apps", {"host": demo.HOST, "name": "counter", "kind": "sqlite", "data_dir": str(app_dir),
                               "volume": "appdata", "options": {"database": "counter.db"}})
    api.call("POST", "/repositories", {"name": "local", "url": f"file://{root / 'repo'}", "password": "pw-crash",
                                       "init": True})
    api.call("POST", "/protection-sets", {"name": "ps", "apps": ["counter"]})
    api.call("POST", "/policies", {"name": "short-lease", "protection_set": "ps", "repository": "local",
                                   "lease_s": 8})
    return api, {"server": server, "state": state, "db": db, "api_port": api_port, "app_dir": app_dir}


@pytest.mark.parametrize("kill_at", [pytest.param("quiesced", marks=pytest.mark.heavy), "snapshotted"])
def test_kill9_coordinator_mid_backup_real_agent(tmp_path: Path, kill_at: str) -> None:
    root = tmp_path / "k"
    (root / "logs").mkdir(parents=True)
    procs = demo.Procs(root / "logs")
    try:
        api, env = _bring_up(root, procs)
        acc = api.call("POST", "/operations/backup", {"protection_set": "ps", "policy": "short-lease"})
        op = acc["operation_id"]
        deadline = time.monotonic() + 60
        while api.call("GET", f"/operations/{op}")["checkpoint"] != kill_at:
            assert time.monotonic() < deadline, "backup never reached the checkpoint"
            time.sleep(0.01)
        coord = next(p for n, p in procs.procs if n == "coordinator")
        coord.send_signal(signal.SIGKILL)
        coord.wait()
        t_kill = time.monotonic()
        procs.procs = [(n, p) for n, p in procs.procs if n != "coordinator"]
        procs.start("coordinator", env["server"])  # type: ignore[arg-type]
        port = env["api_port"]
        demo.wait_for("api again", lambda: demo.port_open(port), 60, procs)  # type: ignore[arg-type]
        st = api.wait_op(op, "backup after restart", timeout=120)
        rps = api.call("GET", "/restore-points")
        db = env["db"]
        n0 = n1 = demo.check_db(db)["counter"]  # type: ignore[arg-type]
        deadline = time.monotonic() + 10  # the app writes again (polled: one commit may stall under load)
        while n1 <= n0 and time.monotonic() < deadline:
            time.sleep(0.1)
            n1 = demo.check_db(db)["counter"]  # type: ignore[arg-type]
        assert n1 > n0, "the app must not be left frozen"
        snaps = list((Path(str(env["app_dir"])).parent / ".frieze-snapshots").glob("*/*/*"))
        if st["state"] == "complete":
            assert len(rps) == 1 and rps[0]["operation_id"] == op
            assert rps[0]["consistency"] == "application-consistent"
        else:
            assert st["state"] == "failed" and rps == [], (st["error"], rps)
        assert snaps == [], snaps
        print(f"RESULT C8-REAL kill_at={kill_at} state={st['state']} restore_points={len(rps)} "
              f"error={(st['error'] or {}).get('code')} resume_s={time.monotonic() - t_kill:.1f} "
              f"frozen_after=0 leaked_snapshots={len(snaps)}")
    finally:
        procs.stop_all()
        subprocess.run(["chattr", "-R", "-i", str(root)], capture_output=True, check=False)
