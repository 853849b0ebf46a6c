"""The agent daemon: ``serve`` (the HTTPS server) and ``run`` (``serve`` under the upgrade supervisor).

``serve(config)``: uvicorn with TLS requiring a client certificate signed by the coordinator CA
(``ssl_cert_reqs=CERT_REQUIRED``, ``ssl_ca_certs=<state>/ca.crt``), the peer-certificate shim and the
``OU=coordinator`` role check. Needs ``<state>/agent.crt``/``agent.key``/``ca.crt`` (``frieze agent enroll``)
whose CN is the configured host name. Once it is serving it writes ``<state>/health.json``
(``{"pid", "version"}``). Exit code 0 on SIGTERM/SIGINT, 75 when an upgrade asks for a restart.

``run(config)``: without an install root this is just ``serve``. With one it is a small supervisor (its own
code is never swapped while it runs) that starts ``python -m frieze.agent serve`` with
``PYTHONPATH=<install root>/current/lib``, restarts it on exit 75, and during an upgrade trial rolls back
(switches ``current`` back and restarts the previous version) if the new child does not write a healthy
``health.json`` with the new version within ``upgrade_health_timeout_s`` (docs/design/agent-protocol.md §8).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

import frieze
from frieze.agent.app import AgentState, create_app
from frieze.agent.config import HostConfig, load
from frieze.agent.host import HostService
from frieze.agent.tasks import TaskTable
from frieze.agent.tls import PeerCertH11Protocol
from frieze.agent.upgrade import Installer
from frieze.core.errors import UsageError

log = logging.getLogger("frieze.agent")

EXIT_RESTART = 75


def tls_paths(cfg: HostConfig) -> dict[str, Path]:
    d = cfg.state
    paths = {"cert": d / "agent.crt", "key": d / "agent.key", "ca": d / "ca.crt"}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise UsageError(f"agent {cfg.name!r} is not enrolled ({', '.join(missing)} missing): run "
                         "`frieze agent enroll` first")
    cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else None
    if cn != cfg.name:
        raise UsageError(f"the agent certificate names host {cn!r} but the config says name = {cfg.name!r}")
    return paths


def serve(config: Path | str, *, supervised: bool = False) -> int:
    import asyncio

    import uvicorn

    cfg = load(config)
    paths = tls_paths(cfg)
    host = HostService(cfg)
    tasks = TaskTable()
    installer = Installer(cfg.install_root) if (cfg.install_root and supervised) else None
    state = AgentState(host, tasks, installer)
    addr, port = cfg.host_port
    uconf = uvicorn.Config(create_app(state), host=addr, port=port, http=PeerCertH11Protocol, log_config=None,
                           access_log=False, lifespan="off", timeout_graceful_shutdown=1,
                           ssl_certfile=str(paths["cert"]), ssl_keyfile=str(paths["key"]),
                           ssl_ca_certs=str(paths["ca"]), ssl_cert_reqs=ssl.CERT_REQUIRED)
    server = uvicorn.Server(uconf)
    exit_code = {"rc": 0}

    def request_restart() -> None:
        def later() -> None:
            time.sleep(0.5)  # let the caller see the upgrade task done
            exit_code["rc"] = EXIT_RESTART
            server.should_exit = True

        threading.Thread(target=later, daemon=True).start()

    state.request_restart = request_restart
    health = cfg.state / "health.json"
    with contextlib.suppress(FileNotFoundError):
        health.unlink()

    def announce() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            tmp = health.with_name("health.json.tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "version": frieze.__version__, "port": port}))
            os.replace(tmp, health)

    threading.Thread(target=announce, daemon=True).start()
    from frieze.agent.heartbeat import Heartbeat

    hb = Heartbeat(cfg, paths)
    hb.start()
    try:
        asyncio.run(server.serve())
    finally:
        hb.stop()
        tasks.shutdown()
        host.close()
    return exit_code["rc"]


# -- supervisor ------------------------------------------------------------------------------------------
def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start_child(config: Path, cfg: HostConfig, inst: Installer) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    lib = inst.lib_path()
    if lib:
        env["PYTHONPATH"] = lib
    argv = [sys.executable, "-m", "frieze.agent", "serve", "--config", str(config), "--supervised"]
    return subprocess.Popen(argv, cwd=str(cfg.state), env=env, preexec_fn=_die_with_parent)


def _healthy(cfg: HostConfig, child: subprocess.Popen[bytes], version: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    path = cfg.state / "health.json"
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return False
        try:
            h = json.loads(path.read_text())
            if h.get("pid") == child.pid and h.get("version") == version:
                return True
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    return False


def supervise(config: Path | str) -> int:
    config = Path(config).resolve()
    cfg = load(config)
    assert cfg.install_root is not None
    tls_paths(cfg)
    inst = Installer(cfg.install_root)
    Path(cfg.install_root).mkdir(parents=True, exist_ok=True)
    stopping = threading.Event()
    child: dict[str, subprocess.Popen[bytes] | None] = {"p": None}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        p = child["p"]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    backoff = 0.5
    while not stopping.is_set():
        p = _start_child(config, cfg, inst)
        child["p"] = p
        trial = inst.trial()
        if trial is not None:
            if _healthy(cfg, p, str(trial.get("new_version")), cfg.upgrade_health_timeout_s):
                inst.accept()
                log.warning("agent upgrade to %s accepted", trial.get("new_version"))
            else:
                log.error("agent upgrade to %s did not come up healthy; rolling back", trial.get("new_version"))
                if p.poll() is None:
                    p.kill()
                p.wait()
                inst.rollback()
                continue
        rc = p.wait()
        if stopping.is_set():
            break
        if rc == EXIT_RESTART:
            backoff = 0.5
            continue
        if rc == 0:
            break
        log.error("agent server exited with status %s; restarting in %.1fs", rc, backoff)
        time.sleep(backoff)
        backoff = min(backoff * 2, 10.0)
    p2 = child["p"]
    if p2 is not None and p2.poll() is None:
        p2.send_signal(signal.SIGTERM)
        try:
            p2.wait(10)
        except subprocess.TimeoutExpired:
            p2.kill()
            p2.wait()
    return 0


def run(config: Path | str) -> int:
    """``frieze agent run``: the supervisor when the config has an install root, else the server itself."""
    cfg = load(config)
    if cfg.install_root:
        return supervise(config)
    return serve(config)


def main_args(argv: list[str] | None = None) -> Any:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m frieze.agent", description="frieze agent daemon")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "serve"):
        sp = sub.add_parser(name)
        sp.add_argument("--config", required=True)
        if name == "serve":
            sp.add_argument("--supervised", action="store_true")
    en = sub.add_parser("enroll")
    en.add_argument("--coordinator", required=True)
    en.add_argument("--token-file", required=True, help="file holding the one-time token, or - for stdin")
    en.add_argument("--state-dir", required=True)
    en.add_argument("--name", required=True)
    en.add_argument("--ca-fingerprint")
    en.add_argument("--ca-file")
    en.add_argument("--san", action="append", default=[])
    en.add_argument("--address")
    return ap.parse_args(argv)


def read_token(token_file: str) -> str:
    if token_file == "-":
        return sys.stdin.readline().strip()
    try:
        return Path(token_file).read_text().strip()
    except OSError as e:
        raise UsageError(f"cannot read the token file {token_file}: {e.strerror}") from e


def main(argv: list[str] | None = None) -> int:
    from frieze.core.errors import FriezeError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    a = main_args(argv)
    try:
        if a.cmd == "run":
            return run(a.config)
        if a.cmd == "serve":
            return serve(a.config, supervised=a.supervised)
        from frieze.agent.enroll import enroll

        out = enroll(a.coordinator, read_token(a.token_file), a.state_dir, a.name, ca_fingerprint=a.ca_fingerprint,
                     ca_file=a.ca_file, sans=a.san, address=a.address)
        print(json.dumps(out))
        return 0
    except FriezeError as e:
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return e.exit_code
