"""Freeze and thaw a mounted file system with the FIFREEZE/FITHAW ioctls (what ``fsfreeze(8)`` does).

FIFREEZE flushes dirty data and blocks every new write until FITHAW; it never thaws on its own, and a writer
blocked on it cannot be killed. Only the guardian calls these. The fd used is opened on the mount point
directory (``O_RDONLY``, no I/O on the file system).
"""

from __future__ import annotations

import errno
import fcntl
import os

from frieze.core.errors import Busy, NotFound, NotSupported, StorageError, UsageError

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)


def check_mount(mount: str) -> str:
    """The real path of ``mount``; NotFound if it does not exist, UsageError if it is not a mount point."""
    if not isinstance(mount, str) or not mount:
        raise UsageError("guardian: a mount point is required")
    if not os.path.exists(mount):
        raise NotFound(f"guardian: mount point {mount!r} does not exist", mount=mount)
    real = os.path.realpath(mount)
    if not os.path.ismount(real):
        raise UsageError(f"guardian: {mount!r} is not a mount point; only whole file systems can be frozen",
                         mount=mount)
    return real


def _ioctl(mount: str, req: int) -> int:
    fd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, req, 0)
        return 0
    except OSError as e:
        return e.errno or -1
    finally:
        os.close(fd)


def freeze(mount: str) -> None:
    """FIFREEZE ``mount``: Busy if it is already frozen (by anyone), NotSupported if the fs cannot freeze."""
    err = _ioctl(mount, FIFREEZE)
    if err == 0:
        return
    if err == errno.EBUSY:
        raise Busy(f"guardian: {mount!r} is already frozen", mount=mount)
    if err in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
        raise NotSupported(f"guardian: the file system at {mount!r} cannot be frozen ({os.strerror(err)})",
                           mount=mount)
    if err == errno.EPERM:
        raise StorageError(f"guardian: not permitted to freeze {mount!r} (needs CAP_SYS_ADMIN)", mount=mount)
    raise StorageError(f"guardian: freezing {mount!r} failed: {os.strerror(err)}", mount=mount)


def thaw(mount: str) -> bool:
    """FITHAW ``mount``; True if it was frozen, False if it was not (EINVAL). Other errors raise."""
    err = _ioctl(mount, FITHAW)
    if err == 0:
        return True
    if err == errno.EINVAL:
        return False
    raise StorageError(f"guardian: thawing {mount!r} failed: {os.strerror(err)}", mount=mount)
