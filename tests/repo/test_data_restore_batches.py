"""Small files are restored in batches (one file-pool job per batch of one directory's small files): the result is
the same tree whatever the interleaving of small files, large files, subdirectories and hard links."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tests.repo.test_data_support import make_repo, tree_listing

from frieze.repo.backup import backup
from frieze.repo.restore import _Restorer, restore


@pytest.fixture(name="repo")
def _repo() -> Any:
    return make_repo()


def _tree(src: Path) -> None:
    src.mkdir()
    for i in range(150):  # more than a batch, then a subdirectory, then more small files of the same directory
        (src / f"a{i:03d}").write_bytes(os.urandom(i * 37))
        if i % 40 == 7:
            d = src / f"a{i:03d}.d"
            d.mkdir()
            for k in range(5):
                (d / f"inner{k}").write_text(f"{i} {k}\n")
        if i == 60:
            (src / "a060.big").write_bytes(os.urandom(3 << 20))  # many blobs: not batched
    os.chmod(src / "a010", 0o600)
    os.utime(src / "a011", ns=(10**18, 2 * 10**18))
    os.link(src / "a020", src / "z-link")  # a hard link to a batched file
    (src / "empty").write_bytes(b"")
    with open(src / "holes", "wb") as f:  # a blob and a hole at the end: truncated to its size
        f.write(b"x" * 1000)
        f.truncate(200_000)


def test_a_tree_of_small_files_restores_exactly_in_batches(tmp_path: Path, repo: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    _tree(src)
    snap = backup(repo, [src], host="h")
    jobs: list[int] = []
    real = _Restorer._batch_job

    def spy(self: Any, dir_fd: int, batch: list[Any]) -> None:
        jobs.append(len(batch))
        real(self, dir_fd, batch)

    monkeypatch.setattr(_Restorer, "_batch_job", spy)
    out = tmp_path / "out"
    r = restore(repo, snap.snapshot_id, out)
    assert tree_listing(out) == tree_listing(src)
    assert os.lstat(out / "z-link").st_ino == os.lstat(out / "a020").st_ino
    assert max(jobs) == _Restorer.BATCH_FILES
    assert sum(jobs) == r.stats.files - 2  # a060.big (many blobs) and holes (a blob and a hole) go alone
    assert not [p for p in out.rglob(".frieze-restore-*")]


def test_chosen_small_files_restore_alone(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    _tree(src)
    snap = backup(repo, [src], host="h")
    out = tmp_path / "out"
    restore(repo, snap.snapshot_id, out, paths=["a005", "a047.d/inner3", "z-link"])
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "a005", "a047.d", "a047.d/inner3", "z-link"]
    assert (out / "z-link").read_bytes() == (src / "a020").read_bytes()
    assert (out / "a047.d/inner3").read_text() == "47 3\n"
