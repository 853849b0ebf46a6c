"""A private PostgreSQL server in a data directory of its own, for the benchmark corpus.

As root, PostgreSQL must run as the ``postgres`` user; the data directory is handed to it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

PGBIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self, data: Path, sockdir: Path) -> None:
        self.data = data
        self.sockdir = sockdir
        self.port = _free_port()

    def _as_pg(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, check=True, text=True, capture_output=True)

    def init(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres", "postgres")
            shutil.chown(self.sockdir, "postgres", "postgres")
            os.chmod(self.data, 0o700)
        self._as_pg([str(PGBIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])

    def start(self) -> None:
        self._as_pg([str(PGBIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.sockdir / "log"), "-o",
                     f"-p {self.port} -k {self.sockdir} -c listen_addresses='' -c fsync=off", "start"])

    def stop(self) -> None:
        self._as_pg([str(PGBIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop"])

    def sql(self, q: str) -> str:
        return self._as_pg([str(PGBIN / "psql"), "-h", str(self.sockdir), "-p", str(self.port), "-U", "postgres",
                            "-d", "postgres", "-At", "-c", q]).stdout

    def pgbench(self, *args: str) -> None:
        self._as_pg([str(PGBIN / "pgbench"), "-h", str(self.sockdir), "-p", str(self.port), "-U", "postgres",
                     *args, "postgres"])
