"""The quiesce holder cut off from MariaDB by a network namespace during BACKUP STAGE BLOCK_COMMIT: nothing can
reach the server to end the freeze, so the server's own session timeouts (set to the lease) must — writers
resume within the lease plus 5 s."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.engines import mariadb_server

pytestmark = pytest.mark.root

HOLDER = """
import json, sys, time
from frieze.host.apps.registry import load
from frieze.host.apps.base import AppSpec
d = json.loads(sys.stdin.readline())
spec = AppSpec(**d["spec"])
h = load(spec.kind).quiesce(spec, epoch=1, lease_s=d["lease"])
print("QUIESCED " + json.dumps(h.info.get("server_lease_s")), flush=True)
time.sleep(3600)
"""


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


def test_holder_partitioned_during_backup_stage_writers_resume(netns: tuple[str, str, str, str]) -> None:
    ns, host_if, host_ip, ns_ip = netns
    lease = 5.0
    with mariadb_server(bind_address=f"127.0.0.1,{host_ip}") as m:
        m.sql("CREATE TABLE t (x int) ENGINE=InnoDB")
        m.root_sql(f"CREATE USER 'frieze'@'{ns_ip}' IDENTIFIED BY '{m.password}';"
                   f" GRANT ALL ON *.* TO 'frieze'@'{ns_ip}';")
        spec = {"name": "ma-ns", "kind": "mariadb", "data_dir": str(m.data_dir),
                "options": {"host": host_ip, "port": m.port, "user": "frieze"}, "secrets": m.secrets()}
        holder = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[3])
        try:
            assert holder.stdin is not None and holder.stdout is not None
            t0 = time.monotonic()
            holder.stdin.write(json.dumps({"spec": spec, "lease": lease}) + "\n")
            holder.stdin.flush()
            line = holder.stdout.readline()
            assert line.startswith("QUIESCED"), line
            sh("ip", "link", "set", host_if, "down")  # the partition: nothing from the holder reaches the server
            c = m.connect(read_timeout=60)
            try:
                with c.cursor() as cur:
                    cur.execute("INSERT INTO t VALUES (1)")  # blocks at BLOCK_COMMIT until the server gives up
            finally:
                c.close()
            resumed = time.monotonic() - t0
        finally:
            holder.kill()
            holder.wait()
        print(f"RESULT MA-PARTITION lease_s={lease} server_lease_s={line.split()[1]} writes_resumed_after_s="
              f"{resumed:.2f} bound_s={lease + 5}")
        assert resumed >= 1.0, "the write was never blocked: the freeze did not hold"
        assert resumed <= lease + 5
