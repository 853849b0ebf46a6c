"""End to end across two hosts: a coordinator and two agents as separate processes, real PostgreSQL under
pgbench on host A and real MariaDB under a transfer workload on host B, in ONE protection set: one backup
at one consistent instant (one freeze epoch for both), restored per volume through each host's agent, and
the engines' own checks pass on the restored copies (PostgreSQL: recovery to the backup's stop LSN from
the WAL archive, the pgbench balance invariant, pg_amcheck --heapallindexed; MariaDB: crash recovery,
the transfer total invariant, mariadb-check). The MariaDB password lives only in the coordinator's vault
and reaches agent B per call. Both agents run on this machine on loopback ports (no network namespaces).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from frieze import demo

pytestmark = [pytest.mark.heavy, pytest.mark.timeout(600)]

if not shutil.which("mariadbd") and not Path("/usr/sbin/mariadbd").exists():
    pytest.skip("MariaDB server binaries are not installed", allow_module_level=True)


def _toml_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str | int | float | bool) else json.dumps(str(v))


def _agent_toml(name: str, port: int, state: Path, restore_root: Path, app: str, kind: str, data_dir: Path,
                options: dict[str, Any]) -> str:
    opts = ", ".join(f"{k} = {_toml_value(v)}" for k, v in options.items())
    return (f'name = "{name}"\nlisten = "127.0.0.1:{port}"\nstate_dir = "{state}"\n'
            f'restore_roots = ["{restore_root}"]\n\n'
            f'[apps.{app}]\nkind = "{kind}"\ndata_dir = "{data_dir}"\nvolume = "{app}-data"\n'
            f"options = {{ {opts} }}\n\n"
            f'[volumes.{app}-data]\npath = "{data_dir}"\nprovider = "copy"\n')


def test_two_hosts_postgres_and_mariadb_one_consistent_backup(tmp_path: Path) -> None:
    from frieze.host.apps.base import AppSpec, RecoveryTarget
    from frieze.host.apps.mariadb import MariaDBPlugin
    from frieze.host.apps.postgres import PostgresPlugin
    from tests.support.engines import (
        MariaTransfers,
        PgBench,
        maria_sum,
        mariadb_restored_copy,
        mariadb_server,
        pg_restored_copy,
        pg_server,
        pgbench_sums,
    )

    root = tmp_path / "mh"
    for d in ("coordinator", "logs", "a", "b", "restore-a", "restore-b"):
        (root / d).mkdir(parents=True)
    procs = demo.Procs(root / "logs")
    try:
        with pg_server() as pg, mariadb_server() as ma:
            bench = PgBench(pg, scale=1)
            bench.init()
            api_port, agent_port = demo.free_port(), demo.free_port()
            state = root / "coordinator"
            procs.start("coordinator", demo._cli("server", "run", "--state-dir", str(state), "--port",
                                                 str(api_port), "--agent-port", str(agent_port), "--no-scheduler"))
            demo.wait_for("api", lambda: demo.port_open(api_port) and (state / "admin.token").exists(), 90, procs)
            api = demo.Api(f"http://127.0.0.1:{api_port}", (state / "admin.token").read_text().strip())
            fp = demo._ca_fingerprint(state / "ca" / "ca.crt")
            hosts = {"host-a": ("pg", "postgres", pg.data_dir, pg.options(), root / "a", root / "restore-a"),
                     "host-b": ("maria", "mariadb", ma.data_dir, ma.options(), root / "b", root / "restore-b")}
            for name, (app, kind, data_dir, opts, adir, rroot) in hosts.items():
                lport = demo.free_port()
                created = api.call("POST", "/hosts", {"name": name, "address": f"127.0.0.1:{lport}"})
                tok = adir / "enroll.token"
                demo._write_0600(tok, created["enrollment_token"])
                cfg = adir / "agent.toml"
                cfg.write_text(_agent_toml(name, lport, adir / "state", rroot, app, kind, data_dir, opts))
                subprocess.run(demo._cli("agent", "enroll", "--coordinator", f"https://127.0.0.1:{agent_port}",
                                         "--name", name, "--state-dir", str(adir / "state"), "--ca-fingerprint", fp,
                                         "--token-file", str(tok), "--address", f"127.0.0.1:{lport}", "--san",
                                         "127.0.0.1"), check=True, capture_output=True, timeout=90)
                procs.start(f"agent-{name}", demo._cli("agent", "run", "--config", str(cfg)))
                demo.wait_for(f"agent {name}", lambda p=lport: demo.port_open(p), 60, procs)
                api.call("POST", "/volumes", {"host": name, "name": f"{app}-data", "path": str(data_dir),
                                              "provider": "copy"})
                body: dict[str, Any] = {"host": name, "name": app, "kind": kind, "data_dir": str(data_dir),
                                        "volume": f"{app}-data", "options": opts}
                if kind == "mariadb":
                    body["secrets"] = ma.secrets()
                api.call("POST", "/apps", body)
            api.call("POST", "/repositories", {"name": "vault", "url": f"file://{root / 'repo'}",
                                               "password": "pw-multihost", "init": True})
            api.call("POST", "/protection-sets", {"name": "fleet", "apps": ["pg", "maria"]})

            bench.start(clients=2)
            with MariaTransfers(ma, threads=2):
                time.sleep(1.5)
                acc = api.call("POST", "/operations/backup", {"protection_set": "fleet", "repository": "vault"})
                st = api.wait_op(acc["operation_id"], "backup", timeout=300)
                time.sleep(0.5)
            bench.stop()
            assert st["state"] == "complete", st["error"]
            rp = api.call("GET", f"/restore-points/{st['result']['restore_point_id']}")
            assert rp["consistency"] == "application-consistent"
            freeze = {f["app"]: f["frozen_ms"] for f in rp["label"]["freeze"]}
            assert set(freeze) == {"pg", "maria"} and len(rp["volumes"]) == 2
            assert {v["host"] for v in rp["volumes"]} == {"host-a", "host-b"}
            stop_lsn = rp["label"]["engine"]["pg"]["stop_lsn"]
            pg.switch_wal_and_wait_archived()

            targets = {}
            for vol, _host, rroot in (("pg-data", "host-a", root / "restore-a"),
                                     ("maria-data", "host-b", root / "restore-b")):
                target = rroot / vol
                acc = api.call("POST", "/operations/restore", {"restore_point": rp["id"], "volume": vol,
                                                               "target_path": str(target)})
                rst = api.wait_op(acc["operation_id"], f"restore {vol}", timeout=300)
                assert rst["state"] == "complete", rst["error"]
                targets[vol] = target

            plugin = PostgresPlugin()
            with pg_restored_copy(targets["pg-data"]) as r:
                opts = {**r.options(), "archive_dir": str(pg.archive_dir)}
                rspec = AppSpec(name="pg-restored", kind="postgres", data_dir=str(r.data_dir), options=opts)
                assert plugin.recover(rspec, RecoveryTarget(position=stop_lsn)).changed
                sums = pgbench_sums(r)
                assert len(set(sums)) == 1, sums
                v = plugin.verify(rspec)
                assert v.info["ok"]
            with mariadb_restored_copy(targets["maria-data"], ma.password) as m2:
                assert maria_sum(m2) == (MariaTransfers.total(), MariaTransfers.ACCOUNTS)
                mv = MariaDBPlugin().verify(AppSpec(name="maria-restored", kind="mariadb", data_dir=str(m2.data_dir),
                                                   options=m2.options(), secrets=m2.secrets()))
                assert mv.info["ok"]
            print(f"RESULT MULTIHOST restore_point={rp['id']} epoch={rp['freeze_epoch']} "
                  f"freeze_ms_pg={freeze['pg']:.1f} freeze_ms_maria={freeze['maria']:.1f} bytes={rp['bytes_total']} "
                  f"pgbench_sums_equal=1 pg_amcheck=ok maria_total_ok=1 mariadb_check=ok")
            logs = "".join(p.read_text(errors="replace") for p in (root / "logs").glob("*.log"))
            assert ma.password not in logs
    finally:
        procs.stop_all()
        subprocess.run(["chattr", "-R", "-i", str(root)], capture_output=True, check=False)
