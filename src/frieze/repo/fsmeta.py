"""File-system metadata: from ``lstat`` and xattrs to a :class:`Node`, and sparse-file data segments.

Nothing here follows a symlink: stats are ``lstat``, xattrs are read with ``follow_symlinks=False``.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from functools import lru_cache

from frieze.repo.tree import Node, NodeType


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str:
    """The user name of ``uid`` or "" when unknown."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return ""


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str:
    """The group name of ``gid`` or "" when unknown."""
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return ""


def node_type_of(mode: int) -> NodeType | None:
    """The node type of an ``st_mode`` (None for unknown kinds)."""
    if stat.S_ISREG(mode):
        return NodeType.FILE
    if stat.S_ISDIR(mode):
        return NodeType.DIR
    if stat.S_ISLNK(mode):
        return NodeType.SYMLINK
    if stat.S_ISFIFO(mode):
        return NodeType.FIFO
    if stat.S_ISCHR(mode):
        return NodeType.CHAR
    if stat.S_ISBLK(mode):
        return NodeType.BLOCK
    if stat.S_ISSOCK(mode):
        return NodeType.SOCKET
    return None


def read_xattrs(path: bytes | int) -> list[tuple[bytes, bytes]]:
    """All extended attributes of ``path`` (not following symlinks) or of an open fd; [] if unsupported."""
    try:
        names = os.listxattr(path) if isinstance(path, int) else os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT, errno.EPERM, errno.EACCES):
            return []
        raise
    out: list[tuple[bytes, bytes]] = []
    for name in names:
        try:
            value = (os.getxattr(path, name) if isinstance(path, int)
                     else os.getxattr(path, name, follow_symlinks=False))
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
                continue
            raise
        out.append((os.fsencode(name), value))
    out.sort()
    return out


def node_from_stat(name: bytes, st: os.stat_result, *, xattrs: list[tuple[bytes, bytes]] | None = None) -> Node:
    """A node with the metadata of ``st`` (content fields left empty)."""
    ntype = node_type_of(st.st_mode)
    if ntype is None:
        raise ValueError(f"unknown file type {stat.S_IFMT(st.st_mode):o}")
    return Node(
        name=name, type=ntype, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        user=user_name(st.st_uid), group=group_name(st.st_gid),
        mtime_ns=st.st_mtime_ns, atime_ns=st.st_atime_ns, ctime_ns=st.st_ctime_ns,
        size=st.st_size if ntype is NodeType.FILE else 0, inode=st.st_ino, dev=st.st_dev, nlink=st.st_nlink,
        rdev=st.st_rdev if ntype in (NodeType.CHAR, NodeType.BLOCK) else 0,
        xattrs=xattrs or [],
    )


def data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of the data (non-hole) regions of an open file of ``size`` bytes.

    Uses SEEK_DATA/SEEK_HOLE; a file system without them reports one segment covering everything.
    """
    segs: list[tuple[int, int]] = []
    off = 0
    try:
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data after off: the rest is a hole
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            segs.append((start, end - start))
            off = end
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            return [(0, size)] if size else []
        raise
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return segs


def is_probably_sparse(st: os.stat_result) -> bool:
    """True when the file allocates fewer bytes than its size (worth asking for its holes)."""
    return st.st_size > 0 and st.st_blocks * 512 < st.st_size
