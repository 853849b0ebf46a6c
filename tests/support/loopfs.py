"""Real file systems on loop devices for tests: btrfs, XFS with reflink, and ext4 (for "not supported").

Use the context manager :func:`loop_fs` or the function-scoped fixtures ``btrfs_fs``, ``xfs_fs``,
``ext4_fs`` (import them into your test module: ``from tests.support.loopfs import xfs_fs  # noqa: F401``)::

    with loop_fs("xfs") as fs:
        (fs.mount / "f").write_bytes(b"x")

Each file system lives on a sparse image in its own temporary directory, mounted at ``<tmp>/mnt``.
Teardown always runs, in this order, each step tolerant of the previous one having failed: thaw
(``fsfreeze -u``, in case a test left it frozen), unmount (retried, then lazy), detach the loop device,
delete the temporary directory. When loop devices or mounting are not permitted here (not root, no
``/dev/loop-control``, no kernel support for the type, missing mkfs), the fixture calls ``pytest.skip``
with the reason; :func:`loop_fs` raises :class:`LoopFsUnavailable` carrying it.

A btrfs file system gets a subvolume ``vol`` (``fs.volume``) so providers have a subvolume to snapshot;
for XFS/ext4 ``fs.volume`` is the directory ``<mnt>/vol``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Sparse image sizes (MiB). XFS refuses < 300 MiB; btrfs wants > ~114 MiB without --mixed.
DEFAULT_SIZE_MB = {"xfs": 320, "btrfs": 256, "ext4": 64}

_MKFS = {
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
}


#: Default type-specific mkfs options, replaced by ``mkfs_options`` when given.
_MKFS_DEFAULT_OPTS = {"xfs": ["-m", "reflink=1"]}


class LoopFsUnavailable(RuntimeError):
    """Loop file systems cannot be made here; the message says why."""


@dataclass(frozen=True)
class LoopFs:
    fstype: str
    image: Path
    device: str
    mount: Path
    #: a directory to use as the volume (a btrfs subvolume on btrfs)
    volume: Path


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def unavailable_reason(fstype: str) -> str | None:
    """Why a loop file system of ``fstype`` cannot be made here, or None if it probably can."""
    if fstype not in _MKFS:
        return f"unknown file system type {fstype!r}"
    if os.geteuid() != 0:
        return "loop devices and mount need root"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control (loop devices not available)"
    for tool in ("losetup", "mount", "umount", _MKFS[fstype][0]):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        known = Path("/proc/filesystems").read_text()
    except OSError:
        known = ""
    if known and fstype not in known.split():
        return f"the kernel does not list {fstype} in /proc/filesystems"
    return None


def _teardown(mount: Path, device: str | None) -> None:
    if os.path.ismount(mount):
        _run(["fsfreeze", "-u", str(mount)], timeout=10)  # harmless error if not frozen
        for attempt in range(20):
            if _run(["umount", str(mount)], timeout=30).returncode == 0:
                break
            time.sleep(0.1 * (attempt + 1))
        else:
            _run(["umount", "-l", str(mount)], timeout=30)
    if device:
        for attempt in range(10):
            if _run(["losetup", "-d", device]).returncode == 0:
                break
            time.sleep(0.1 * (attempt + 1))


@contextlib.contextmanager
def loop_fs(fstype: str, size_mb: int | None = None, *, mount_options: str | None = None,
            mkfs_options: list[str] | None = None) -> Iterator[LoopFs]:
    """Make, mount and yield a ``fstype`` file system on a loop device; always clean up.

    ``mkfs_options`` replace the type's default options (XFS: ``-m reflink=1``), e.g. ``["-m", "reflink=0"]``.
    """
    reason = unavailable_reason(fstype)
    if reason:
        raise LoopFsUnavailable(reason)
    size = size_mb or DEFAULT_SIZE_MB[fstype]
    tmp = Path(tempfile.mkdtemp(prefix=f"frieze-loop-{fstype}-"))
    image, mnt = tmp / "fs.img", tmp / "mnt"
    mnt.mkdir()
    device: str | None = None
    try:
        with open(image, "wb") as f:
            f.truncate(size * 1024 * 1024)
        opts = _MKFS_DEFAULT_OPTS.get(fstype, []) if mkfs_options is None else mkfs_options
        r = _run([*_MKFS[fstype], *opts, str(image)], timeout=120)
        if r.returncode != 0:
            raise LoopFsUnavailable(f"{_MKFS[fstype][0]} failed: {r.stderr.strip()}")
        r = _run(["losetup", "--find", "--show", str(image)])
        if r.returncode != 0:
            raise LoopFsUnavailable(f"losetup failed: {r.stderr.strip()}")
        device = r.stdout.strip()
        argv = ["mount", "-t", fstype]
        if mount_options:
            argv += ["-o", mount_options]
        r = _run([*argv, device, str(mnt)])
        if r.returncode != 0:
            raise LoopFsUnavailable(f"mount -t {fstype} failed: {r.stderr.strip()}")
        vol = mnt / "vol"
        if fstype == "btrfs":
            r = _run(["btrfs", "subvolume", "create", str(vol)])
            if r.returncode != 0:
                raise LoopFsUnavailable(f"btrfs subvolume create failed: {r.stderr.strip()}")
        else:
            vol.mkdir()
        yield LoopFs(fstype=fstype, image=image, device=device, mount=mnt, volume=vol)
    finally:
        _teardown(mnt, device)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def loop_fs_or_skip(fstype: str, size_mb: int | None = None, *, mount_options: str | None = None,
                    mkfs_options: list[str] | None = None) -> Iterator[LoopFs]:
    """:func:`loop_fs`, but ``pytest.skip`` with the reason when loop file systems are unavailable."""
    try:
        cm = loop_fs(fstype, size_mb, mount_options=mount_options, mkfs_options=mkfs_options)
        fs = cm.__enter__()
    except LoopFsUnavailable as e:
        pytest.skip(f"no loop {fstype} file system here: {e}")
    try:
        yield fs
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture
def xfs_fs() -> Iterator[LoopFs]:
    """A fresh XFS (reflink=1) on a loop device."""
    with loop_fs_or_skip("xfs") as fs:
        yield fs


@pytest.fixture
def btrfs_fs() -> Iterator[LoopFs]:
    """A fresh btrfs on a loop device, with a subvolume at ``fs.volume``."""
    with loop_fs_or_skip("btrfs") as fs:
        yield fs


@pytest.fixture
def ext4_fs() -> Iterator[LoopFs]:
    """A fresh ext4 on a loop device (neither snapshots nor reflinks: the "not supported" cases)."""
    with loop_fs_or_skip("ext4") as fs:
        yield fs
