"""Cost follows change: a parent snapshot spares unchanged files, changed ranges spare unchanged blocks."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from tests.repo.test_data_support import make_repo, tree_listing

from frieze.repo.backup import backup
from frieze.repo.chunking import FixedBlocks
from frieze.repo.restore import restore

PG = {"base/**": FixedBlocks(8192, 65536)}


class CountingOpener:
    def __init__(self) -> None:
        self.opened: list[bytes] = []

    def __call__(self, path: bytes) -> int:
        self.opened.append(path)
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)


@pytest.fixture(name="repo")
def _repo() -> Any:
    return make_repo()


def _tree(src: Path, n: int = 30) -> None:
    for i in range(n):
        d = src / f"d{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(1000 + i * 3000))


def test_parent_means_unchanged_files_are_not_opened(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    _tree(src)
    first = backup(repo, [str(src)], host="h")
    assert first.parent is None and first.stats.files_read == 30
    op = CountingOpener()
    second = backup(repo, [str(src)], host="h", open_file=op)
    assert second.parent == first.snapshot_id
    assert op.opened == [] and second.stats.bytes_read == 0 and second.stats.files_unchanged == 30
    # Nothing changed (directory atimes settle after the first listing under relatime): same root tree.
    assert backup(repo, [str(src)], host="h").tree == second.tree

    (src / "d1/f6").write_bytes(b"changed")
    os.chmod(src / "d2/f7", 0o600)  # mode change only: re-read (conservative), same blobs
    op = CountingOpener()
    third = backup(repo, [str(src)], host="h", open_file=op)
    assert sorted(os.path.basename(p) for p in op.opened) == [b"f6", b"f7"]
    assert third.stats.files_unchanged == 28
    assert third.stats.bytes_read == len(b"changed") + (src / "d2/f7").stat().st_size
    assert third.stats.chunks_new == 1

    # another host's or another path set's snapshot is not a parent; parent=None reads all
    other = backup(repo, [str(src)], host="other")
    assert other.parent is None and other.stats.files_read == 30
    full = backup(repo, [str(src)], host="h", parent=None)
    assert full.stats.files_read == 30 and full.stats.chunks_new == 0
    out = tmp_path / "out"
    restore(repo, third.snapshot_id, out)
    assert tree_listing(out) == tree_listing(src)
    print(f"RESULT R-INCR files=30 reopened={len(op.opened)} bytes_read={third.stats.bytes_read}")


def test_changed_ranges_read_only_touched_blocks(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "pg"
    (src / "base").mkdir(parents=True)
    rel = "base/16384"
    f = src / rel
    f.write_bytes(os.urandom(4 << 20))  # 64 blocks of 64 KiB
    (src / "conf").write_bytes(os.urandom(300_000))
    first = backup(repo, [str(src)], host="h", fixed_block_globs=PG)
    assert first.stats.bytes_read == (4 << 20) + 300_000

    with open(f, "r+b") as fh:
        fh.seek(70_000)
        fh.write(b"x" * 10)          # block 1
        fh.seek(3 * 65536 - 5)
        fh.write(b"y" * 10)          # blocks 2 and 3
        fh.seek(4 << 20)
        fh.write(b"z" * 1000)        # grows: a new partial block 64
    ranges = {rel: [(70_000, 10), (3 * 65536 - 5, 10), (4 << 20, 1000)], "conf": []}
    op = CountingOpener()
    second = backup(repo, [str(src)], host="h", fixed_block_globs=PG, changed_ranges=ranges, open_file=op)
    assert [os.path.basename(p) for p in op.opened] == [b"16384"]
    assert second.stats.bytes_read == 3 * 65536 + 1000
    assert second.stats.files_ranged == 1
    assert second.stats.chunks_new == 4
    out = tmp_path / "out"
    restore(repo, second.snapshot_id, out)
    assert (out / rel).read_bytes() == f.read_bytes()
    # None = the whole file changed: read all of it
    third = backup(repo, [str(src)], host="h", fixed_block_globs=PG, changed_ranges={rel: None})
    assert third.stats.bytes_read == f.stat().st_size
    print(f"RESULT R-RANGES file_bytes={f.stat().st_size} bytes_read={second.stats.bytes_read} "
          f"new_chunks={second.stats.chunks_new}")


def test_page_aligned_blocks_store_about_the_changed_pages(tmp_path: Path) -> None:
    """64 MiB file, 1 % of its 8 KiB pages changed at random: new bytes ~= the changed blocks."""
    src = tmp_path / "pg"
    (src / "base").mkdir(parents=True)
    f = src / "base/1259"
    size = 64 << 20
    f.write_bytes(os.urandom(size))
    rng = random.Random(1)
    changed = rng.sample(range(size // 8192), size // 8192 // 100)
    results = {}
    for block in (16384, 65536):
        r = make_repo()
        globs = {"base/**": FixedBlocks(8192, block)}
        backup(r, [str(src)], host="h", fixed_block_globs=globs)
        with open(f, "r+b") as fh:
            for p in changed:
                fh.seek(p * 8192 + 17)
                fh.write(os.urandom(64))
        second = backup(r, [str(src)], host="h", fixed_block_globs=globs)  # mtime changed: full read
        touched = len({p * 8192 // block for p in changed})
        assert second.stats.bytes_new == touched * block
        results[block] = second.stats.bytes_new / (len(changed) * 8192)
        print(f"RESULT R-PAGES size={size} changed_pages={len(changed)} block={block} "
              f"new_bytes={second.stats.bytes_new} ratio_to_changed_pages={results[block]:.2f}")
    assert results[16384] < 2.1 and results[65536] < 8.1
