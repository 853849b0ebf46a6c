"""``frieze bench repo`` end to end at a tiny scale: every tool's row and every ratio line is printed.

Figures at this scale mean nothing (start-up costs dominate); this only proves the benchmark runs: the
corpus (with a real pgbench database), the frieze runner through its own CLI, restic and borg side by side,
the incremental after the database pages changed, the restores compared byte for byte, and the report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from frieze.bench.pg import PGBIN
from frieze.bench.repo_bench import MOVER, RANGES, TARGETS

FRIEZE = str(Path(sys.executable).with_name("frieze"))
MISSING = [t for t in ("restic", "borg") if shutil.which(t) is None]
if not (PGBIN / "pgbench").exists():
    MISSING.append(str(PGBIN / "pgbench"))


@pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (Debian packages restic, borgbackup, "
                                          f"postgresql-15)")
def test_bench_repo_tiny_scale_prints_every_row() -> None:
    # Under /var/tmp and world-traversable: as root, PostgreSQL runs as the postgres user and must reach its
    # data directory (pytest's tmp_path is 0700).
    work = Path(tempfile.mkdtemp(prefix="frieze-bench-smoke-", dir="/var/tmp"))
    try:
        os.chmod(work, 0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FRIEZE_", "RESTIC_", "BORG_"))}
        p = subprocess.run([FRIEZE, "bench", "repo", "--work", str(work / "w"), "--scale", "0.01",
                            "--pgbench-scale", "1"], env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        lines = p.stdout.splitlines()
        assert lines[0].startswith("corpus: ") and "load average" in lines[0], lines[:2]
        changed = lines[1].split(":")[1].split()[0]  # "database pages changed ...: 338/14846 (2.8 MB)"
        n_changed, n_total = (int(x) for x in changed.split("/"))
        assert 0 < n_changed < n_total
        header = next(i for i, ln in enumerate(lines) if ln.startswith("tool "))
        rows = {ln.split()[0]: ln for ln in lines[header + 1:header + 6]}
        assert list(rows) == ["frieze", RANGES, MOVER, "restic", "borg"], lines
        for name, row in rows.items():
            assert "error:" not in row, row
            cells = row.split()
            if name == MOVER:  # its incremental only: the long-lived process; restores are frieze's
                assert cells[-2:] == ["-", "-"] and "-" not in cells[2:-2], row
                continue
            assert cells[-1] == "yes", f"{name}: restore not byte-for-byte identical: {row}"
            assert "-" not in cells[2:], f"{name}: a phase did not run: {row}"
        assert lines[header + 6].startswith(f"({RANGES}: ")
        assert lines[header + 7].startswith(f"({MOVER}: ")
        ratio_lines = {ln.split()[0]: ln.split()[1] for ln in lines[header + 9:] if ln.strip()}
        assert set(ratio_lines) == set(TARGETS), ratio_lines
        for v in ratio_lines.values():
            float(v)  # every ratio computed (a "-" would fail here)
        assert "frieze        first backup" in p.stderr and "database:" in p.stderr  # the progress lines
    finally:
        shutil.rmtree(work, ignore_errors=True)
