"""O_DIRECT helpers shared by backup (reads of fixed blocks) and restore (writes of long runs).

Direct transfers bypass the page cache: on this kind of machine a buffered copy costs 1-3 s of system CPU per
GB (page allocation, LRU and writeback), a direct one about 0.05 s. They need offsets, lengths and buffer
addresses aligned to :data:`DIRECT_ALIGN`; the buffers are anonymous ``mmap``s (page-aligned) reused from a
:class:`DirectBuffers` pool. A file system that refuses (:data:`REFUSED`) is used through the page cache instead.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from concurrent.futures import Future
from typing import Any

#: O_DIRECT transfers are aligned to this (offsets, lengths and buffer addresses); 4 KiB satisfies the logical
#: block size of the devices and file systems here (512 or 4096).
DIRECT_ALIGN = 4096
O_DIRECT: int = getattr(os, "O_DIRECT", 0)
#: The errnos with which a file system refuses a direct transfer (not a failure of the data): the transfer is
#: made again through the page cache. EINVAL for an alignment or a file system without O_DIRECT, EOPNOTSUPP
#: (= ENOTSUP on Linux) from some FUSE and network file systems.
REFUSED: frozenset[int] = frozenset({errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)})


class DirectBuffers:
    """Page-aligned, reused buffers for O_DIRECT (anonymous ``mmap``s of ``size`` bytes). At most ``limit``
    exist; :meth:`get` waits for one beyond that, so every holder must give its buffer back without waiting
    for a later :meth:`get` (no deadlock)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, max(1, limit)
        self._free: list[mmap.mmap] = []
        self._made = 0
        self._cond = threading.Condition()

    def get(self) -> mmap.mmap:
        with self._cond:
            while not self._free and self._made >= self.limit:
                self._cond.wait()
            if self._free:
                return self._free.pop()
            self._made += 1
        try:
            return mmap.mmap(-1, self.size)
        except BaseException:
            with self._cond:  # the slot was never filled: give it back, or a later get() would wait forever
                self._made -= 1
                self._cond.notify()
            raise

    def put(self, buf: mmap.mmap) -> None:
        with self._cond:
            self._free.append(buf)
            self._cond.notify()


def give_back(pool: DirectBuffers, buf: mmap.mmap, _fut: Future[Any]) -> None:
    """A done-callback that returns ``buf`` to ``pool``."""
    pool.put(buf)


def write_alignment(f_bsize: int) -> int:
    """The unit of direct writes on a file system whose block is ``f_bsize`` (``statvfs``): whole memory pages
    and whole blocks only, so that no page (and no block) of a file is written both through the page cache and
    around it; 4 KiB on x86-64, more where pages or blocks are larger. A nonsensical size counts as 4 KiB."""
    b = f_bsize if 0 < f_bsize <= (1 << 20) and f_bsize & (f_bsize - 1) == 0 else DIRECT_ALIGN
    return max(DIRECT_ALIGN, mmap.PAGESIZE, b)


def pwrite_direct(dfd: int, fd: int, mv: memoryview, off: int, align: int) -> int:
    """Write all of ``mv`` (in an aligned buffer, whole ``align`` units) at ``off``: through ``dfd`` (open with
    O_DIRECT) while the file system takes whole aligned transfers; after a refusal (:data:`REFUSED`) or a short
    or odd transfer, the rest through ``fd`` (the page cache). Returns the bytes written direct."""
    n, w = 0, len(mv)
    try:
        while n < w:
            k = os.pwritev(dfd, [mv[n:]], off + n)
            if k <= 0 or k % align:
                n += max(k, 0)
                break
            n += k
    except OSError as e:
        if e.errno not in REFUSED:
            raise
    done = n
    while done < w:
        done += os.pwrite(fd, mv[done:], off + done)
    return n


def set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for an open file (Linux allows it with F_SETFL); False if refused."""
    if not O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | O_DIRECT) if on else (flags & ~O_DIRECT))
    except OSError:
        return False
    return True


def reopen_direct(fd: int) -> int | None:
    """A second descriptor of the file open as ``fd`` (the same inode, through ``/proc/self/fd``), write-only
    with O_DIRECT; None where that is not possible (no O_DIRECT, no /proc, or the file system refuses)."""
    if not O_DIRECT:
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | O_DIRECT | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
