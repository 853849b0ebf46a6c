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
    """``frieze bench engine`` (src/frieze/cli/bench_engine.py), SQLite only, tiny: the RESULT lines and JSON."""
    import json

    from typer.testing import CliRunner

    from frieze.cli.bench_engine import app

    res = CliRunner().invoke(app, ["--no-pg", "--ops", "5", "--rounds", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert "RESULT ENGINE-BENCH-ENV date=" in res.stdout and "RESULT ENGINE-BENCH backend=sqlite-wal" in res.stdout
    figures = json.loads(res.stdout[res.stdout.index("{"):])
    assert set(figures) == {"sqlite-wal"} and figures["sqlite-wal"]["per_task_ms"] > 0
