"""Z1 through the real agent: kill -9 the agent daemon while an app is quiesced (or a mount fsfrozen) through the
real freeze guardian, for every engine (PostgreSQL, MariaDB, SQLite, Redis) and for fsfreeze.

Each engine runs once per module (a private instance on a free port) with one guardian; every trial starts a
fresh agent process, quiesces through its HTTPS API with a 10 s lease, starts one write that must block (for
PostgreSQL, whose ``pg_backup_start`` blocks nothing, the held backup session is what is watched), waits a
random 0-300 ms, SIGKILLs the agent and measures:

- ``thaw_after_death``: SIGKILL → the blocked write committed (PostgreSQL: the backup session gone). Must be
  < 2 s for every engine, Redis included (its ``CLIENT PAUSE`` outlives the connection, so the guardian's
  ``CLIENT UNPAUSE`` is what ends it).
- ``over_lease``: trials whose freeze lasted longer than its lease, measured by this test from the moment the
  quiesce call was sent to the observed thaw (a superset of the guardian's own window). Must be 0.

Trials: ``FRIEZE_KILL_TRIALS`` (default 20 per engine; each trial is about 1-1.5 s, mostly the agent's start).
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from frieze.host.guardian.client import GuardianClient, spawn_guardian
from tests.agent.support import PKI, agent_log, run_agent
from tests.host.apps.envs import ENVS, Env

LEASE_S = 10.0
TRIALS = int(os.environ.get("FRIEZE_KILL_TRIALS", "20"))
ENGINES = ["postgres", "mariadb", "sqlite", "redis", "files"]
PLUGINS = {k: f"frieze.host.apps.{k}:{c}" for k, c in (
    ("postgres", "PostgresPlugin"), ("mariadb", "MariaDBPlugin"), ("sqlite", "SQLitePlugin"),
    ("redis", "RedisPlugin"), ("files", "FilesPlugin"))}


def p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]


class BlockedWrite:
    """One write in a thread; ``t_done`` is when it returned."""

    def __init__(self, write: Callable[[], None]) -> None:
        self.done = threading.Event()
        self.t_done = 0.0
        self.error: BaseException | None = None

        def run() -> None:
            try:
                write()
            except BaseException as e:  # reported by the trial
                self.error = e
            self.t_done = time.monotonic()
            self.done.set()

        threading.Thread(target=run, daemon=True).start()


@dataclass
class Rig:
    env: Env
    guardian: str
    tmp: Path


@pytest.fixture(scope="module", params=ENGINES)
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"kill-{kind}")
    sock = str(tmp / "guardian.sock")
    with ENVS[kind]() as env:
        g = spawn_guardian(sock, state_dir=str(tmp / "gstate"), plugins={kind: PLUGINS[kind]})
        try:
            yield Rig(env, sock, tmp)
        finally:
            g.send_signal(signal.SIGTERM)
            try:
                g.wait(15)
            except subprocess.TimeoutExpired:
                g.kill()
                g.wait()


def _thaw_reason(sock: str, app: str, epoch: int) -> str:
    with GuardianClient(sock) as c:
        for _ in range(100):
            recs = [f for f in c.status()["freezes"] if f["target"] == f"app:{app}" and f["epoch"] == epoch]
            if recs and recs[0]["state"] == "thawed":
                return str(recs[0]["thaw_reason"])
            time.sleep(0.02)
    return "not thawed"


def _trial(rig: Rig, pki: PKI, epoch: int, rnd: random.Random) -> tuple[float, float]:
    """One kill; returns (ms from SIGKILL to the observed thaw, ms from the quiesce call to it)."""
    env = rig.env
    spec = env.spec
    d = rig.tmp / f"trial{epoch}"
    d.mkdir()
    apps = {spec.name: {"kind": spec.kind, "data_dir": spec.data_dir, "options": dict(spec.options)}}
    with run_agent(d, pki, apps=apps, extra={"guardian_socket": rig.guardian}) as a:
        with a.client(timeout=30) as c:
            t_freeze = time.monotonic()
            q = c.wait(c.quiesce(spec.name, epoch=epoch, lease_s=LEASE_S, secrets=dict(spec.secrets)).id)
            assert q.changed, q
        w: BlockedWrite | None = None
        if env.blocks_writes:
            assert env.write is not None
            w = BlockedWrite(env.write)
            assert not w.done.wait(0.2), f"{spec.kind}: a write went through while quiesced ({w.error})"
        else:
            assert env.frozen is not None and env.frozen(), f"{spec.kind}: not quiesced"
        time.sleep(rnd.uniform(0, 0.3))
        t_kill = time.monotonic()
        os.kill(a.server_pid(), signal.SIGKILL)
        if w is not None:
            ok = w.done.wait(LEASE_S + 5)
            t_thaw = w.t_done
            assert w.error is None, w.error
        else:
            assert env.frozen is not None
            ok = False
            while time.monotonic() - t_kill < LEASE_S + 5:
                if not env.frozen():
                    ok = True
                    break
                time.sleep(0.01)
            t_thaw = time.monotonic()
        a.proc.wait(10)
    if not ok:
        raise AssertionError(f"{spec.kind}: writes did not resume after the agent died\n" + agent_log(d))
    reason = _thaw_reason(rig.guardian, spec.name, epoch)
    assert reason == "client_gone", f"{spec.kind}: the guardian thawed epoch {epoch} for {reason!r}"
    return (t_thaw - t_kill) * 1000, (t_thaw - t_freeze) * 1000


def test_z1_kill_agent_while_frozen(rig: Rig, pki: PKI) -> None:
    rnd = random.Random(4)
    after_death: list[float] = []
    frozen_for: list[float] = []
    t0 = time.monotonic()
    for i in range(TRIALS):
        a, f = _trial(rig, pki, i + 1, rnd)
        after_death.append(a)
        frozen_for.append(f)
    over_lease = sum(1 for f in frozen_for if f > LEASE_S * 1000)
    kind = "fsfreeze" if rig.env.spec.kind == "files" else rig.env.spec.kind
    print(f"RESULT Z1 trials={len(after_death)} thaw_after_death_ms_p99={p99(after_death):.0f} "
          f"over_lease={over_lease} engine={kind} via=agent+guardian lease_s={LEASE_S:.0f} "
          f"thaw_after_death_ms_p50={sorted(after_death)[len(after_death) // 2]:.0f} "
          f"max_ms={max(after_death):.0f} frozen_ms_max={max(frozen_for):.0f} "
          f"seconds={time.monotonic() - t0:.0f}")
    assert len(after_death) == TRIALS >= 1
    assert max(after_death) < 2000, after_death
    assert over_lease == 0, frozen_for

