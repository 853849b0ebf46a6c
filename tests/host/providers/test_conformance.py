"""Conformance suite of the snapshot provider port, run against every local provider on a real file system.

btrfs and reflink run on real loop-mounted btrfs/XFS; copy runs on the test's tmp directory. Each case
checks immutability and content equality of the image, idempotent snapshot/delete, list, clone writability,
that ``changed_ranges`` covers every byte that really changed (random writes, a punched hole and growth of
a big file between two snapshots), and that an unsupported file system is refused with NotSupported and
nothing changed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.loopfs import loop_fs_or_skip

from frieze.core.errors import AlreadyExists, NotFound, NotSupported, UsageError
from frieze.host.providers._fs import mount_of
from frieze.host.providers._layout import make_immutable, make_mutable, snapshot_root
from frieze.host.providers.base import SnapshotProvider, SnapshotRef
from frieze.host.providers.btrfs import BtrfsProvider
from frieze.host.providers.copy import CopyProvider
from frieze.host.providers.reflink import ReflinkProvider

BIG = 8 * 1024 * 1024


@dataclass
class Case:
    provider: SnapshotProvider
    volume: Path
    scratch: Path  # a directory on the same file system, outside the volume (for clones)


@contextlib.contextmanager
def _case(kind: str, tmp_path: Path) -> Iterator[Case]:
    if kind == "copy":
        vol = tmp_path / "vol"
        vol.mkdir()
        try:
            yield Case(CopyProvider(), vol, tmp_path)
        finally:
            make_mutable(str(tmp_path))  # images are chattr +i: let pytest remove tmp_path
        return
    provider: SnapshotProvider = BtrfsProvider() if kind.startswith("btrfs") else ReflinkProvider()
    fstype = "xfs" if kind.startswith("reflink-xfs") else "btrfs"
    with loop_fs_or_skip(fstype) as fs:
        if kind.endswith("-root"):  # the volume is the mount's root: snapshots go inside it
            scratch = fs.mount / "scratch"
            scratch.mkdir()
            yield Case(provider, fs.mount, scratch)
        else:
            yield Case(provider, fs.volume, fs.mount)


@pytest.fixture(params=["btrfs", "btrfs-root", "reflink-xfs", "reflink-xfs-root", "reflink-btrfs", "copy"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    with _case(request.param, tmp_path) as c:
        yield c


def _populate(vol: Path) -> None:
    (vol / "a.txt").write_bytes(b"alpha\n")
    (vol / "sub" / "deep").mkdir(parents=True)
    (vol / "sub" / "deep" / "b.bin").write_bytes(os.urandom(100_000))
    (vol / "link").symlink_to("a.txt")
    os.link(vol / "a.txt", vol / "hard.txt")
    os.chmod(vol / "sub" / "deep" / "b.bin", 0o640)
    os.setxattr(vol / "a.txt", "user.frieze", b"xattr-value")


def _digest(root: Path) -> dict[str, str]:
    """Relative path -> content/type digest of everything under root (not following symlinks)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".frieze-snapshots", "scratch")]
        for n in filenames + dirnames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                xattrs = sorted((n, os.getxattr(p, n)) for n in os.listxattr(p))
                out[rel] = f"{oct(p.stat().st_mode & 0o777)}:{xattrs}:" + hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _write_fails(path: Path) -> bool:
    try:
        with open(path, "r+b") as f:
            f.write(b"X")
    except OSError as e:
        return e.errno in (errno.EPERM, errno.EROFS, errno.EACCES)
    return False


def test_snapshot_is_an_immutable_equal_image(case: Case) -> None:
    _populate(case.volume)
    before = _digest(case.volume)
    ref = case.provider.snapshot(str(case.volume), "s1")
    assert ref.provider == case.provider.name and ref.snap_id == "s1"
    assert ".frieze-snapshots" in Path(ref.path).parts
    assert mount_of(ref.path).source == mount_of(str(case.volume)).source  # on the volume's own file system
    assert _digest(Path(ref.path)) == before
    (case.volume / "a.txt").write_bytes(b"changed\n")
    (case.volume / "new").write_bytes(b"n")
    assert _digest(Path(ref.path)) == before  # the image does not follow the volume
    assert _write_fails(Path(ref.path) / "sub" / "deep" / "b.bin")
    with pytest.raises(OSError):
        (Path(ref.path) / "intruder").write_bytes(b"x")
    assert _digest(Path(ref.path)) == before


def test_snapshot_and_delete_are_idempotent_and_listed(case: Case) -> None:
    _populate(case.volume)
    vol = str(case.volume)
    assert case.provider.list(vol) == []
    r1 = case.provider.snapshot(vol, "s1")
    image = _digest(Path(r1.path))
    (case.volume / "a.txt").write_bytes(b"later\n")
    assert case.provider.snapshot(vol, "s1") == r1  # same id: the existing image, untouched
    assert _digest(Path(r1.path)) == image
    r2 = case.provider.snapshot(vol, "s2")
    assert [r.snap_id for r in case.provider.list(vol)] == ["s1", "s2"]
    case.provider.delete(r1)
    case.provider.delete(r1)
    assert not os.path.lexists(r1.path)
    assert case.provider.list(vol) == [r2]
    case.provider.delete(r2)
    assert case.provider.list(vol) == []
    assert (case.volume / "a.txt").read_bytes() == b"later\n"


def test_prepare_never_changes_the_image(case: Case) -> None:
    """Whatever changes between ``prepare`` (before the freeze) and ``snapshot``, the image is the volume at the
    snapshot: same-size overwrites with the old mtime put back, growth, truncation, deletion, new files, a
    broken hard link, a retargeted symlink, a removed xattr, a mode change."""
    _populate(case.volume)
    (case.volume / "gone.txt").write_bytes(b"soon gone")
    (case.volume / "shrink.bin").write_bytes(os.urandom(300_000))
    vol = str(case.volume)
    info = case.provider.prepare(vol, "s1")
    assert set(info) >= {"prepared", "files", "ms"}
    assert info["prepared"] is (case.provider.name == "copy")
    st = os.stat(case.volume / "a.txt")
    (case.volume / "a.txt").write_bytes(b"ALPHA\n")  # same size, old times put back: only ctime moved
    os.utime(case.volume / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    with open(case.volume / "sub" / "deep" / "b.bin", "r+b") as f:
        f.seek(50_000)
        f.write(b"Z" * 10)
        f.seek(0, 2)
        f.write(b"grown")
    os.truncate(case.volume / "shrink.bin", 1234)
    (case.volume / "gone.txt").unlink()
    (case.volume / "sub" / "fresh").write_bytes(b"fresh")
    (case.volume / "hard.txt").unlink()
    (case.volume / "hard.txt").write_bytes(b"alpha\n")  # no longer the same inode as a.txt
    (case.volume / "link").unlink()
    (case.volume / "link").symlink_to("sub")
    os.removexattr(case.volume / "a.txt", "user.frieze")
    os.chmod(case.volume / "shrink.bin", 0o600)
    expected = _digest(case.volume)
    ref = case.provider.snapshot(vol, "s1")
    assert _digest(Path(ref.path)) == expected
    assert os.stat(Path(ref.path) / "hard.txt").st_ino != os.stat(Path(ref.path) / "a.txt").st_ino
    root = Path(snapshot_root(vol, case.provider.name))
    assert not [n for n in os.listdir(root) if n.startswith(".pre-")]  # the pre-copy is used up
    if case.provider.name == "copy":
        pre = getattr(case.provider, "last_pre_copy", None)
        assert pre is not None and pre.taken >= 2 and pre.patched_bytes > 0  # a.txt: hard-linked, copied anew


def test_prepare_is_idempotent_and_cleaned_up(case: Case) -> None:
    _populate(case.volume)
    vol = str(case.volume)
    root = Path(snapshot_root(vol, case.provider.name))
    copy = case.provider.name == "copy"

    def pres() -> list[str]:
        return sorted(n for n in os.listdir(root) if n.startswith(".pre-")) if root.exists() else []

    case.provider.prepare(vol, "s1")
    case.provider.prepare(vol, "s1")
    assert pres() == ([".pre-s1", ".pre-s1.json"] if copy else [])
    assert case.provider.unprepare(vol, "s1") is copy
    assert case.provider.unprepare(vol, "s1") is False
    assert pres() == []
    case.provider.prepare(vol, "s2")
    case.provider.delete(SnapshotRef(case.provider.name, vol, "s2", os.path.join(root, "s2")))
    assert pres() == []  # delete of a snapshot never taken removes its preparation
    ref = case.provider.snapshot(vol, "s3")
    assert case.provider.prepare(vol, "s3")["prepared"] is False  # the snapshot exists: nothing to prepare
    assert pres() == []
    case.provider.delete(ref)
    with pytest.raises(UsageError):
        case.provider.prepare(vol, "../escape")
    with pytest.raises(NotFound):
        case.provider.prepare(str(case.volume / "missing"), "s4")
    assert _digest(case.volume) == _digest(case.volume)  # the volume itself is never touched


def test_clone_is_writable_and_independent(case: Case) -> None:
    assert case.provider.capabilities.writable_clone
    _populate(case.volume)
    ref = case.provider.snapshot(str(case.volume), "s1")
    dest = case.scratch / "clone1"
    out = case.provider.clone(ref, str(dest))
    assert out == str(dest)
    assert _digest(dest) == _digest(Path(ref.path))
    (dest / "a.txt").write_bytes(b"mine\n")
    (dest / "sub" / "new").write_bytes(b"n")
    assert (Path(ref.path) / "a.txt").read_bytes() == b"alpha\n"
    assert (case.volume / "a.txt").read_bytes() == b"alpha\n"
    with pytest.raises(AlreadyExists):
        case.provider.clone(ref, str(dest))


def test_bad_input(case: Case) -> None:
    with pytest.raises(NotFound):
        case.provider.snapshot(str(case.volume / "missing"), "s1")
    with pytest.raises(UsageError):
        case.provider.snapshot(str(case.volume), "../escape")
    victim = case.scratch / "victim"
    victim.mkdir()
    (victim / "keep").write_bytes(b"k")
    for vol in (str(case.volume), str(case.scratch / "no-such-volume")):
        forged = SnapshotRef(case.provider.name, vol, "victim", str(victim))
        with pytest.raises(UsageError):  # a path that is not where the provider keeps that id
            case.provider.delete(forged)
    assert (victim / "keep").read_bytes() == b"k"


def _covered(ranges: list[tuple[int, int]] | None, offset: int) -> bool:
    return ranges is None or any(a <= offset < a + n for a, n in ranges)


def test_changed_ranges_cover_every_real_change(case: Case) -> None:
    vol = str(case.volume)
    rnd = random.Random(4)
    big = case.volume / "big.dat"
    big.write_bytes(rnd.randbytes(BIG))
    (case.volume / "same.txt").write_bytes(b"unchanged" * 1000)
    (case.volume / "gone.txt").write_bytes(b"bye")
    (case.volume / "shrunk.dat").write_bytes(rnd.randbytes(100_000))
    (case.volume / "replaced.dat").write_bytes(rnd.randbytes(50_000))
    s1 = case.provider.snapshot(vol, "s1")
    if not case.provider.capabilities.changed_ranges:
        s2 = case.provider.snapshot(vol, "s2")
        with pytest.raises(NotSupported):
            case.provider.changed_ranges(s1, s2)
        return
    fd = os.open(big, os.O_RDWR)
    try:
        for _ in range(25):
            off, n = rnd.randrange(0, BIG - 70_000), rnd.randrange(1, 65_536)
            os.pwrite(fd, rnd.randbytes(n), off)
        os.pwrite(fd, b"tail-growth" * 1000, BIG + 5000)  # grows the file, leaving a hole before it
        os.fsync(fd)
    finally:
        os.close(fd)
    subprocess.run(["fallocate", "--punch-hole", "--offset", str(3 << 20), "--length", str(256 << 10), str(big)],
                   check=True)
    (case.volume / "gone.txt").unlink()
    (case.volume / "fresh.txt").write_bytes(b"new file")
    os.truncate(case.volume / "shrunk.dat", 70_001)
    (case.volume / "replaced.tmp").write_bytes(rnd.randbytes(50_000))
    os.rename(case.volume / "replaced.tmp", case.volume / "replaced.dat")
    s2 = case.provider.snapshot(vol, "s2")
    cr = case.provider.changed_ranges(s1, s2)
    assert cr["fresh.txt"] is None
    assert cr["same.txt"] == []
    assert "gone.txt" not in cr
    assert cr["replaced.dat"] is None or sum(n for _a, n in cr["replaced.dat"]) >= 50_000
    shrunk = cr["shrunk.dat"]
    assert shrunk is None or _covered(shrunk, 70_000)  # the block the new end cuts through
    old = (Path(s1.path) / "big.dat").read_bytes()
    new = (Path(s2.path) / "big.dat").read_bytes()
    ranges = cr["big.dat"]
    assert ranges is not None
    step = 512  # compare in 512-byte pieces: every piece that differs must be covered
    missed = []
    for off in range(0, len(new), step):
        if new[off:off + step] != old[off:off + len(new[off:off + step])]:
            first = next(i for i in range(off, min(off + step, len(new)))
                         if i >= len(old) or new[i] != old[i])
            if not _covered(ranges, first):
                missed.append(first)
    assert not missed, f"changed bytes not reported: {missed[:5]}"
    reported = sum(n for _a, n in ranges)
    assert 0 < reported < len(new) // 2, f"reported {reported} of {len(new)} bytes: not incremental"
    print(f"RESULT changed_ranges provider={case.provider.name} file_bytes={len(new)} reported_bytes={reported}")


@pytest.mark.parametrize("kind,fstype", [("btrfs", "ext4"), ("btrfs", "xfs"), ("reflink", "ext4"),
                                         ("btrfs", "btrfs-plain-dir")])
def test_unsupported_file_system_is_refused_and_nothing_changes(kind: str, fstype: str) -> None:
    provider: SnapshotProvider = BtrfsProvider() if kind == "btrfs" else ReflinkProvider()
    with loop_fs_or_skip(fstype.split("-")[0]) as fs:
        vol = fs.volume
        if fstype == "btrfs-plain-dir":
            vol = fs.mount / "plain"
            vol.mkdir()
        _populate(vol)
        before = _digest(fs.mount)
        assert provider.supports(str(vol)) is False
        with pytest.raises(NotSupported) as ei:
            provider.snapshot(str(vol), "s1")
        assert fstype.split("-")[0] in str(ei.value)
        assert str(vol) in str(ei.value)
        assert _digest(fs.mount) == before


def test_reflink_refuses_xfs_without_reflink() -> None:
    with loop_fs_or_skip("xfs", mkfs_options=["-m", "reflink=0"]) as fs:
        _populate(fs.volume)
        before = _digest(fs.mount)
        assert ReflinkProvider().supports(str(fs.volume)) is False
        with pytest.raises(NotSupported, match="reflink"):
            ReflinkProvider().snapshot(str(fs.volume), "s1")
        assert _digest(fs.mount) == before


def test_leftovers_of_a_crashed_attempt_are_removed(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "f").write_bytes(b"f")
    p = CopyProvider()
    try:
        root = Path(snapshot_root(str(vol), p.name))
        leftover = root / ".tmp-s1-dead"
        leftover.mkdir(parents=True)
        (leftover / "half").write_bytes(b"h")
        make_immutable(str(leftover))
        ref = p.snapshot(str(vol), "s1")
        assert not leftover.exists()
        assert (Path(ref.path) / "f").read_bytes() == b"f"
        assert [r.snap_id for r in p.list(str(vol))] == ["s1"]
    finally:
        make_mutable(str(tmp_path))



def test_btrfs_metadata_shortcut_is_safe_against_coarse_ctime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files untouched for > 2 s before the old snapshot skip their extent maps; a same-size overwrite right
    after the old snapshot (possibly in the same ctime tick) is still found."""
    import frieze.host.providers.reflink as reflink_mod

    with loop_fs_or_skip("btrfs") as fs:
        p = BtrfsProvider()
        (fs.volume / "old.dat").write_bytes(os.urandom(64 * 1024))
        (fs.volume / "hot.dat").write_bytes(os.urandom(64 * 1024))
        time.sleep(2.2)
        fd = os.open(fs.volume / "hot.dat", os.O_RDWR)
        try:
            os.pwrite(fd, os.urandom(4096), 8192)
            s1 = p.snapshot(str(fs.volume), "s1")
            os.pwrite(fd, os.urandom(4096), 8192)  # same size, right after: ctime may not move
        finally:
            os.close(fd)
        s2 = p.snapshot(str(fs.volume), "s2")
        mapped: list[str] = []
        real = reflink_mod.file_changed_ranges  # type: ignore[attr-defined]

        def spy(old: str, new: str) -> list[tuple[int, int]]:
            mapped.append(os.path.basename(new))
            return real(old, new)

        monkeypatch.setattr(reflink_mod, "file_changed_ranges", spy)
        cr = p.changed_ranges(s1, s2)
        assert cr["old.dat"] == [] and "old.dat" not in mapped  # the shortcut
        assert cr["hot.dat"] and any(a <= 8192 < a + n for a, n in cr["hot.dat"])
        p.delete(s1)
        assert not any(n.startswith(".meta-s1") for n in os.listdir(Path(s1.path).parent))
