"""Where a provider keeps a volume's snapshots, and how a finished image is made immutable.

Layout: ``<parent of volume>/.frieze-snapshots/<provider>/<volume name>/<snap_id>`` when the volume's parent
directory is on the same mount (a snapshot must live on the volume's file system for btrfs and reflinks);
otherwise (the volume is a mount's root) ``<volume>/.frieze-snapshots/<provider>/<snap_id>``, and the tree
walkers skip ``.frieze-snapshots`` at a volume's top. Names beginning with ``.`` inside a provider's
directory are its work in progress (``.tmp-<snap_id>-<random>``) and never listed.

Immutability of directory-tree images (reflink, copy): every file and directory gets the inode flag
``FS_IMMUTABLE_FL`` (``chattr +i``; root only; ext4/XFS/btrfs), so not even root can change the image
without first clearing the flag (which :func:`make_mutable` does before a delete). Where the flag cannot be
set (not root, tmpfs), write permission bits are removed instead, which only stops unprivileged writers.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import stat

from frieze.host.providers._fs import mount_of

SNAP_DIR = ".frieze-snapshots"

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010


def snapshot_root(volume: str, provider: str) -> str:
    """The directory holding ``provider``'s snapshots of ``volume`` (a real path; may not exist yet)."""
    vol = os.path.realpath(volume)
    parent = os.path.dirname(vol)
    m = mount_of(vol)
    if vol != m.mount_point and parent and mount_of(parent).mount_point == m.mount_point:
        return os.path.join(parent, SNAP_DIR, provider, os.path.basename(vol))
    return os.path.join(vol, SNAP_DIR, provider)


def _set_flag(path: str, on: bool) -> bool:
    """Set/clear FS_IMMUTABLE_FL on ``path``; False when the file system or privileges do not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        buf = array.array("l", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
        new = (buf[0] | FS_IMMUTABLE_FL) if on else (buf[0] & ~FS_IMMUTABLE_FL)
        if new != buf[0]:
            buf[0] = new
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, buf, False)
        return True
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EINVAL):
            return False
        raise
    finally:
        os.close(fd)


def _walk_bottom_up(top: str) -> list[tuple[str, bool]]:
    """(path, is_dir) for everything under ``top`` (not following symlinks), children before parents."""
    out: list[tuple[str, bool]] = []
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for n in filenames:
            out.append((os.path.join(dirpath, n), False))
        for n in dirnames:
            p = os.path.join(dirpath, n)
            out.append((p, not os.path.islink(p)))
    return out


def make_immutable(top: str, *, include_top: bool = True) -> bool:
    """Freeze the tree at ``top``; True if the immutable flag was used, False if only permission bits."""
    flagged = True
    entries = _walk_bottom_up(top) + ([(top, True)] if include_top else [])
    for path, is_dir in entries:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode) and not is_dir:
            continue  # fifos/devices: their directory is immutable, which is what protects them
        if not _set_flag(path, True):
            flagged = False
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o222)
    return flagged


def make_mutable(top: str) -> None:
    """Undo :func:`make_immutable` (parents first, so children can then be changed) and restore owner write."""
    if not os.path.lexists(top):
        return
    stack = [top]
    while stack:
        p = stack.pop()
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            continue
        if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            _set_flag(p, False)
            os.chmod(p, stat.S_IMODE(st.st_mode) | 0o200)
        if stat.S_ISDIR(st.st_mode):
            stack.extend(os.path.join(p, n) for n in os.listdir(p))
