"""Version and upgrade through the real supervised agent (agent-protocol.md §8): a wrong hash changes nothing;
a good wheel is installed beside the current one, ``current`` is switched and the new version answers; a
broken wheel does not come up healthy and is rolled back to the previous version."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from frieze.core.errors import FriezeError, IntegrityError, NotSupported
from frieze.protocol.client import AgentClient
from frieze.protocol.errors import AgentUnreachable
from tests.agent.support import PKI, Agent, agent_log, run_agent, wait_health
from tests.agent.wheels import build_frieze_wheel


def _wait_version(a: Agent, want: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    last = "?"
    while time.monotonic() < deadline:
        try:
            with a.client(timeout=5) as c:
                v = c.version()
                last = v.version
                if v.version == want:
                    return last
        except (AgentUnreachable, FriezeError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"agent still at {last}, wanted {want}\n{agent_log(a.config.parent)}")


def _offer(c: AgentClient, whl: Path, sha: str | None = None) -> object:
    data = whl.read_bytes()
    return c.upgrade(data, sha or hashlib.sha256(data).hexdigest(), whl.name)


def test_upgrade_not_supported_without_install_root(agent: Agent, tmp_path: Path) -> None:
    whl = build_frieze_wheel("0.1.1", tmp_path / "w")
    with agent.client() as c, pytest.raises(NotSupported, match="install root"):
        _offer(c, whl)


def test_upgrade_and_rollback(tmp_path: Path, pki: PKI) -> None:
    good = build_frieze_wheel("0.1.1", tmp_path / "w1")
    broken = build_frieze_wheel("0.1.2", tmp_path / "w2", broken=True)
    root = tmp_path / "install"
    extra = {"install_root": str(root), "upgrade_health_timeout_s": 20.0}
    with run_agent(tmp_path, pki, extra=extra) as a:
        with a.client() as c:
            assert c.version().version == "0.1.0"
            # 1. a wrong hash is refused before anything is written
            with pytest.raises(IntegrityError, match="SHA-256"):
                _offer(c, good, sha="0" * 64)
            assert not (root / "versions").exists() and not (root / "current").exists()
            # 2. the good wheel: installed, switched, restarted; the new version answers
            pid_before = a.server_pid()
            t0 = time.monotonic()
            t = _offer(c, good)
        _wait_version(a, "0.1.1")
        up_s = time.monotonic() - t0
        h = wait_health(a.state, a.proc, version="0.1.1")
        assert h["pid"] != pid_before
        assert (root / "current").is_symlink() and (root / "current").resolve().name.startswith("0.1.1-")
        deadline = time.monotonic() + 20  # accepted: the new agent removes the marker once it is healthy
        while (root / "upgrade.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not (root / "upgrade.json").exists()
        with a.client() as c:
            v = c.version()
            assert v.current and "0.1.1" in v.current
        print(f"RESULT U1 upgrade=0.1.0->0.1.1 seconds={up_s:.1f} task={getattr(t, 'id', '')}")
        # 3. the broken wheel: does not come up, so the supervisor rolls back to 0.1.1
        good_dir = (root / "current").resolve()
        with a.client() as c:
            _offer(c, broken)
        t1 = time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (root / "rolled_back.json").exists():
            time.sleep(0.1)
        assert (root / "rolled_back.json").exists(), agent_log(tmp_path)
        _wait_version(a, "0.1.1")
        with a.client() as c:
            v = c.version()
        assert v.version == "0.1.1" and v.rolled_back_from == "0.1.2"
        assert (root / "current").resolve() == good_dir
        print(f"RESULT U2 broken=0.1.2 rolled_back_to=0.1.1 seconds={time.monotonic() - t1:.1f}")
        # 4. offering the version already running changes nothing (no restart)
        pid = a.server_pid()
        with a.client() as c:
            same = c.wait(_offer(c, good).id, 120)  # type: ignore[attr-defined]
        assert same.changed is False and "already at 0.1.1" in same.message
        time.sleep(1.0)
        assert a.server_pid() == pid
        # 5. the supervisor restarts a server that died (kill -9), at the current version
        os.kill(pid, signal.SIGKILL)
        h2 = wait_health(a.state, a.proc, version="0.1.1", not_pid=pid)
        assert h2["pid"] != pid
        _wait_version(a, "0.1.1")
