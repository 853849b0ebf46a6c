"""A real PostgreSQL under pgbench: page-aligned fixed blocks store about the changed pages; CDC does not.

Heavy (initdb, pgbench -i, a pgbench run, three repositories): ``pytest -m heavy``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from tests.repo.test_data_support import make_repo
from tests.support.pg import PG_BIN, _run, pg_available, start_postgres

from frieze.repo.backup import backup
from frieze.repo.chunking import POSTGRES_GLOBS, FixedBlocks
from frieze.repo.types import KdfParams, RepoParams

pytestmark = [pytest.mark.heavy, pytest.mark.skipif(not pg_available(), reason="PostgreSQL 15 binaries missing")]


def _pages(root: Path) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for sub in ("base", "global"):
        for p in sorted((root / sub).rglob("*")):
            if p.is_file():
                data = p.read_bytes()
                out[str(p.relative_to(root))] = [hashlib.blake2b(data[i:i + 8192], digest_size=16).digest()
                                                 for i in range(0, len(data), 8192)]
    return out


def _pg(cmd: list[str]) -> None:
    r = _run(cmd, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


def test_pgbench_changed_pages_vs_stored_bytes(tmp_path: Path) -> None:
    pg = start_postgres(tmp_path)
    try:
        sock = ["-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "postgres"]
        _pg([str(PG_BIN / "pgbench"), "-i", "-s", "10", "-q", *sock, "postgres"])
        ctl = [str(PG_BIN / "pg_ctl"), "-D", str(pg.datadir), "-w", "-t", "60"]
        _pg([*ctl, "-m", "fast", "stop"])
        variants: dict[str, Any] = {
            "cdc-1MiB": None,
            "fixed-16KiB": POSTGRES_GLOBS,
            "fixed-64KiB": {"base/**": FixedBlocks(8192, 65536), "global/**": FixedBlocks(8192, 65536)},
        }
        params = RepoParams(kdf=KdfParams.cheap_for_tests())
        repos = {k: make_repo(params=params) for k in variants}
        for k, globs in variants.items():
            backup(repos[k], [str(pg.datadir)], host="db", fixed_block_globs=globs)
        before = _pages(pg.datadir)
        _pg([*ctl, "-l", str(pg.root / "server.log"), "start"])
        _pg([str(PG_BIN / "pgbench"), "-t", "300", "-c", "2", "-n", *sock, "postgres"])  # ~1 % of pages
        _pg([*ctl, "-m", "fast", "stop"])
        after = _pages(pg.datadir)
        changed = sum(1 for f, pages in after.items() for i, h in enumerate(pages)
                      if f not in before or i >= len(before[f]) or before[f][i] != h)
        total = sum(len(p) for p in after.values())
        results = {}
        for k, globs in variants.items():
            r = backup(repos[k], [str(pg.datadir)], host="db", fixed_block_globs=globs)
            results[k] = r.stats.bytes_new
            print(f"RESULT R-PGBENCH variant={k} relation_pages={total} changed_pages={changed} "
                  f"changed_bytes={changed * 8192} new_bytes={r.stats.bytes_new} "
                  f"ratio={r.stats.bytes_new / max(1, changed * 8192):.2f} bytes_read={r.stats.bytes_read}")
        assert results["fixed-16KiB"] <= results["fixed-64KiB"] <= results["cdc-1MiB"]
        assert results["cdc-1MiB"] > 3 * results["fixed-16KiB"]
        assert results["fixed-16KiB"] <= 2.5 * changed * 8192 + (16 << 20)  # + WAL/non-relation files
    finally:
        pg.stop()
