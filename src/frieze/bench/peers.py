"""Runners for the tools compared side by side: frieze (through its own CLI, as a user runs it), restic, borg.

Each runner backs up and restores the same absolute source path; passwords go through files or
environment-provided commands, never argv.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Timing:
    seconds: float
    cpu_seconds: float
    max_rss_mb: float


def _disk_counters() -> tuple[int, ...]:
    """Sectors read, sectors written, discards and I/Os in flight of every non-loop, non-zram block device."""
    out: list[int] = []
    for d in sorted(Path("/sys/block").iterdir()):
        if d.name.startswith(("loop", "zram", "ram")):
            continue
        try:
            f = (d / "stat").read_text().split()
        except OSError:
            continue
        out += [int(f[2]), int(f[6]), int(f[8])] + ([int(f[13])] if len(f) > 13 else [])
    return tuple(out)


def settle(quiet_s: float = 1.0, max_s: float = 20.0) -> float:
    """Wait until the disks have done no I/O for ``quiet_s`` (at most ``max_s``); returns the seconds waited.
    Before each timed run, so no tool pays for write-back or discards the previous step left behind."""
    t0 = time.monotonic()
    last, since = _disk_counters(), time.monotonic()
    while time.monotonic() - t0 < max_s:
        time.sleep(0.2)
        cur = _disk_counters()
        if cur != last:
            last, since = cur, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return time.monotonic() - t0


def drop_caches() -> bool:
    """Write back and drop the page cache (needs root), then wait for idle disks; False if not permitted."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        ok = True
    except OSError:
        ok = False
    settle()
    return ok


def _run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> Timing:
    """Run ``argv``; wall time, and CPU time and peak RSS of that process alone (``wait4``)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as errf:
        p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=errf)
        _pid, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            errf.seek(0)
            tail = errf.read().decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"{argv[0]} {' '.join(argv[1:3])} failed ({p.returncode}): {tail}")
    return Timing(dt, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024)


class Tool:
    name = "tool"
    #: whether the benchmark times this tool's restores
    restores = True

    def __init__(self, repo: Path, password_file: Path) -> None:
        self.repo = repo
        self.password_file = password_file

    def env(self) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "BORG_", "FRIEZE_"))}
        return e

    def init(self) -> None:
        raise NotImplementedError

    def backup(self, src: Path, name: str) -> Timing:
        raise NotImplementedError

    def restore(self, name: str, target: Path) -> Timing:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError


class Frieze(Tool):
    name = "frieze"

    def __init__(self, repo: Path, password_file: Path, fixed_blocks: list[str], pycache: Path | None = None) -> None:
        super().__init__(repo, password_file)
        self.fixed_blocks = fixed_blocks
        #: where the bytecode of every module frieze imports is cached (outside the source tree)
        self.pycache = pycache or repo.parent.parent / "pycache"
        self.snap: dict[str, str] = {}
        #: a JSON file of changed byte ranges for the next backup (``--changed-ranges``), if any
        self.changed_ranges: Path | None = None
        #: a JSON file of every path changed since the parent (``--changed-paths``), if any
        self.changed_paths: Path | None = None

    def _cli(self, *args: str) -> list[str]:
        exe = Path(sys.executable).with_name("frieze")
        return [str(exe), "repo", *args]

    def env(self) -> dict[str, str]:
        e = super().env()
        e["FRIEZE_REPO"] = str(self.repo)
        e["FRIEZE_PASSWORD_FILE"] = str(self.password_file)
        e["FRIEZE_STATE_DIR"] = str(self.repo.parent / "frieze-state")
        # as installed: bytecode cached (outside the source tree), not every module compiled on every run
        e.pop("PYTHONDONTWRITEBYTECODE", None)
        e["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        return e

    def warm_up(self, scratch: Path) -> None:
        """Untimed: init, back up and restore a tiny tree in a scratch repository with the same environment,
        so every module the measured runs import has its bytecode cached, as in an installed tool (borg's and
        restic's are: Debian ships borg's bytecode, restic is one binary). Without it the first measured
        frieze run compiled numpy, pydantic, typer, rich, ... and counted that as backup time."""
        if scratch.exists():
            shutil.rmtree(scratch)
        (scratch / "src" / "d").mkdir(parents=True)
        (scratch / "src" / "d" / "f").write_bytes(os.urandom(100_000))
        (scratch / "src" / "g").write_bytes(bytes(200_000))
        w = Frieze(scratch / "repo", self.password_file, self.fixed_blocks, self.pycache)
        w.init()
        w.backup(scratch / "src", "warm")
        w.restore("warm", scratch / "out")
        shutil.rmtree(scratch)

    def init(self) -> None:
        _run(self._cli("init"), self.env())

    def backup(self, src: Path, name: str) -> Timing:
        fb: list[str] = []
        for g in self.fixed_blocks:
            fb += ["--fixed-blocks", g]
        if self.changed_ranges is not None:
            fb += ["--changed-ranges", str(self.changed_ranges)]
        if self.changed_paths is not None:
            fb += ["--changed-paths", str(self.changed_paths)]
        t = _run(self._cli("backup", str(src), "--tag", name, "--quiet", *fb), self.env())
        return t

    def restore(self, name: str, target: Path) -> Timing:
        return _run(self._cli("restore", f"tag:{name}", "--target", str(target), "--quiet"), self.env())

    def version(self) -> str:
        from frieze import __version__

        return __version__


class FriezeMover(Frieze):
    """frieze as the coordinator's mover runs it: one long-lived process (:mod:`frieze.bench.resident`) that
    opened the repository once (untimed, as the coordinator caches it) and, per backup, refreshes the index
    and calls the library. Caches are dropped before each timed run as for every tool; what the process keeps
    is what the coordinator keeps: its imports, the unwrapped keys, the loaded index."""

    name = "frieze-mover"
    #: restores go through the same library as ``frieze``'s; the benchmark does not time them twice
    restores = False

    def __init__(self, repo: Path, password_file: Path, fixed_blocks: list[str], pycache: Path | None = None) -> None:
        super().__init__(repo, password_file, fixed_blocks, pycache)
        self.proc: subprocess.Popen[str] | None = None

    def _call(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.proc is None:
            self.proc = subprocess.Popen([sys.executable, "-m", "frieze.bench.resident"], env=self.env(),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the resident frieze process ended (exit {self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"frieze mover {req.get('op')}: {reply['error']}")
        return reply

    def open(self) -> None:
        """Untimed: start the process and open the repository (the coordinator holds it open)."""
        self._call({"op": "open", "repo": str(self.repo), "password_file": str(self.password_file)})

    def backup(self, src: Path, name: str) -> Timing:
        t0 = time.perf_counter()
        r = self._call({"op": "backup", "paths": [str(src)], "host": socket.gethostname(), "tags": [name],
                        "fixed_blocks": self.fixed_blocks,
                        "changed_ranges": str(self.changed_ranges) if self.changed_ranges else None,
                        "changed_paths": str(self.changed_paths) if self.changed_paths else None})
        return Timing(time.perf_counter() - t0, float(r["cpu_seconds"]), float(r["max_rss_mb"]))

    def close(self) -> None:
        if self.proc is not None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                    self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class Restic(Tool):
    name = "restic"

    def env(self) -> dict[str, str]:
        e = super().env()
        e["RESTIC_REPOSITORY"] = str(self.repo)
        e["RESTIC_PASSWORD_FILE"] = str(self.password_file)
        e["RESTIC_CACHE_DIR"] = str(self.repo.parent / "restic-cache")
        return e

    def init(self) -> None:
        _run(["restic", "init"], self.env())

    def backup(self, src: Path, name: str) -> Timing:
        return _run(["restic", "backup", "--quiet", "--tag", name, str(src)], self.env())

    def restore(self, name: str, target: Path) -> Timing:
        return _run(["restic", "restore", "latest", "--tag", name, "--target", str(target)], self.env())

    def version(self) -> str:
        return subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.split()[1]


class Borg(Tool):
    name = "borg"

    def env(self) -> dict[str, str]:
        e = super().env()
        e["BORG_PASSCOMMAND"] = f"cat {self.password_file}"
        e["BORG_BASE_DIR"] = str(self.repo.parent / "borg-base")
        e["BORG_RELOCATED_REPO_ACCESS_IS_OK"] = "yes"
        return e

    def init(self) -> None:
        _run(["borg", "init", "-e", "repokey-blake2", str(self.repo)], self.env())

    def backup(self, src: Path, name: str) -> Timing:
        return _run(["borg", "create", "--compression", "zstd,1", f"{self.repo}::{name}", str(src)], self.env())

    def restore(self, name: str, target: Path) -> Timing:
        target.mkdir(parents=True, exist_ok=True)
        return _run(["borg", "extract", f"{self.repo}::{name}"], self.env(), cwd=target)

    def version(self) -> str:
        return subprocess.run(["borg", "--version"], capture_output=True, text=True).stdout.split()[-1]
