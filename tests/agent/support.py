"""Test helpers: a PKI (coordinator CA, coordinator client cert, agent cert), and a real agent daemon process
on a free port, configured by an agent.toml written here."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frieze.protocol.ca import ROLE_AGENT, ROLE_COORDINATOR, CertificateAuthority, client_context
from frieze.protocol.client import AgentClient
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class PKI:
    ca: CertificateAuthority
    coord: dict[str, Path]  # OU=coordinator client cert
    agent: dict[str, Path]  # OU=agent cert of host h1

    def coordinator_context(self) -> Any:
        return client_context(self.coord["cert"], self.coord["key"], self.coord["ca"])


def make_pki(tmp: Path, host: str = "h1", sans: list[str] | None = None) -> PKI:
    ca = CertificateAuthority.create(tmp / "ca")
    coord = ca.issue_pair("coordinator", ROLE_COORDINATOR, tmp / "coord")
    agent = ca.issue_pair(host, ROLE_AGENT, tmp / "agentcert", sans=["127.0.0.1", "localhost", *(sans or [])])
    return PKI(ca, coord, agent)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def write_config(path: Path, top: dict[str, Any], apps: dict[str, dict[str, Any]] | None = None,
                 volumes: dict[str, dict[str, Any]] | None = None) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, a in (apps or {}).items():
        lines.append(f"\n[apps.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in a.items()]
    for name, v in (volumes or {}).items():
        lines.append(f"\n[volumes.{name}]")
        lines += [f"{k} = {toml_value(x)}" for k, x in v.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def install_agent_cert(pki: PKI, state: Path) -> None:
    state.mkdir(parents=True, exist_ok=True)
    for src, dst in ((pki.agent["cert"], "agent.crt"), (pki.agent["key"], "agent.key"), (pki.agent["ca"], "ca.crt")):
        (state / dst).write_bytes(src.read_bytes())
    os.chmod(state / "agent.key", 0o600)


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    state: Path
    config: Path
    pki: PKI

    def client(self, **kw: Any) -> AgentClient:
        return AgentClient(self.url, self.pki.coordinator_context(), **kw)

    def server_pid(self) -> int:
        return int(json.loads((self.state / "health.json").read_text())["pid"])


def wait_health(state: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0, version: str | None = None,
                not_pid: int | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited with {proc.returncode}")
        with contextlib.suppress(FileNotFoundError, ValueError):
            h: dict[str, Any] = json.loads((state / "health.json").read_text())
            if (version is None or h["version"] == version) and (not_pid is None or h["pid"] != not_pid):
                return h
        time.sleep(0.05)
    raise AssertionError("agent did not become healthy")


@contextlib.contextmanager
def run_agent(tmp: Path, pki: PKI, *, apps: dict[str, dict[str, Any]] | None = None,
              volumes: dict[str, dict[str, Any]] | None = None, extra: dict[str, Any] | None = None,
              env: dict[str, str] | None = None, listen_host: str = "127.0.0.1",
              prefix: list[str] | None = None) -> Iterator[Agent]:
    """A real ``python -m frieze.agent run`` process (its own process group), stopped in teardown.
    ``prefix``: argv before the interpreter (``["ip", "netns", "exec", NS]`` runs it in a network namespace,
    listening on ``listen_host``)."""
    port = free_port()
    state = tmp / "agent-state"
    install_agent_cert(pki, state)
    top = {"name": "h1", "listen": f"{listen_host}:{port}", "state_dir": str(state),
           "restore_roots": [str(tmp / "restore")], **(extra or {})}
    cfg = write_config(tmp / "agent.toml", top, apps, volumes)
    penv = dict(os.environ)
    penv.update(env or {})
    log = open(tmp / "agent.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "frieze.agent", "run", "--config", str(cfg)],
                            cwd=str(REPO),
                            stdout=log, stderr=subprocess.STDOUT, env=penv, start_new_session=True)
    try:
        wait_health(state, proc)
        yield Agent(proc, f"https://{listen_host}:{port}", port, state, cfg, pki)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def agent_log(tmp: Path) -> str:
    try:
        return (tmp / "agent.log").read_text()[-4000:]
    except FileNotFoundError:
        return ""
