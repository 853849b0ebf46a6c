"""The quick start (``make demo`` = ``python -m frieze.demo``).

Everything runs on this machine, under ``./.frieze-demo/`` (wiped first), as separate processes:

1. a coordinator (``frieze server run``: SQLite catalog and engine state, a local repository);
2. a small application that keeps writing to a SQLite database in WAL mode (a counter, and one event row
   per increment: its own invariant is ``counter.value == count(events) == max(events.n)``);
3. an agent (``frieze agent enroll`` with a one-time token, then ``frieze agent run``) that knows the app and
   its volume.

Then, only through the coordinator's REST API: register the host, volume, app, repository and protection
set; take an application-consistent backup (quiesce SQLite through the agent, snapshot the volume, thaw,
the coordinator's mover reads the snapshot through the agent and writes the repository, a restore point
with its freeze window); let the app change the data; restore the backup to a new place; check it
(``PRAGMA integrity_check`` and the app's own invariant); print what was done and where; stop everything
it started, also on failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEMO = Path(".frieze-demo")
HOST = "demo-host"


def _sqlite() -> Any:
    try:
        import pysqlite3.dbapi2 as mod  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:  # pragma: no cover
        import sqlite3 as mod
    return mod


# -- the demo application ---------------------------------------------------------------------------------
def run_app(db: Path, interval_s: float = 0.01) -> None:
    """The counter app: one transaction per tick (increment + event row), until SIGTERM."""
    sq = _sqlite()
    conn = sq.connect(str(db), timeout=60, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER)")
    conn.execute("CREATE TABLE IF NOT EXISTS events (n INTEGER PRIMARY KEY, at REAL, pad TEXT)")
    conn.execute("INSERT OR IGNORE INTO counter VALUES (1, 0)")
    stop = False

    def _stop(*_a: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    pad = "x" * 200
    while not stop:
        conn.execute("BEGIN IMMEDIATE")
        (v,) = conn.execute("UPDATE counter SET value = value + 1 WHERE id = 1 RETURNING value").fetchone()
        conn.execute("INSERT INTO events VALUES (?, ?, ?)", (v, time.time(), pad))
        conn.execute("COMMIT")
        time.sleep(interval_s)
    conn.close()


def check_db(db: Path) -> dict[str, Any]:
    """``PRAGMA integrity_check`` and the app's own invariant on a database file."""
    sq = _sqlite()
    conn = sq.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        value = conn.execute("SELECT value FROM counter WHERE id = 1").fetchone()[0]
        count, top = conn.execute("SELECT count(*), coalesce(max(n), 0) FROM events").fetchone()
    finally:
        conn.close()
    return {"integrity": integrity, "counter": value, "events": count, "max_event": top,
            "invariant": value == count == top}


# -- processes ------------------------------------------------------------------------------------------
class Procs:
    """Child processes started by the demo; :meth:`stop_all` ends them (TERM, then KILL), newest first."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child for its life
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRIEZE_")}
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                             start_new_session=True)
        log.close()
        self.procs.append((name, p))
        return p

    def check_alive(self) -> None:
        for name, p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}; see {self.logdir / (name + '.log')}")

    def stop_all(self) -> None:
        for _name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _name, p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, fn: Callable[[], bool], timeout: float, procs: Procs) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            if fn():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- the API --------------------------------------------------------------------------------------------
class Api:
    def __init__(self, base: str, token: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=base + "/v1", headers={"Authorization": f"Bearer {token}"}, timeout=120)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        r = self.http.request(method, path, json=body)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text}")
        return r.json()

    def wait_op(self, op_id: str, label: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while True:
            st: dict[str, Any] = self.call("GET", f"/operations/{op_id}")
            step = (st["state"], st["step"])
            if step != last:
                print(f"    {label}: {st['state']:9} {st['step'] or ''} ({st['steps_done']}/{st['steps_total']})",
                      flush=True)
                last = step
            if st["state"] in ("complete", "failed", "canceled"):
                return st
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label} {op_id} not finished after {timeout} s")
            time.sleep(0.2)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "frieze.cli.main", *args]


def _ca_fingerprint(ca_crt: Path) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _write_0600(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def agent_toml(root: Path, listen_port: int, app_dir: Path, restore_root: Path, provider: str) -> str:
    return (f'name = "{HOST}"\nlisten = "127.0.0.1:{listen_port}"\nstate_dir = "{root / "agent" / "state"}"\n'
            f'restore_roots = ["{restore_root}"]\n\n'
            f'[apps.counter]\nkind = "sqlite"\ndata_dir = "{app_dir}"\nvolume = "appdata"\n'
            f'options = {{ database = "counter.db" }}\n\n'
            f'[volumes.appdata]\npath = "{app_dir}"\nprovider = "{provider}"\n')


def pick_provider(path: Path) -> str:
    """reflink where the file system can clone files (XFS, btrfs), else a plain copy (under the freeze)."""
    try:
        from frieze.host.providers.reflink import ReflinkProvider

        if ReflinkProvider().supports(str(path)):
            return "reflink"
    except Exception:  # provider missing or refusing: the copy fallback is always possible
        pass
    return "copy"


# -- the flow -------------------------------------------------------------------------------------------
Probe = Callable[[list[int]], None]


def run(root: Path = DEMO, *, repo_password: str | None = None, probe: Probe | None = None) -> dict[str, Any]:
    """The whole quick start; returns the figures it printed. Raises on any failure (after cleaning up).

    ``repo_password`` (default: random) and ``probe(pids)`` (called with the children's pids while they all
    still run, after the restore) exist for the tests."""
    root = root.resolve()
    if root.exists():
        # snapshot images are made immutable by the providers (chattr +i); a failed earlier run may have left one
        subprocess.run(["chattr", "-R", "-i", str(root)], capture_output=True, check=False)
        shutil.rmtree(root)
    for d in ("coordinator", "agent", "app", "restore", "logs"):
        (root / d).mkdir(parents=True)
    os.chmod(root / "coordinator", 0o700)
    procs = Procs(root / "logs")
    t_start = time.monotonic()
    try:
        return _flow(root, procs, t_start, repo_password or secrets.token_urlsafe(24), probe)
    finally:
        procs.stop_all()
        print(f"\nstopped every process the demo started; logs in {root / 'logs'}")


def _flow(root: Path, procs: Procs, t_start: float, repo_password: str, probe: Probe | None) -> dict[str, Any]:
    api_port, agent_port, agent_listen = free_port(), free_port(), free_port()
    app_dir, restore_root = root / "app", root / "restore"
    state = root / "coordinator"

    print("1. coordinator: frieze server run (SQLite state, local repository)")
    procs.start("coordinator", _cli("server", "run", "--state-dir", str(state), "--port", str(api_port),
                                    "--agent-port", str(agent_port)))
    base = f"http://127.0.0.1:{api_port}"
    wait_for("the coordinator API", lambda: port_open(api_port) and (state / "admin.token").exists(), 60, procs)
    api = Api(base, (state / "admin.token").read_text().strip())
    wait_for("the coordinator health", lambda: api.call("GET", "/health")["status"] == "ok", 30, procs)
    print(f"   API {base}/v1 (OpenAPI at /v1/openapi.json), agent port https://127.0.0.1:{agent_port}")

    print("2. application: a counter writing to SQLite in WAL mode")
    db = app_dir / "counter.db"
    procs.start("app", [sys.executable, "-m", "frieze.demo", "app", str(db)])
    wait_for("the app's first rows", lambda: db.exists() and check_db(db)["counter"] > 20, 30, procs)
    print(f"   {db} (counter {check_db(db)['counter']} and growing)")

    print("3. agent: register the host, enroll with a one-time token, start the agent")
    created = api.call("POST", "/hosts", {"name": HOST, "address": f"127.0.0.1:{agent_listen}"})
    token_file = root / "agent" / "enroll.token"
    _write_0600(token_file, created["enrollment_token"] + "\n")
    provider = pick_provider(app_dir)
    cfg = root / "agent" / "agent.toml"
    cfg.write_text(agent_toml(root, agent_listen, app_dir, restore_root, provider))
    fp = _ca_fingerprint(state / "ca" / "ca.crt")
    enroll = subprocess.run(
        _cli("agent", "enroll", "--coordinator", f"https://127.0.0.1:{agent_port}", "--name", HOST,
             "--state-dir", str(root / "agent" / "state"), "--ca-fingerprint", fp, "--token-file", str(token_file),
             "--address", f"127.0.0.1:{agent_listen}", "--san", "127.0.0.1"),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if enroll.returncode != 0:
        raise RuntimeError(f"agent enroll failed ({enroll.returncode}): {enroll.stderr.strip()[-800:]}")
    token_file.unlink()
    procs.start("agent", _cli("agent", "run", "--config", str(cfg)))
    wait_for("the agent", lambda: port_open(agent_listen), 30, procs)
    wait_for("the host online", lambda: api.call("GET", f"/hosts/{HOST}")["state"] == "online", 30, procs)
    print(f"   host {HOST} online, agent at https://127.0.0.1:{agent_listen} (mutual TLS)")

    print("4. provision through the API: volume, app, repository, protection set, policy")
    api.call("POST", "/volumes", {"host": HOST, "name": "appdata", "path": str(app_dir), "provider": provider})
    api.call("POST", "/apps", {"host": HOST, "name": "counter", "kind": "sqlite", "data_dir": str(app_dir),
                               "volume": "appdata", "options": {"database": "counter.db"}})
    repo_path = root / "repository"
    api.call("POST", "/repositories", {"name": "local", "url": f"file://{repo_path}",
                                       "password": repo_password, "init": True})
    api.call("POST", "/protection-sets", {"name": "counter-set", "apps": ["counter"]})
    api.call("POST", "/policies", {"name": "nightly", "protection_set": "counter-set", "repository": "local",
                                   "cron": "0 2 * * *", "timezone": "Europe/Berlin", "consistency": "application",
                                   "retention": {"keep_last": 7}})
    print(f"   volume appdata ({provider}), app counter (sqlite), repository {repo_path}, policy nightly")

    print("5. backup (application-consistent)")
    before = check_db(db)["counter"]
    acc = api.call("POST", "/operations/backup", {"protection_set": "counter-set", "policy": "nightly"})
    st = api.wait_op(acc["operation_id"], "backup")
    if st["state"] != "complete":
        raise RuntimeError(f"backup {st['id']} {st['state']}: {st['error']}")
    after = check_db(db)["counter"]
    res = st["result"]
    rp = api.call("GET", f"/restore-points/{res['restore_point_id']}")
    freeze_ms = rp["label"]["freeze"][0]["frozen_ms"]
    print(f"   restore point {rp['id']}: {rp['consistency']}, freeze window {freeze_ms:.1f} ms, "
          f"{rp['bytes_total']} bytes ({rp['bytes_new']} new in the repository)")

    print("6. the app keeps changing the data")
    wait_for("more rows", lambda: check_db(db)["counter"] > after + 50, 30, procs)
    live = check_db(db)["counter"]
    print(f"   live counter now {live}")

    print("7. restore the restore point to a new place")
    target = restore_root / f"counter-{time.strftime('%H%M%S')}"
    acc = api.call("POST", "/operations/restore", {"restore_point": rp["id"], "target_path": str(target)})
    st2 = api.wait_op(acc["operation_id"], "restore")
    if st2["state"] != "complete":
        raise RuntimeError(f"restore {st2['id']} {st2['state']}: {st2['error']}")

    if probe is not None:
        probe([p.pid for _n, p in procs.procs])

    print("8. check the restored copy")
    chk = check_db(target / "counter.db")
    ok = chk["integrity"] == "ok" and chk["invariant"] and before <= chk["counter"] <= after < live
    print(f"   PRAGMA integrity_check: {chk['integrity']}; counter {chk['counter']} == events {chk['events']} == "
          f"max event {chk['max_event']}: {chk['invariant']}; taken between {before} and {after}, live {live}")
    summary = {
        "ok": ok, "restore_point": rp["id"], "consistency": rp["consistency"], "freeze_window_ms": freeze_ms,
        "bytes_total": rp["bytes_total"], "bytes_new": rp["bytes_new"], "backup_operation": st["id"],
        "restore_operation": st2["id"], "restored_to": str(target), "restored_counter": chk["counter"],
        "live_counter": live, "repository": str(repo_path), "coordinator_state": str(state),
        "api": f"{base}/v1", "provider": provider, "seconds": round(time.monotonic() - t_start, 1),
    }
    print("\nwhat the demo did, and where:")
    for k, v in summary.items():
        print(f"  {k:20} {v}")
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    if not ok:
        raise RuntimeError("the restored copy failed its checks")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["app"]:
        run_app(Path(args[1]))
        return 0
    try:
        s = run(Path(args[0]) if args else DEMO)
    except (RuntimeError, OSError) as e:
        print(f"\ndemo FAILED: {e}", file=sys.stderr)
        return 1
    print("\ndemo OK: application-consistent backup and verified restore" if s["ok"] else "\ndemo FAILED")
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
