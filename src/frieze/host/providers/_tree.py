"""Copy a directory tree file by file, either by reflink (``FICLONE``) or by copying bytes.

Preserved: directories, regular files (data, mode, owner, atime/mtime), symlinks, fifos and device nodes,
hard links within the tree, extended attributes (so POSIX ACLs) of files and directories. Not preserved:
sockets (skipped), xattrs of symlinks and device nodes, ctime and inode numbers (they cannot be).
``.frieze-snapshots`` at the tree's top is skipped. Files are opened with ``O_NOFOLLOW``; a file that
vanishes during the walk is skipped (the caller holds the app quiesced, so that is the app's own temp
file), any other error stops the copy.

**Pre-copy and delta pass** (:class:`PreCopy`; the copy provider's ``prepare``): a first ``copy_tree`` with
``record=`` runs while the application is *not* frozen and remembers, per regular file, the (inode, size,
mtime, ctime) it saw *before* reading the file. The real copy under the freeze then takes each pre-copied
file over (a rename within the snapshot root) instead of copying it again, and brings it to the source's
exact bytes: a file whose stat still equals the record and whose ctime is older than the pre-copy's start
by more than :data:`CTIME_MARGIN_NS` (coarse timestamps: a write in the same tick as the record could leave
ctime unchanged) is kept as it is; every other file is compared block by block with the source and only
differing blocks are written, then cut to the source's size. The result is byte for byte what a plain copy
under the freeze would have made; only the freeze is shorter (the comparison reads page-cached data, the
plain copy writes every byte). A pre-copied file that is hard-linked is never taken over (it could be shared).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from frieze.core.errors import NoSpace, NotSupported, StorageError
from frieze.host.providers._layout import SNAP_DIR

FICLONE = 0x40049409

FileCopier = Callable[[int, int, int], None]  # (src_fd, dst_fd, size)


def reflink_fd(src_fd: int, dst_fd: int, size: int) -> None:
    """Share ``src_fd``'s extents with the empty ``dst_fd`` (O(1) data copy); NotSupported where impossible."""
    del size
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
            raise NotSupported(f"reflink (FICLONE) is not supported here: {e.strerror}") from e
        raise


def copy_fd(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy bytes (``sendfile``; never shares extents, so it is a real second copy even on XFS/btrfs)."""
    off = 0
    while off < size:
        n = os.sendfile(dst_fd, src_fd, off, min(size - off, 1 << 30))
        if n == 0:
            break  # the file shrank while being copied
        off += n


def _xattrs(src: str, dst: str, *, prune: bool = False) -> None:
    """Copy extended attributes (POSIX ACLs included); silently none where the file system has none.
    ``prune``: also remove those ``dst`` has and ``src`` has not (a pre-copied file taken over)."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA):
            return
        raise
    if prune:
        for n in set(os.listxattr(dst, follow_symlinks=False)) - set(names):
            try:
                os.removexattr(dst, n, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA, errno.EPERM):
                    raise
    for n in names:
        try:
            os.setxattr(dst, n, os.getxattr(src, n, follow_symlinks=False), follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA, errno.EPERM):
                raise


def _meta(path: str, st: os.stat_result, *, is_link: bool = False) -> None:
    try:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=not is_link)
    except PermissionError:
        pass  # not root: files end up owned by us
    if not is_link:
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=not is_link)


#: A pre-copied file is kept without comparing only if its ctime is this much older than the pre-copy's start.
CTIME_MARGIN_NS = 2_000_000_000
_BLOCK = 1 << 20

#: per relative path: (inode, size, mtime_ns, ctime_ns) seen before the file was read
StatRecord = dict[str, tuple[int, int, int, int]]


def _key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def patch_fd(src_fd: int, dst_fd: int) -> int:
    """Make ``dst_fd`` byte-equal to ``src_fd`` writing only the blocks that differ; returns bytes written."""
    off = written = 0
    while True:
        a = os.pread(src_fd, _BLOCK, off)
        if not a:
            break
        if os.pread(dst_fd, len(a), off) != a:
            view = memoryview(a)
            done = 0
            while done < len(a):
                done += os.pwrite(dst_fd, view[done:], off + done)
            written += len(a)
        off += len(a)
    if os.fstat(dst_fd).st_size != off:
        os.ftruncate(dst_fd, off)
    return written


@dataclass
class PreCopy:
    """A pre-copied tree (made while the app was not frozen) that the copy under the freeze takes files from."""

    dir: str
    started_ns: int
    records: StatRecord = field(default_factory=dict)
    taken: int = 0
    kept: int = 0
    patched_bytes: int = 0

    @staticmethod
    def meta_path(pre_dir: str) -> str:
        return pre_dir + ".json"

    def save(self) -> None:
        p = self.meta_path(self.dir)
        tmp = p + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"started_ns": self.started_ns, "records": self.records}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    @classmethod
    def load(cls, pre_dir: str) -> PreCopy | None:
        """The pre-copy at ``pre_dir``; without its record (a prepare that did not finish) every file it
        has is compared. None if there is no pre-copy."""
        if not os.path.isdir(pre_dir) or os.path.islink(pre_dir):
            return None
        try:
            with open(cls.meta_path(pre_dir)) as f:
                d = json.load(f)
            recs = {k: (int(v[0]), int(v[1]), int(v[2]), int(v[3])) for k, v in d["records"].items()}
            return cls(pre_dir, int(d["started_ns"]), recs)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return cls(pre_dir, 0, {})

    def take(self, rel: str, dest: str) -> bool:
        """Move the pre-copied file ``rel`` to ``dest`` (a new path); False if there is none to take."""
        p = os.path.join(self.dir, rel)
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return False
        os.rename(p, dest)
        os.chmod(dest, 0o600)  # writable for the patch; its mode is set from the source afterwards
        self.taken += 1
        return True

    def clean(self, rel: str, st: os.stat_result) -> bool:
        """True if the source file cannot have changed since it was pre-copied."""
        r = self.records.get(rel)
        return r is not None and r == _key(st) and st.st_ctime_ns < self.started_ns - CTIME_MARGIN_NS

    def remove(self) -> None:
        remove_tree(self.dir)
        for p in (self.meta_path(self.dir), self.meta_path(self.dir) + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def pre_copy_tree(src: str, pre_dir: str, copier: FileCopier) -> PreCopy:
    """Copy ``src`` into the new directory ``pre_dir`` recording each file's stat; saves the record."""
    pre = PreCopy(pre_dir, time.time_ns())
    copy_tree(src, pre_dir, copier, record=pre.records)
    pre.save()
    return pre


def copy_tree(src: str, dst: str, copier: FileCopier, *, record: StatRecord | None = None,
              pre: PreCopy | None = None) -> int:
    """Copy the tree at ``src`` into the new directory ``dst`` with ``copier``; returns files copied.
    ``record``: fill it with each regular file's stat (taken before the file is read). ``pre``: take files
    over from that pre-copy and patch them (see the module's docstring)."""
    links: dict[tuple[int, int], str] = {}
    n = 0
    dirs: list[tuple[str, os.stat_result]] = []

    def walk(s: str, d: str, top: bool, rel_dir: str = "") -> None:
        nonlocal n
        st = os.lstat(s)
        os.mkdir(d, 0o700)
        _xattrs(s, d)
        dirs.append((d, st))
        with os.scandir(s) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if top and e.name == SNAP_DIR:
                continue
            sp, dp = os.path.join(s, e.name), os.path.join(d, e.name)
            rel = f"{rel_dir}{e.name}"
            try:
                est = os.lstat(sp)
            except FileNotFoundError:
                continue
            mode = est.st_mode
            if stat.S_ISDIR(mode):
                walk(sp, dp, False, rel + "/")
            elif stat.S_ISREG(mode):
                key = (est.st_dev, est.st_ino)
                if est.st_nlink > 1 and key in links:
                    os.link(links[key], dp)
                    continue
                if record is not None:
                    record[rel] = _key(est)
                try:
                    sfd = os.open(sp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                taken = pre is not None and pre.take(rel, dp)
                try:
                    if taken:
                        assert pre is not None
                        if pre.clean(rel, est):
                            pre.kept += 1
                        else:
                            dfd = os.open(dp, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                            try:
                                pre.patched_bytes += patch_fd(sfd, dfd)
                            finally:
                                os.close(dfd)
                    else:
                        dfd = os.open(dp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                        try:
                            copier(sfd, dfd, os.fstat(sfd).st_size)
                        finally:
                            os.close(dfd)
                finally:
                    os.close(sfd)
                _xattrs(sp, dp, prune=taken)
                _meta(dp, est)
                n += 1
                if est.st_nlink > 1:
                    links[key] = dp
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(sp), dp)
                _meta(dp, est, is_link=True)
            elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                os.mknod(dp, mode, est.st_rdev)
                _meta(dp, est)
            # sockets: skipped (they carry no data)

    try:
        walk(src, dst, True)
        for d, st in reversed(dirs):  # after the children, or their creation would change the mtimes
            _meta(d, st)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"no space left while copying {src!r} to {dst!r}", src=src, dst=dst) from e
        raise StorageError(f"copying {src!r} to {dst!r} failed: {e}", src=src, dst=dst) from e
    return n


def remove_tree(path: str) -> None:
    """Remove ``path`` and everything under it (immutable flags must already be cleared)."""
    if os.path.lexists(path):
        shutil.rmtree(path)
