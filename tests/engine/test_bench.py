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
