"""Backup then restore round trips, with every node type, through the real repository."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from tests.repo.test_data_support import make_repo, tree_listing

from frieze.core.errors import NotFound, UsageError
from frieze.repo.backup import backup
from frieze.repo.restore import restore

IS_ROOT = os.geteuid() == 0


@pytest.fixture(name="repo")
def _repo() -> Any:
    return make_repo()


def _build(src: Path) -> None:
    (src / "dir/sub").mkdir(parents=True)
    (src / "dir/sub/text.txt").write_bytes(b"line of text\n" * 50_000)
    (src / "random.bin").write_bytes(os.urandom(700_000))
    (src / "empty").write_bytes(b"")
    (src / "dir/dup.bin").write_bytes((src / "random.bin").read_bytes())  # dedup across files
    name = b"non-utf8-\xff\xfe"
    with open(os.path.join(os.fsencode(src), name), "wb") as f:
        f.write(b"odd name")
    os.symlink("dir/sub/text.txt", src / "rel-link")
    os.symlink("/etc/passwd", src / "abs-link")
    os.symlink("does/not/exist", src / "dangling")
    os.link(src / "random.bin", src / "hard1")
    os.link(src / "random.bin", src / "dir/hard2")
    with open(src / "sparse.img", "wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(b"A" * 5000)
        f.seek(40 << 20)
        f.write(b"B" * 70_000)
    os.mkfifo(src / "fifo", 0o640)
    os.setxattr(src / "random.bin", "user.frieze", b"\x00value\xff")
    os.setxattr(src / "dir", "user.dirattr", b"d")
    os.chmod(src / "dir/sub/text.txt", 0o4751)
    (src / "ro").mkdir()
    (src / "ro/inside").write_bytes(b"x")
    os.chmod(src / "ro", 0o555)
    os.utime(src / "empty", ns=(1_000_000_123, 2_000_000_456))
    if IS_ROOT:
        os.chown(src / "empty", 4321, 8765)
        os.mknod(src / "null-dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))


def test_round_trip_every_node_type(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _build(src)
    res = backup(repo, [str(src)], host="h1", tags=["t"], label={"consistency": "crash"})
    assert res.stats.hardlinks == 2 and res.stats.other >= 1
    assert res.stats.bytes_read < 10 << 20  # the 64 MiB sparse file's holes are not read
    snap = repo.load_snapshot(res.snapshot_id)
    assert snap.label == {"consistency": "crash"} and snap.tags == ["t"] and snap.host == "h1"

    out = tmp_path / "out"
    r = restore(repo, res.snapshot_id, out, allow_devices=True)
    assert os.lstat(out / "empty").st_atime_ns == 1_000_000_123  # before anything reads it
    a, b = tree_listing(src), tree_listing(out)
    assert a.keys() == b.keys()
    assert {k: v for k, v in a.items() if a[k] != b[k] and v[0] != "d"} == {}
    # directory modes and mtimes too
    for k, v in a.items():
        if v[0] == "d":
            assert b[k][:2] == v[:2], k
            assert b[k][2] == v[2], k
    # hard links share an inode; sparse holes stay holes; xattrs; fifo; times; owners
    ino = os.stat(out / "random.bin").st_ino
    assert os.stat(out / "hard1").st_ino == ino == os.stat(out / "dir/hard2").st_ino
    assert os.stat(out / "sparse.img").st_blocks * 512 < 1 << 20
    assert os.getxattr(out / "random.bin", "user.frieze") == b"\x00value\xff"
    assert os.getxattr(out / "dir", "user.dirattr") == b"d"
    assert stat.S_ISFIFO(os.lstat(out / "fifo").st_mode)
    assert os.readlink(out / "abs-link") == "/etc/passwd"
    assert os.path.exists(os.path.join(os.fsencode(out), b"non-utf8-\xff\xfe"))
    if IS_ROOT:
        assert (os.lstat(out / "empty").st_uid, os.lstat(out / "empty").st_gid) == (4321, 8765)
        assert os.lstat(out / "null-dev").st_rdev == os.makedev(1, 3)
    assert r.stats.hardlinks == 2

    # verify mode: identical now; a changed byte is reported and nothing is written
    v = restore(repo, res.snapshot_id, out, verify=True)
    assert v.stats.mismatches == []
    with open(out / "dir/sub/text.txt", "r+b") as f:
        f.seek(100)
        f.write(b"!")
    v = restore(repo, res.snapshot_id, out, verify=True)
    assert len(v.stats.mismatches) == 1 and "text.txt" in v.stats.mismatches[0]
    print(f"RESULT R-RT files={res.stats.files} bytes_read={res.stats.bytes_read} "
          f"restored_bytes={r.stats.bytes_written}")


def test_devices_not_restored_unless_allowed(tmp_path: Path, repo: Any) -> None:
    if not IS_ROOT:
        pytest.skip("creating a device node needs root")
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "null-dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    res = backup(repo, [str(src)], host="h")
    r = restore(repo, res.snapshot_id, tmp_path / "out")
    assert not os.path.lexists(tmp_path / "out/null-dev")
    assert r.stats.skipped == 1 and "device" in r.stats.warnings[0]


def test_partial_restore_and_multi_path_layout(tmp_path: Path, repo: Any) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "x/y").mkdir(parents=True)
    (a / "x/y/f").write_bytes(b"f")
    (a / "g").write_bytes(b"g")
    os.link(a / "g", a / "x/g2")
    b.mkdir()
    (b / "h").write_bytes(b"h")
    res = backup(repo, [str(a), str(b)], host="h")
    out = tmp_path / "out"
    restore(repo, res.snapshot_id, out, paths=["a/x"])
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["a", "a/x", "a/x/g2", "a/x/y", "a/x/y/f"]
    assert (out / "a/x/g2").read_bytes() == b"g"  # its link target was not restored: a copy instead
    with pytest.raises(NotFound):
        restore(repo, res.snapshot_id, tmp_path / "out2", paths=["a/nope"])
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())
    with pytest.raises(UsageError):
        backup(repo, [str(a), str(tmp_path / "c" / "a")], host="h")  # missing path first: NotFound is a UsageError


def test_same_basename_refused(tmp_path: Path, repo: Any) -> None:
    (tmp_path / "p/a").mkdir(parents=True)
    (tmp_path / "q/a").mkdir(parents=True)
    with pytest.raises(UsageError, match="same name"):
        backup(repo, [str(tmp_path / "p/a"), str(tmp_path / "q/a")], host="h")
    assert repo.list_snapshots() == []
