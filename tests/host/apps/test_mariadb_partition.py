"""The real agent and the real freeze guardian, both in a network namespace, cut off from MariaDB during
``BACKUP STAGE BLOCK_COMMIT``: the coordinator side (this test) quiesces through the agent's HTTPS API (the
guardian holds the MariaDB session), then the veth link to the server goes down. Nothing in the namespace can
reach the server to end the freeze any more, so the server's own session timeouts (the plug-in sets them to
the lease) must: writers resume within the lease plus 5 s, measured from the quiesce call."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.agent.support import make_pki, run_agent
from tests.support.engines import mariadb_server

from frieze.host.guardian.client import spawn_guardian

pytestmark = pytest.mark.root


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str, str]]:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2")
    n = os.getpid() % 200 + 20
    ns, host_if, ns_if = f"frz-ns{n}", f"frzh{n}", f"frzn{n}"
    host_ip, ns_ip = f"10.231.{n}.1", f"10.231.{n}.2"
    try:
        sh("ip", "netns", "add", ns)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot create a network namespace: {e.stderr.decode().strip()}")
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_if, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)



def test_agent_partitioned_during_backup_stage_writers_resume(netns: tuple[str, str, str, str],
                                                                tmp_path: Path) -> None:
    ns, host_if, host_ip, ns_ip = netns
    lease = 5.0
    inside = ["ip", "netns", "exec", ns]
    pki = make_pki(tmp_path / "pki", sans=[ns_ip])
    sock = str(tmp_path / "guardian.sock")
    with mariadb_server(bind_address=f"127.0.0.1,{host_ip}") as m:
        m.sql("CREATE TABLE t (x int) ENGINE=InnoDB")
        m.root_sql(f"CREATE USER 'frieze'@'{ns_ip}' IDENTIFIED BY '{m.password}';"
                   f" GRANT ALL ON *.* TO 'frieze'@'{ns_ip}';")
        g = spawn_guardian(sock, state_dir=str(tmp_path / "gstate"), prefix=inside,
                           plugins={"mariadb": "frieze.host.apps.mariadb:MariaDBPlugin"})
        try:
            apps = {"ma-ns": {"kind": "mariadb", "data_dir": str(m.data_dir),
                              "options": {"host": host_ip, "port": m.port, "user": "frieze"}}}
            with run_agent(tmp_path, pki, apps=apps, extra={"guardian_socket": sock}, listen_host=ns_ip,
                           prefix=inside) as a, a.client(timeout=30) as c:
                t0 = time.monotonic()
                q = c.wait(c.quiesce("ma-ns", epoch=1, lease_s=lease, secrets=m.secrets()).id)
                assert q.changed and q.result is not None
                server_lease = q.result["info"].get("server_lease_s")
                sh("ip", "link", "set", host_if, "down")  # the partition: nothing in the namespace reaches the server
                t_cut = time.monotonic()
                conn = m.connect(read_timeout=60)
                try:
                    with conn.cursor() as cur:
                        cur.execute("INSERT INTO t VALUES (1)")  # blocks at BLOCK_COMMIT until the server gives up
                finally:
                    conn.close()
                resumed = time.monotonic() - t0
                blocked = time.monotonic() - t_cut
                os.kill(a.server_pid(), signal.SIGKILL)  # unreachable now: nothing to ask it
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(g.pid, signal.SIGTERM)
            try:
                g.wait(15)
            except subprocess.TimeoutExpired:
                g.kill()
                g.wait()
        print(f"RESULT MA-PARTITION via=agent+guardian-in-netns lease_s={lease} server_lease_s={server_lease} "
              f"writes_resumed_after_s={resumed:.2f} blocked_after_cut_s={blocked:.2f} bound_s={lease + 5}")
        assert blocked >= 0.5, "the write was never blocked: the freeze did not hold"
        assert resumed <= lease + 5
