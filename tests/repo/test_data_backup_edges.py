"""Backup edge cases: missing paths, files that vanish, progress, aborts, sparse fixed blocks, CDC ranges."""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from tests.repo.test_data_support import make_repo, same_but_atime

from frieze.core.errors import NotFound
from frieze.repo.backup import backup
from frieze.repo.browse import resolve
from frieze.repo.chunking import FixedBlocks
from frieze.repo.progress import Progress
from frieze.repo.restore import restore


@pytest.fixture(name="repo")
def _repo() -> Any:
    return make_repo()


def test_missing_path_changes_nothing(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(10_000))
    backup(repo, [str(src)], host="h")

    def contents() -> dict[str, bytes]:
        return {b.key: repo.store.get(b.key) for b in repo.store.list("")}

    before, snaps = contents(), repo.list_snapshots()
    with pytest.raises(NotFound, match="does not exist") as ei:
        backup(repo, [str(src), str(tmp_path / "nope")], host="h")
    assert str(tmp_path / "nope") in ei.value.message and ei.value.exit_code != 0
    assert contents() == before  # the same keys with the same bytes
    assert repo.list_snapshots() == snaps


def test_vanished_file_is_a_warning_not_a_failure(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep").write_bytes(b"k")
    (src / "gone").write_bytes(b"g")

    def opener(path: bytes) -> int:
        if path.endswith(b"/gone"):
            raise FileNotFoundError(2, "No such file or directory")
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)

    res = backup(repo, [str(src)], host="h", open_file=opener)
    assert any("gone" in w for w in res.stats.warnings)
    out = tmp_path / "out"
    restore(repo, res.snapshot_id, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep"]
    assert repo.load_snapshot(res.snapshot_id).stats["warnings_count"] == 1


def test_progress_events_and_abort(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(os.urandom(100_000))
    events: list[Progress] = []
    res = backup(repo, [str(src)], host="h", progress=events.append)
    assert events[-1].done and events[-1].bytes_done == events[-1].bytes_total == 500_000
    assert events[-1].files_total == 5
    assert all(a.bytes_done <= b.bytes_done for a, b in itertools.pairwise(events))

    def boom(p: Progress) -> None:
        raise RuntimeError("stop")

    (src / "f0").write_bytes(b"changed")
    with pytest.raises(RuntimeError):
        backup(repo, [str(src)], host="h", progress=boom)
    assert [s.id for s in repo.list_snapshots()] == [res.snapshot_id]  # nothing committed


def test_sparse_fixed_block_file(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "vol"
    src.mkdir()
    with open(src / "disk.img", "wb") as f:
        f.truncate(32 << 20)
        f.seek(5 << 20)
        f.write(os.urandom(100_000))
    res = backup(repo, [str(src)], host="h", fixed_block_globs={"*.img": FixedBlocks(4096, 1 << 20)})
    node, _ = resolve(repo, res.tree, "disk.img")
    assert node is not None and node.block_size == 1 << 20 and len(node.extents) == 32
    assert [i for i, e in enumerate(node.extents) if e.id is not None] == [5]  # 31 hole extents
    assert res.stats.bytes_read == 1 << 20
    out = tmp_path / "out"
    restore(repo, res.snapshot_id, out)
    assert (out / "disk.img").read_bytes() == (src / "disk.img").read_bytes()
    assert os.stat(out / "disk.img").st_blocks * 512 <= 2 << 20


def test_ranges_on_a_cdc_file_read_it_whole(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(1 << 20))
    backup(repo, [str(src)], host="h")
    with open(src / "f", "r+b") as fh:
        fh.write(b"xx")
    res = backup(repo, [str(src)], host="h", changed_ranges={"f": [(0, 2)]})
    assert res.stats.bytes_read == 1 << 20 and res.stats.chunks_new >= 1
    # [] for an unchanged-size CDC file: the caller says nothing changed, nothing is read
    os.utime(src / "f", ns=(1, 2))
    res2 = backup(repo, [str(src)], host="h", changed_ranges={"f": []})
    assert res2.stats.bytes_read == 0


def test_restore_twice_into_the_same_target(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/f").write_bytes(b"data")
    os.link(src / "d/f", src / "h")
    os.symlink("d/f", src / "s")
    res = backup(repo, [str(src)], host="h")
    out = tmp_path / "out"
    restore(repo, res.snapshot_id, out)
    (out / "d/f").write_bytes(b"local edit")
    r2 = restore(repo, res.snapshot_id, out)
    assert (out / "d/f").read_bytes() == b"data" and (out / "h").read_bytes() == b"data"
    assert os.stat(out / "h").st_ino == os.stat(out / "d/f").st_ino
    assert os.readlink(out / "s") == "d/f"
    assert r2.stats.files == 1 and r2.stats.hardlinks == 1
    assert json.loads(json.dumps(r2.to_dict()))["stats"]["files"] == 1
    assert json.loads(json.dumps(res.to_dict()))["snapshot"] == res.snapshot_id
    assert restore(repo, res.snapshot_id, out, verify=True).stats.mismatches == []


def test_file_changing_while_read_is_a_warning(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(2_000_000))

    def opener(path: bytes) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with open(path, "ab") as f:  # a writer appends just as the backup opens it
            f.write(b"more")
        return fd

    res = backup(repo, [str(src)], host="h", open_file=opener)
    assert any("changed while it was read" in w for w in res.stats.warnings)


def test_directory_swapped_for_a_symlink_mid_walk_is_not_followed(tmp_path: Path, repo: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import frieze.repo.backup as backup_mod

    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "a").mkdir(parents=True)
    (src / "a/x").write_bytes(b"x")
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    real = backup_mod.read_xattrs

    def racing(path: bytes | int) -> list[tuple[bytes, bytes]]:
        out = real(path)
        if isinstance(path, bytes) and path.endswith(b"/a") and not os.path.islink(path):
            os.rename(path, path + b".old")  # after the lstat of "a", before it is opened
            os.symlink(outside, path)
        return out

    monkeypatch.setattr(backup_mod, "read_xattrs", racing)
    res = backup(repo, [str(src)], host="h")
    # O_DIRECTORY|O_NOFOLLOW refuses the symlink (ENOTDIR), or the opened inode is not the stat'ed one.
    assert any(w.endswith("src/a: Not a directory") or "replaced during backup" in w
               for w in res.stats.warnings), res.stats.warnings
    from frieze.repo.browse import ls

    assert [e.path for e in ls(repo, res.snapshot_id, "", recursive=True)] == ["a"]


@pytest.mark.parametrize("read_threads", [0, 2])
def test_small_file_that_grows_past_the_chunker_minimum_while_read(
        tmp_path: Path, repo: Any, read_threads: int) -> None:
    """A file stat'ed below the chunker's minimum (one chunk, read in one ``pread``; in a batch on reader threads)
    that a writer grows past it before the read is cut normally: its whole new content is stored, read once
    counted once, with a "changed while it was read" warning; the small file beside it is unaffected."""
    src = tmp_path / "src"
    src.mkdir()
    small = os.urandom(1000)
    (src / "grows").write_bytes(small)
    (src / "stays").write_bytes(b"s" * 500)
    extra = os.urandom(600_000)  # far past the minimum (16 KiB here) and past the maximum (256 KiB): several chunks

    def opener(path: bytes) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        if path.endswith(b"/grows") and os.fstat(fd).st_size == len(small):
            with open(path, "ab") as f:
                f.write(extra)
        return fd

    res = backup(repo, [str(src)], host="h", open_file=opener, read_threads=read_threads)
    assert [w for w in res.stats.warnings if "grows" in w and "changed while it was read" in w], res.stats.warnings
    assert len([w for w in res.stats.warnings if "grows" in w]) == 1, res.stats.warnings
    assert res.stats.files_read == 2
    assert res.stats.bytes_read == len(small) + len(extra) + 500  # the grown file counted once, as stored
    node, _ = resolve(repo, res.tree, "grows")
    assert node is not None and node.size == len(small) + len(extra) and len(node.extents) > 1
    out = tmp_path / "out"
    restore(repo, res.snapshot_id, out)
    assert (out / "grows").read_bytes() == small + extra
    assert (out / "stays").read_bytes() == b"s" * 500


def _assert_same_files(src: Path, out: Path, skip: tuple[str, ...] = ()) -> None:
    """Every regular file of ``src`` (but those named in ``skip``) is in ``out`` with the same bytes."""
    for p in src.rglob("*"):
        if p.is_file() and p.name not in skip:
            assert (out / p.relative_to(src)).read_bytes() == p.read_bytes(), p


def _mixed_tree(src: Path) -> None:
    """Small and large files over several directories, a hard-linked pair, a symlink, an empty file."""
    rnd = itertools.count()
    for d in range(5):
        sub = src / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        for i in range(12):
            (sub.parent / f"s{i}").write_bytes(os.urandom(100 + 997 * next(rnd)))
        (sub / "big").write_bytes(os.urandom(3 << 20))
    (src / "d0" / "s0").rename(src / "linked")
    os.link(src / "linked", src / "d1" / "also-linked")
    (src / "empty").write_bytes(b"")
    os.symlink("linked", src / "sym")


@pytest.mark.parametrize("read_threads", [1, 2, 4])
def test_reader_threads_give_the_same_snapshot_as_reading_on_the_walking_thread(
        tmp_path: Path, repo: Any, read_threads: int) -> None:
    """Files read on reader threads (and entries stat'ed ahead) make exactly the tree the single-threaded walk
    makes: same tree id, same stats of what was read, same unreadable file left out with its warning."""
    src = tmp_path / "src"
    _mixed_tree(src)
    (src / "d2" / "no-access").write_bytes(b"secret")
    opens: list[bytes] = []
    threads: set[str] = set()

    def opener(path: bytes) -> int:
        opens.append(path)
        threads.add(threading.current_thread().name.rsplit("_", 1)[0])
        if path.endswith(b"/no-access"):
            raise PermissionError(13, "Permission denied")
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOATIME)  # atimes stay as the runs saw them

    backup(repo, [str(src)], host="warm", parent=None)  # every atime set once (relatime): the runs compare alike
    opens.clear()
    one = backup(repo, [str(src)], host="one", parent=None, open_file=opener, read_threads=0)
    n_opens = len(opens)
    assert threads == {"MainThread"}
    threads.clear()
    many = backup(repo, [str(src)], host="many", parent=None, open_file=opener, read_threads=read_threads)
    assert threads == {"frieze-read"}
    assert many.tree == one.tree
    assert len(opens) == 2 * n_opens
    for k in ("files", "files_read", "bytes_read", "dirs", "hardlinks", "symlinks", "chunks"):
        assert getattr(many.stats, k) == getattr(one.stats, k), k
    assert many.stats.chunks_new == 0  # stored by the runs before
    assert [w for w in many.stats.warnings if "no-access" in w] == [w for w in one.stats.warnings if "no-access" in w]
    assert any("no-access" in w and "cannot open" in w for w in many.stats.warnings)
    out = tmp_path / "out"
    restore(repo, many.snapshot_id, out)
    assert not (out / "d2" / "no-access").exists()
    _assert_same_files(src, out, skip=("no-access",))
    assert os.stat(out / "linked").st_ino == os.stat(out / "d1" / "also-linked").st_ino


def test_reader_thread_failure_aborts_the_backup_and_commits_nothing(tmp_path: Path, repo: Any) -> None:
    """An error that is not a per-file problem, raised on a reader thread, reaches the caller; no snapshot."""
    src = tmp_path / "src"
    _mixed_tree(src)
    before = repo.list_snapshots()

    def opener(path: bytes) -> int:
        if path.endswith(b"/big") and b"d3" in path:
            raise RuntimeError("disk controller on fire")
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)

    with pytest.raises(RuntimeError, match="on fire"):
        backup(repo, [str(src)], host="h", open_file=opener, read_threads=2)
    assert repo.list_snapshots() == before
    res = backup(repo, [str(src)], host="h", read_threads=2)  # and the next run is fine
    assert res.stats.files > 0


def _direct_io_works(d: Path) -> bool:
    probe = d / "direct-probe"
    probe.write_bytes(b"\0" * 8192)
    try:
        fd = os.open(probe, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    finally:
        probe.unlink()
    os.close(fd)
    return True


def _db_like(src: Path) -> None:
    """Files of 8 KiB pages: whole blocks, a tail that is not a multiple of 4 KiB, a sparse one."""
    src.mkdir()
    (src / "rel").write_bytes(os.urandom(3 * (1 << 20) + 5 * 8192))
    (src / "tail").write_bytes(os.urandom(64 * 1024 + 8192 + 100))
    with open(src / "sparse", "wb") as f:
        f.write(os.urandom(65536))
        f.seek(4 << 20)
        f.write(os.urandom(65536 * 2))
    (src / "small").write_bytes(os.urandom(3000))


GLOBS = {"*": FixedBlocks(page_size=8192, block_size=65536)}


def test_direct_io_reads_fixed_blocks_around_the_page_cache_and_makes_the_same_tree(tmp_path: Path, repo: Any) -> None:
    if not _direct_io_works(tmp_path):
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    src = tmp_path / "src"
    _db_like(src)
    backup(repo, [str(src)], host="warm", parent=None, fixed_block_globs=GLOBS)  # atimes set once
    cached = backup(repo, [str(src)], host="a", parent=None, fixed_block_globs=GLOBS, direct_io=False)
    direct = backup(repo, [str(src)], host="b", parent=None, fixed_block_globs=GLOBS, direct_io=True)
    assert direct.tree == cached.tree
    assert cached.stats.bytes_read_direct == 0
    assert direct.stats.bytes_read == cached.stats.bytes_read
    # every byte of data read with O_DIRECT (the holes of the sparse file are not read at all)
    assert direct.stats.bytes_read_direct == direct.stats.bytes_read > 3 << 20
    out = tmp_path / "out"
    restore(repo, direct.snapshot_id, out)
    for p in src.iterdir():
        assert (out / p.name).read_bytes() == p.read_bytes(), p
    assert os.stat(out / "sparse").st_blocks * 512 < os.stat(src / "sparse").st_size


@pytest.mark.parametrize("refusal", [errno.EINVAL, errno.EOPNOTSUPP])
def test_direct_io_refused_by_the_file_system_falls_back_to_the_page_cache(
        tmp_path: Path, repo: Any, monkeypatch: pytest.MonkeyPatch, refusal: int) -> None:
    """A transfer the file system refuses with EINVAL (as some do for O_DIRECT) is read through the cache,
    for the rest of that file; the snapshot is the same."""
    src = tmp_path / "src"
    _db_like(src)
    backup(repo, [str(src)], host="warm", parent=None, fixed_block_globs=GLOBS)
    want = backup(repo, [str(src)], host="a", parent=None, fixed_block_globs=GLOBS, direct_io=False)
    real_preadv = os.preadv
    refused: list[int] = []

    def preadv(fd: int, bufs: Any, off: int, *a: Any) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(refusal, os.strerror(refusal))
        return real_preadv(fd, bufs, off, *a)

    monkeypatch.setattr(os, "preadv", preadv)
    got = backup(repo, [str(src)], host="b", parent=None, fixed_block_globs=GLOBS, direct_io=True, read_threads=0)
    assert got.tree == want.tree and got.stats.bytes_read_direct == 0
    assert len(refused) == 4  # once for each file (rel, tail, sparse, small), then read through the cache


def test_direct_io_reads_content_defined_files_too_and_cuts_them_the_same(tmp_path: Path, repo: Any) -> None:
    """Ordinary files at or above the chunker's minimum are read with O_DIRECT into the chunker's aligned
    buffer: sizes that are not a multiple of 4 KiB (the last read ends short, the next one finds the end),
    files longer than the buffer (its
    unconsumed tail moved to an aligned place), shared content across files: the same chunks as a buffered
    read, and the tree restores byte for byte."""
    if not _direct_io_works(tmp_path):
        pytest.skip(f"the file system of {tmp_path} refuses O_DIRECT")
    src = tmp_path / "src"
    src.mkdir()
    common = os.urandom(700_000)
    sizes = {"exact": 1 << 20, "odd": (1 << 20) + 4095, "long": 3 * (1 << 20) + 12_345, "min": 16 * 1024,
             "tail": 16 * 1024 + 1}
    for name, size in sizes.items():
        (src / name).write_bytes((common + os.urandom(size))[:size])
    (src / "small").write_bytes(os.urandom(5000))  # below the minimum: one pread through the cache
    backup(repo, [str(src)], host="warm", parent=None)  # atimes set once
    cached = backup(repo, [str(src)], host="a", parent=None, direct_io=False)
    direct = backup(repo, [str(src)], host="b", parent=None, direct_io=True)
    assert direct.tree == cached.tree  # same cut points, same blobs
    assert cached.stats.bytes_read_direct == 0
    assert direct.stats.bytes_read == cached.stats.bytes_read == sum(sizes.values()) + 5000
    assert direct.stats.bytes_read_direct == sum(sizes.values())
    out = tmp_path / "out"
    restore(repo, direct.snapshot_id, out)
    for p in src.iterdir():
        assert (out / p.name).read_bytes() == p.read_bytes(), p


def test_direct_io_is_not_used_for_blocks_not_aligned_to_4k(tmp_path: Path, repo: Any) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "db").write_bytes(os.urandom(1536 * 100 + 7))
    globs = {"*": FixedBlocks(page_size=512, block_size=1536)}
    res = backup(repo, [str(src)], host="h", parent=None, fixed_block_globs=globs, direct_io=True)
    assert res.stats.bytes_read == 1536 * 100 + 7 and res.stats.bytes_read_direct == 0
    out = tmp_path / "out"
    restore(repo, res.snapshot_id, out)
    assert (out / "db").read_bytes() == (src / "db").read_bytes()


def test_an_unreadable_parent_tree_means_reading_its_files_again(
        tmp_path: Path, repo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A parent tree that fails to read (here: authentication) is a warning, and that directory's files are
    read again; the snapshot is the one a backup without parent makes."""
    from frieze.core.errors import IntegrityError
    from frieze.repo.tree import decode_tree

    src = tmp_path / "src"
    _mixed_tree(src)
    first = backup(repo, [str(src)], host="h")
    bad = next(n.subtree for n in decode_tree(repo.read_blob(first.tree), first.tree) if n.name == b"d3")
    real_read = repo.read_blob

    def read_blob(blob_id: bytes, *a: Any, **k: Any) -> bytes:
        if blob_id == bad:
            raise IntegrityError(f"blob {blob_id.hex()}: authentication failed (damaged, swapped or forged)")
        return real_read(blob_id, *a, **k)

    monkeypatch.setattr(repo, "read_blob", read_blob)
    second = backup(repo, [str(src)], host="h", read_threads=2)
    assert [w for w in second.stats.warnings if "parent tree" in w and "unreadable" in w]
    d3_files = sum(1 for p in (src / "d3").rglob("*") if p.is_file())
    assert second.stats.files_read == d3_files  # d3's files read again, every other file reused
    monkeypatch.setattr(repo, "read_blob", real_read)
    fresh = backup(repo, [str(src)], host="h", parent=None)
    assert same_but_atime(repo, second.tree, fresh.tree)  # unchanged entries keep the parent's atime


def _back_up_restore_source(src: Path, repo: Any) -> Any:
    """Back up (and return the result of) a tree of files whose runs have unaligned heads and tails (content-
    defined chunks), a fixed-block file with a tail that is not a multiple of 4 KiB, a sparse file with data at
    unaligned offsets, and small files."""
    src.mkdir()
    (src / "cdc.bin").write_bytes(os.urandom(9 << 20) + b"tail-not-aligned")
    (src / "db").mkdir()
    (src / "db" / "rel").write_bytes(os.urandom((6 << 20) + 12345))
    with open(src / "sparse.img", "wb") as f:
        f.truncate(48 << 20)
        f.seek((3 << 20) + 777)
        f.write(os.urandom(5 << 20))
        f.seek(40 << 20)
        f.write(os.urandom(70_000))
    (src / "small").write_bytes(b"s" * 3000)
    return backup(repo, [str(src)], host="h", fixed_block_globs={"db/**": FixedBlocks(8192, 65536)})


@pytest.mark.parametrize("direct_io", [True, False])
def test_restore_with_and_without_direct_io_writes_the_same_bytes(tmp_path: Path, repo: Any, direct_io: bool) -> None:
    """Long runs go around the page cache (their aligned middles; heads, tails and short runs through it) and
    the restored files are byte for byte the source, holes included; with direct_io=False nothing is direct."""
    src = tmp_path / "src"
    res = _back_up_restore_source(src, repo)
    out = tmp_path / "out"
    r = restore(repo, res.snapshot_id, out, direct_io=direct_io)
    _assert_same_files(src, out)
    assert os.stat(out / "sparse.img").st_blocks * 512 < 20 << 20  # the holes stay holes
    if direct_io and _direct_io_works(tmp_path):
        assert r.stats.bytes_written_direct > (4 << 20), r.stats
    elif not direct_io:
        assert r.stats.bytes_written_direct == 0


def test_restore_falls_back_to_the_page_cache_when_direct_writes_are_refused(
        tmp_path: Path, repo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that refuses an O_DIRECT write (EINVAL) gets the same bytes through the page cache."""
    if not _direct_io_works(tmp_path):
        pytest.skip("O_DIRECT is not supported where the tests run")
    src = tmp_path / "src"
    res = _back_up_restore_source(src, repo)
    real = os.pwritev
    refused: list[int] = []

    def pwritev(fd: int, bufs: Any, off: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, bufs, off)

    monkeypatch.setattr(os, "pwritev", pwritev)
    out = tmp_path / "out"
    r = restore(repo, res.snapshot_id, out)
    assert refused and r.stats.bytes_written_direct == 0
    _assert_same_files(src, out)


def test_a_file_only_read_since_the_parent_is_unchanged_and_keeps_its_record(tmp_path: Path, repo: Any) -> None:
    """Reading a file (or listing a directory) moves its access time and nothing else. The next backup
    neither reads it again nor stores new trees: the parent's records, their atimes included, are reused.
    Any other change of the record still counts (here: a mode change of another file)."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    files = [src / "d" / f"f{i}" for i in range(5)]
    for i, f in enumerate(files):
        f.write_bytes(os.urandom(1000 + i))
        st = f.stat()
        os.utime(f, ns=(st.st_mtime_ns - 10**9, st.st_mtime_ns))  # atime before mtime: the next read moves it
    d_st = (src / "d").stat()
    os.utime(src / "d", ns=(d_st.st_mtime_ns - 10**9, d_st.st_mtime_ns))
    first = backup(repo, [str(src)], host="h", read_threads=2)
    before = [f.stat().st_atime_ns for f in files]
    for f in files:
        f.read_bytes()
    os.listdir(src / "d")
    if [f.stat().st_atime_ns for f in files] == before:
        pytest.skip("this file system does not move access times on reads (noatime)")
    again = backup(repo, [str(src)], host="h", read_threads=2)
    assert again.parent == first.snapshot_id
    assert again.stats.files_unchanged == 5 and again.stats.files_read == 0 and again.stats.bytes_read == 0
    assert again.tree == first.tree and again.stats.trees_new == 0
    os.chmod(files[2], 0o600)
    third = backup(repo, [str(src)], host="h", read_threads=2)
    assert third.tree != first.tree and third.stats.trees_new >= 2  # d's tree and the root's
    assert third.stats.files_read == 1 and third.stats.chunks_new == 0  # its ctime moved: read again, same data
    nodes = {n.name: n for n in _subtree_nodes(repo, third.tree, b"d")}
    assert nodes[b"f2"].mode & 0o777 == 0o600 and nodes[b"f2"].atime_ns == files[2].stat().st_atime_ns


def _subtree_nodes(repo: Any, tree: bytes, name: bytes) -> list[Any]:
    from frieze.repo.tree import decode_tree

    sub = next(n.subtree for n in decode_tree(repo.read_blob(tree), tree) if n.name == name)
    assert sub is not None
    return decode_tree(repo.read_blob(sub), sub)


def test_parent_trees_read_ahead_are_bounded_and_give_the_same_snapshot(
        tmp_path: Path, repo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk reads the parent trees of a directory's subdirectories ahead, at most ``TREES_AHEAD`` at a
    time; with many subdirectories the rest are read when reached, and the snapshot is the same."""
    from frieze.repo import backup as backup_mod

    src = tmp_path / "src"
    for i in range(40):
        d = src / f"d{i:02d}" / "inner"
        d.mkdir(parents=True)
        (d / "f").write_bytes(os.urandom(100 + i))
    first = backup(repo, [str(src)], host="h", read_threads=2)
    monkeypatch.setattr(backup_mod._Backup, "TREES_AHEAD", 4)
    seen: list[int] = []
    real = backup_mod._Backup._prefetch_trees

    def spy(self: Any, pdir: Any, entries: Any, skip: Any = frozenset()) -> list[bytes]:
        started = real(self, pdir, entries, skip)
        seen.append(len(self.tree_prefetch))
        return started

    monkeypatch.setattr(backup_mod._Backup, "_prefetch_trees", spy)
    again = backup(repo, [str(src)], host="h", read_threads=2)
    assert max(seen) == 4  # the bound was reached, never passed
    assert again.tree == first.tree and again.stats.files_unchanged == 40 and not again.stats.warnings
    # a subdirectory replaced by a file: its parent tree, read ahead, is dropped when the walk of src ends
    shutil.rmtree(src / "d00")
    (src / "d00").write_bytes(b"now a file")
    left: list[int] = []
    real_walk = backup_mod._Backup.dir_tree

    def walk(self: Any, abs_path: bytes, rel: str, parent_tree: Any, st: Any) -> Any:
        dw = real_walk(self, abs_path, rel, parent_tree, st)
        if rel == "":
            left.append(len(self.tree_prefetch))
        return dw

    monkeypatch.setattr(backup_mod._Backup, "dir_tree", walk)
    third = backup(repo, [str(src)], host="h", read_threads=2)
    assert left == [0] and third.stats.files_unchanged == 39 and not third.stats.warnings
