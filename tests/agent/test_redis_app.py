"""The common app API through the real agent with a real, private Redis (password from the host's secrets
file, or per call): start, start again (nothing), status, quiesce (writes wait), unquiesce, verify, stop,
stop again (nothing). The password never appears in any task body or in the agent's log."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from frieze.core.errors import FriezeError
from tests.agent.support import PKI, agent_log, run_agent
from tests.support.ports import free_port

PASSWORD = "CANARY-redis-pw-41c9"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


def test_redis_lifecycle_through_agent(tmp_path: Path, pki: PKI) -> None:
    import redis

    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    conf = tmp_path / "redis.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {data}\nrequirepass {PASSWORD}\nsave \"\"\n"
                    f"appendonly no\ndaemonize no\n")
    secrets = tmp_path / "redis.secrets.toml"
    secrets.write_text(f'password = "{PASSWORD}"\n')
    os.chmod(secrets, 0o600)
    apps = {"r1": {"kind": "redis", "data_dir": str(data), "secrets_file": str(secrets),
                   "options": {"host": "127.0.0.1", "port": port, "config_file": str(conf)}}}
    bodies: list[str] = []
    try:
        with run_agent(tmp_path, pki, apps=apps) as a, a.client() as c:
            def run(t: object) -> object:
                done = c.wait(t.id)  # type: ignore[attr-defined]
                bodies.append(done.model_dump_json())
                return done

            s1 = run(c.start("r1"))
            s2 = run(c.start("r1"))
            assert s1.changed is True and s2.changed is False  # type: ignore[attr-defined]
            st = run(c.status("r1")).result  # type: ignore[attr-defined]
            assert st["running"] is True and st["quiesced"] is False
            r = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD)
            r.set("k", "1")
            q = run(c.quiesce("r1", epoch=1, lease_s=10))
            assert q.changed is True  # type: ignore[attr-defined]
            done = threading.Event()

            def writer() -> None:
                redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=30).set("k", "2")
                done.set()

            th = threading.Thread(target=writer)
            th.start()
            assert not done.wait(0.4), "a write went through while Redis was paused"
            u = run(c.unquiesce("r1", epoch=1))
            assert u.changed is True  # type: ignore[attr-defined]
            th.join(10)
            assert done.is_set() and r.get("k") == b"2"
            r.close()
            v = run(c.verify("r1"))
            assert v.state == "done"  # type: ignore[attr-defined]
            # a per-call secret overrides the file: a wrong one fails the call with the plug-in's error
            with pytest.raises(FriezeError):
                c.wait(c.quiesce("r1", epoch=2, lease_s=5, secrets={"password": "wrong"}).id)
            t1 = run(c.stop("r1"))
            t2 = run(c.stop("r1"))
            assert t1.changed is True and t2.changed is False  # type: ignore[attr-defined]
            log = agent_log(tmp_path)
    finally:
        # never leave a redis-server behind
        try:
            redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=2).shutdown(nosave=True)
        except Exception:
            pass
        time.sleep(0.1)
    in_bodies = sum(1 for b in bodies if PASSWORD in b)
    in_log = log.count(PASSWORD)
    print(f"RESULT R1 redis_calls={len(bodies)} secret_in_bodies={in_bodies} secret_in_log={in_log}")
    assert bodies and in_bodies == 0 and in_log == 0
