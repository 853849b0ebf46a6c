"""The benchmark runs and measures a per-task overhead in the expected range (SQLite WAL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from frieze.engine.bench import bench


@pytest.mark.heavy
def test_bench_sqlite_per_task_overhead(tmp_path: Path) -> None:
    out = bench(f"sqlite:///{tmp_path}/engine.sqlite", "sqlite-wal", n_ops=10, rounds=1)
    # the target is < 10 ms per task; a loose bound here so a loaded CI machine does not flake
    assert 0 < out["per_task_ms"] < 25
    assert out["ops_per_s"] > 1


def test_bench_engine_cli_prints_the_figures() -> None:
    """``frieze bench engine`` (src/frieze/cli/bench_engine.py), SQLite only, tiny: the RESULT lines and JSON.
    A subprocess: DBOS binds its log handler to the sys.stdout of its first start (a CliRunner's would close)."""
    import json
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "frieze.cli.bench_engine", "--no-pg", "--ops", "5", "--rounds", "1",
                        "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "RESULT ENGINE-BENCH-ENV date=" in p.stdout and "RESULT ENGINE-BENCH backend=sqlite-wal" in p.stdout
    figures = json.loads(p.stdout[p.stdout.index("{"):])
    assert set(figures) == {"sqlite-wal"} and figures["sqlite-wal"]["per_task_ms"] > 0
