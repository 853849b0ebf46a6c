"""Copy a directory tree file by file, either by reflink (``FICLONE``) or by copying bytes.

Preserved: directories, regular files (data, mode, owner, atime/mtime), symlinks, fifos and device nodes,
hard links within the tree, extended attributes (so POSIX ACLs) of files and directories. Not preserved:
sockets (skipped), xattrs of symlinks and device nodes, ctime and inode numbers (they cannot be).
``.frieze-snapshots`` at the tree's top is skipped. Files are opened with ``O_NOFOLLOW``; a file that
vanishes during the walk is skipped (the caller holds the app quiesced, so that is the app's own temp
file), any other error stops the copy.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
from collections.abc import Callable

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


def _xattrs(src: str, dst: str) -> None:
    """Copy extended attributes (POSIX ACLs included); silently none where the file system has none."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA):
            return
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


def copy_tree(src: str, dst: str, copier: FileCopier) -> int:
    """Copy the tree at ``src`` into the new directory ``dst`` with ``copier``; returns files copied."""
    links: dict[tuple[int, int], str] = {}
    n = 0
    dirs: list[tuple[str, os.stat_result]] = []

    def walk(s: str, d: str, top: bool) -> None:
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
            try:
                est = os.lstat(sp)
            except FileNotFoundError:
                continue
            mode = est.st_mode
            if stat.S_ISDIR(mode):
                walk(sp, dp, False)
            elif stat.S_ISREG(mode):
                key = (est.st_dev, est.st_ino)
                if est.st_nlink > 1 and key in links:
                    os.link(links[key], dp)
                    continue
                try:
                    sfd = os.open(sp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    dfd = os.open(dp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    try:
                        copier(sfd, dfd, os.fstat(sfd).st_size)
                    finally:
                        os.close(dfd)
                finally:
                    os.close(sfd)
                _xattrs(sp, dp)
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
