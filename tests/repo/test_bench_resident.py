"""The benchmark's frieze-mover runner: a long-lived process that opened the repository once backs up with the
previous snapshot as parent and the changed ranges, as the coordinator's mover does."""

from __future__ import annotations

import json
import os
from pathlib import Path

from frieze.bench.peers import Frieze, FriezeMover
from frieze.repo.blobstore.registry import open_store
from frieze.repo.repository import Repository


def test_mover_process_backs_up_incrementally_with_ranges(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "db").mkdir(parents=True)
    db = src / "db" / "table"
    db.write_bytes(os.urandom(64 * 8192))
    (src / "notes.txt").write_text("hello\n" * 1000)
    (src / "docs").mkdir()
    (src / "docs" / "a.txt").write_text("kept\n")
    pw = tmp_path / "password"
    pw.write_text("bench-test-password\n")
    os.chmod(pw, 0o600)
    cli = Frieze(tmp_path / "r" / "repo", pw, ["db/**=8192"], pycache=tmp_path / "pycache")
    cli.init()
    cli.backup(src, "first")

    with db.open("r+b") as f:  # two pages change; the map says so
        f.seek(3 * 8192)
        f.write(os.urandom(8192))
        f.seek(40 * 8192)
        f.write(os.urandom(8192))
    ranges = tmp_path / "ranges.json"
    ranges.write_text(json.dumps({"db/table": [[3 * 8192, 8192], [40 * 8192, 8192]]}))

    mover = FriezeMover(cli.repo, pw, cli.fixed_blocks, pycache=cli.pycache)
    try:
        mover.open()
        mover.changed_ranges = ranges
        t = mover.backup(src, "incr")
        assert t.seconds > 0 and t.cpu_seconds > 0 and t.max_rss_mb > 0
        cpaths = tmp_path / "paths.json"
        cpaths.write_text(json.dumps([]))  # nothing changed since "incr" but what the ranges (still) list
        mover.changed_paths = cpaths
        again = mover.backup(src, "again")  # the same process, the index refreshed, the new parent used
        assert again.seconds > 0
    finally:
        mover.close()
    assert mover.proc is None

    repo = Repository.open(open_store(str(cli.repo)), "bench-test-password")
    snaps = [repo.load_snapshot(s.id) for s in sorted(repo.list_snapshots(), key=lambda s: s.seq)]
    assert [s.tags for s in snaps] == [["first"], ["incr"], ["again"]]
    assert snaps[1].parent == snaps[0].id and snaps[2].parent == snaps[1].id
    st = snaps[1].stats
    assert st["files_ranged"] == 1 and st["files_unchanged"] == 2  # notes.txt, docs/a.txt
    assert st["bytes_read"] <= 2 * 64 * 1024  # the two touched blocks, not the whole table
    assert st["subtrees_kept"] == 0 and snaps[2].stats["subtrees_kept"] == 1  # docs, given the changed paths
    assert snaps[2].tree == snaps[1].tree


def test_bench_changed_paths_are_what_lstat_sees_differ(tmp_path: Path) -> None:
    from frieze.bench.repo_bench import changed_paths, stat_map

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("f")
    (tmp_path / "a" / "g").write_text("g")
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "x").write_text("x")
    os.symlink("g", tmp_path / "a" / "l")
    before = stat_map(tmp_path)
    (tmp_path / "a" / "g").read_text()  # an access time alone is no change
    os.chmod(tmp_path / "a" / "b" / "f", 0o600)
    (tmp_path / "gone" / "x").unlink()
    (tmp_path / "gone").rmdir()
    assert changed_paths(before, stat_map(tmp_path), ["extra"]) == ["a/b/f", "extra", "gone", "gone/x"]
