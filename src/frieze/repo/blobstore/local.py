"""A blob store in a local directory (or any POSIX file system mounted here).

Layout
    Key ``a/b/c`` is the file ``<root>/a/b/c``: keys map 1:1 to paths (the key grammar of :mod:`.base`
    makes every key a safe relative path) and :meth:`LocalBlobStore.list` returns the original keys.
    A file system cannot hold both a blob ``a`` and a blob ``a/b``; such a put raises
    :class:`frieze.core.errors.Conflict` naming both (no layout of the repository uses such keys).

Create-if-absent, atomically, never overwriting
    1. ``<dir>/<name>~<pid>-<random>.tmp`` is created with ``O_EXCL``, written in full and fsynced.
    2. It is hard-linked to its final name with ``link(2)``, which fails with ``EEXIST`` if the name is
       present: an existing blob is never replaced, truncated or opened for writing. Where the file
       system has no hard links (``EPERM``/``EOPNOTSUPP``), ``renameat2(RENAME_NOREPLACE)`` does the same.
    3. The directory is fsynced (so the new name is durable), then the temporary name is removed.
    A reader therefore sees the whole blob or nothing, whatever moment the writer is killed at.
    A blob of at least :data:`DIRECT_PUT_MIN` bytes (a pack, a large index file) is written in step 1 with
    O_DIRECT where the file system allows it: its head of whole pages and blocks (4 KiB here) from a page-aligned
    copy (one per writing thread, reused) through a second descriptor of the temp file, the rest through the
    first; a refused transfer (EINVAL, EOPNOTSUPP) or no memory for the copy writes the rest through the page
    cache. The fsync and the steps after it are the same. Measured writing 32 packs of 16 MiB with their fsyncs:
    buffered 1.52 s and 1.3 s of system CPU, direct 0.35 s and 0.05 s.

Temporary files
    Their names contain ``~``, which no key segment may contain, so they can never collide with a blob
    and :meth:`~LocalBlobStore.list` never shows them. A writer killed between steps 1 and 3 leaves one
    behind; opening the store removes those older than :data:`STALE_TEMP_SECONDS` (a live writer's temp
    file is younger than that).

Named kill points (fault tests only)
    :meth:`LocalBlobStore.put` calls ``on_point(point, key)`` after each of its steps (:data:`PUT_POINTS`).
    If no ``on_point`` is given and the environment variable ``FRIEZE_TEST_DIE_AT`` is set when the store is
    opened, the store installs a hook that kills its own process with ``SIGKILL`` (a real ``kill -9``: no
    ``finally``, no flush, no atexit) at a named point. Its value is ``<kind>.<step>[:<n>]``: ``kind`` is the
    object kind of the key (:data:`KIND_OF_PREFIX`: ``pack``, ``index``, ``manifest``, ``snaplist``,
    ``lock``, ``key``, ``config``, ``garbage``, or ``any``), ``step`` one of :data:`PUT_POINTS` (aliases
    :data:`STEP_ALIASES`: ``write``, ``fsync``, ``rename``, ``dirsync``, ``done``), and ``n`` the 1-based
    occurrence of that point in this process (default 1). Just before dying the hook writes
    ``FRIEZE_TEST_DIE_AT <point>:<n> <key>`` to stderr. A malformed value raises ``UsageError`` at open.
    When the variable is unset the cost is one environment lookup per store opened and one ``is None``
    test per step.

Errors
    ``ENOSPC``/``EDQUOT`` -> :class:`~frieze.core.errors.NoSpace` naming ENOSPC and the key (the temp file
    is removed, no existing blob changes); ``ENOENT`` on read -> ``NotFound``; ``EEXIST`` -> ``AlreadyExists``;
    ``EINTR``/``EAGAIN``/``ETIMEDOUT``/``EBUSY``/``ESTALE`` -> ``TransientStorageError``; any other
    ``OSError`` -> ``StorageError``.
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import mmap
import os
import secrets
import signal
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from frieze.core.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    FriezeError,
    NoSpace,
    NotFound,
    StorageError,
    TransientStorageError,
    UsageError,
)
from frieze.repo.blobstore._common import check_range
from frieze.repo.blobstore.base import _SEGMENT, BlobInfo, Capabilities, check_key
from frieze.repo.directio import DIRECT_ALIGN, pwrite_direct, reopen_direct, write_alignment

#: A blob at least this long is written with O_DIRECT where the file system allows it (see the module docs).
DIRECT_PUT_MIN = 1 << 20

#: A temp file older than this (seconds) when the store is opened belongs to a dead writer and is removed.
STALE_TEMP_SECONDS = 3600.0
TEMP_MARK = "~"
TEMP_SUFFIX = ".tmp"

#: The named steps of a put, in order, at which ``on_point`` is called.
PUT_POINTS = ("tmp_written", "tmp_fsynced", "linked", "dir_fsynced", "tmp_removed")

#: Environment variable naming a point at which the process kills itself (fault tests; see the module docstring).
DIE_AT_ENV = "FRIEZE_TEST_DIE_AT"
#: Object kind by key prefix, for named points.
KIND_OF_PREFIX = {"data/": "pack", "index/": "index", "snapshots/": "manifest", "snaplist/": "snaplist",
                  "locks/": "lock", "keys/": "key", "garbage/": "garbage", "config": "config"}
#: Short names of the put steps.
STEP_ALIASES = {"write": "tmp_written", "fsync": "tmp_fsynced", "rename": "linked", "dirsync": "dir_fsynced",
                "done": "tmp_removed"}

_TRANSIENT = {errno.EINTR, errno.EAGAIN, errno.ETIMEDOUT, errno.EBUSY, errno.ESTALE}
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK}
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def is_temp_name(name: str) -> bool:
    """Whether a directory entry is one of our temporary files."""
    return TEMP_MARK in name and name.endswith(TEMP_SUFFIX)


def fsync_dir(path: Path | str) -> None:
    """fsync a directory so that entries created or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_noreplace(src: Path, dst: Path) -> None:
    """``renameat2(src, dst, RENAME_NOREPLACE)``; raises OSError (EEXIST if ``dst`` exists)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available in this C library")
    rc = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(dst))


def kind_of_key(key: str) -> str:
    """The object kind of a repository key, as used by named points (``other`` if unknown)."""
    for prefix, kind in KIND_OF_PREFIX.items():
        if key.startswith(prefix):
            return kind
    return "other"


class DieAt:
    """The ``FRIEZE_TEST_DIE_AT`` hook: ``SIGKILL`` this process at the n-th occurrence of a named point."""

    def __init__(self, spec: str) -> None:
        point, _, nth = spec.strip().partition(":")
        kind, _, step = point.partition(".")
        step = STEP_ALIASES.get(step, step)
        kinds = set(KIND_OF_PREFIX.values()) | {"any"}
        try:
            n = int(nth) if nth else 1
        except ValueError:
            n = 0
        if kind not in kinds or step not in PUT_POINTS or n < 1:
            raise UsageError(f"{DIE_AT_ENV}={spec!r}: expected <kind>.<step>[:<n>] with kind in "
                             f"{sorted(kinds)}, step in {list(PUT_POINTS)} or {sorted(STEP_ALIASES)}, n >= 1",
                             spec=spec)
        self.kind, self.step, self.n = kind, step, n
        self.seen = 0
        self._lock = threading.Lock()

    def __call__(self, point: str, key: str) -> None:
        if point != self.step or (self.kind != "any" and kind_of_key(key) != self.kind):
            return
        with self._lock:
            self.seen += 1
            if self.seen != self.n:
                return
            os.write(2, f"{DIE_AT_ENV} {self.kind}.{self.step}:{self.n} {key}\n".encode())
            os.kill(os.getpid(), signal.SIGKILL)


_die_at: tuple[str, DieAt] | None = None
_die_at_lock = threading.Lock()


def die_at_hook() -> DieAt | None:
    """The process-wide hook for the current ``FRIEZE_TEST_DIE_AT`` (None when unset): every store opened in
    one process shares one occurrence count."""
    global _die_at
    spec = os.environ.get(DIE_AT_ENV)
    if not spec:
        return None
    with _die_at_lock:
        if _die_at is None or _die_at[0] != spec:
            _die_at = (spec, DieAt(spec))
        return _die_at[1]


class LocalBlobStore:
    """Write-once blobs as files under ``root``. See the module docstring for the mapping of the contract."""

    def __init__(
        self,
        root: str | Path,
        *,
        append_only: bool = False,
        create: bool = True,
        file_mode: int = 0o600,
        clean_stale_temps: bool = True,
        on_point: Callable[[str, str], None] | None = None,
        direct_writes: bool = True,
    ) -> None:
        self.root = Path(root)
        #: write blobs of at least DIRECT_PUT_MIN bytes with O_DIRECT where the file system allows it
        self.direct_writes = direct_writes
        self._scratch = threading.local()
        #: Called as ``on_point(point, key)`` at each step of a put (see :data:`PUT_POINTS`); for fault tests
        #: that kill the process at a named point. None in production (unless FRIEZE_TEST_DIE_AT is set).
        self.on_point = on_point if on_point is not None else die_at_hook()
        self.append_only = append_only
        self.file_mode = file_mode
        self.capabilities = Capabilities(name="local")
        self._dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        try:
            if create:
                self.root.mkdir(parents=True, exist_ok=True)
            if not self.root.is_dir():
                raise NotFound(f"local blob store root {str(self.root)!r} is not a directory", root=str(self.root))
            if clean_stale_temps:
                self.clean_temps(older_than=STALE_TEMP_SECONDS)
        except OSError as e:
            raise self._translate(e, None, "open") from e
        self._dirs.add(self.root)
        #: the unit of direct writes (:func:`write_alignment` of the file system), found at the first one
        self._direct_align: int | None = None

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r}, append_only={self.append_only})"

    # -- mapping -----------------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _translate(self, e: OSError, key: str | None, op: str) -> FriezeError:
        where = f"blob {key!r}" if key is not None else f"store {str(self.root)!r}"
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        details = {"key": key, "root": str(self.root), "errno": name}
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(f"no space left on device (ENOSPC) during {op} of {where} in {str(self.root)!r}", **details)
        if e.errno == errno.EEXIST:
            return AlreadyExists(f"{where} already exists", **details)
        if e.errno in (errno.ENOENT, errno.ENOTDIR) and op in ("get", "stat"):
            return NotFound(f"{where} not found", **details)
        if e.errno in _TRANSIENT:
            return TransientStorageError(f"{op} of {where} failed transiently: {name} {e.strerror}", **details)
        return StorageError(f"{op} of {where} failed: {name} {e.strerror}", **details)

    def _ensure_dirs(self, key: str, parent: Path) -> None:
        """Create the missing directories above a blob, fsyncing each new entry's parent."""
        if parent in self._dirs:
            return
        d = self.root
        for part in key.split("/")[:-1]:
            d = d / part
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                if not d.is_dir():
                    blob = str(d.relative_to(self.root))
                    raise Conflict(f"blob key {key!r} collides with blob {blob!r} in a local store",
                                   key=key, other=blob) from None
            else:
                fsync_dir(d.parent)
        with self._dirs_lock:
            self._dirs.add(parent)

    # -- the port ------------------------------------------------------------------------------------------

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        path = self._path(key)
        parent = path.parent
        view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        try:
            self._ensure_dirs(key, parent)
            if os.path.lexists(path):  # cheap early refusal; link() below is the real guard
                if path.is_dir():
                    raise Conflict(f"blob key {key!r} collides with a directory of other blobs", key=key)
                raise AlreadyExists(f"blob {key!r} already exists", key=key, root=str(self.root))
        except OSError as e:
            raise self._translate(e, key, "put") from e
        tmp = parent / f"{path.name[:64]}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.file_mode)
            except FileNotFoundError:  # the directory vanished under us: forget the cache, retry once
                with self._dirs_lock:
                    self._dirs.discard(parent)
                self._ensure_dirs(key, parent)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.file_mode)
            try:
                self._write(fd, view)
                self._point("tmp_written", key)
                os.fsync(fd)
                self._point("tmp_fsynced", key)
            finally:
                os.close(fd)
            self._create_noreplace(tmp, path, key)
            self._point("linked", key)
            fsync_dir(parent)
            self._point("dir_fsynced", key)
        except OSError as e:
            raise self._translate(e, key, "put") from e
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # a leftover temp is invisible and cleaned on a later open
        self._point("tmp_removed", key)

    def _write(self, fd: int, view: memoryview) -> None:
        """Write all of ``view`` into the new file ``fd``: its aligned head with O_DIRECT when it is long and
        the file system allows it, whatever is left through the page cache."""
        off = 0
        size = len(view)
        dfd = reopen_direct(fd) if self.direct_writes and size >= DIRECT_PUT_MIN else None
        if dfd is not None:
            try:
                if self._direct_align is None:
                    try:  # whole pages and file-system blocks only
                        self._direct_align = write_alignment(os.statvfs(self.root).f_bsize)
                    except OSError:
                        self._direct_align = DIRECT_ALIGN
                align = self._direct_align
                head = size - size % align
                try:
                    buf = self._direct_buffer(head)
                except OSError:  # no memory for the aligned copy: through the cache
                    buf = None
                if buf is not None:
                    buf[:head] = view[:head]
                    with memoryview(buf) as mv:
                        pwrite_direct(dfd, fd, mv[:head], 0, align)
                    off = head
            finally:
                os.close(dfd)
        while off < size:
            off += os.pwrite(fd, view[off:], off)

    def _direct_buffer(self, size: int) -> mmap.mmap:
        """This thread's page-aligned copy buffer of at least ``size`` bytes (kept for its next put)."""
        buf: mmap.mmap | None = getattr(self._scratch, "buf", None)
        if buf is None or len(buf) < size:
            buf = self._scratch.buf = mmap.mmap(-1, max(size, 1 << 20) + (1 << 20))
        return buf

    def _point(self, point: str, key: str) -> None:
        if self.on_point is not None:
            self.on_point(point, key)

    def _create_noreplace(self, tmp: Path, path: Path, key: str) -> None:
        try:
            os.link(tmp, path, follow_symlinks=False)
            return
        except FileExistsError:
            if path.is_dir():
                raise Conflict(f"blob key {key!r} collides with a directory of other blobs", key=key) from None
            raise AlreadyExists(f"blob {key!r} already exists", key=key, root=str(self.root)) from None
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
        try:
            _rename_noreplace(tmp, path)
        except FileExistsError:
            raise AlreadyExists(f"blob {key!r} already exists", key=key, root=str(self.root)) from None
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise StorageError(
                    f"file system at {str(self.root)!r} supports neither hard links nor rename-noreplace: "
                    f"cannot create blob {key!r} atomically", key=key, root=str(self.root)) from e
            raise

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        check_range(key, offset, length)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                if not statmod.S_ISREG(st.st_mode):
                    raise NotFound(f"blob {key!r} not found", key=key)
                want = max(0, st.st_size - offset) if length is None else length
                data = os.pread(fd, want, offset)
                while len(data) < want:  # a short read (rare on a regular file): the rest
                    more = os.pread(fd, want - len(data), offset + len(data))
                    if not more:
                        break
                    data += more
                return data
            finally:
                os.close(fd)
        except IsADirectoryError:
            raise NotFound(f"blob {key!r} not found", key=key) from None
        except OSError as e:
            raise self._translate(e, key, "get") from e

    def stat(self, key: str) -> BlobInfo | None:
        path = self._path(key)
        try:
            st = os.stat(path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._translate(e, key, "stat") from e
        if not statmod.S_ISREG(st.st_mode):
            return None
        return BlobInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        head, _, _ = prefix.rpartition("/")
        if head and not all(seg not in (".", "..") and _SEGMENT.match(seg) for seg in head.split("/")):
            return  # no valid key has such a directory part ("a//", "../", ...)
        start = self.root.joinpath(*head.split("/")) if head else self.root
        base = head + "/" if head else ""
        try:
            yield from self._walk(start, base, prefix)
        except OSError as e:
            raise self._translate(e, None, "list") from e

    def _walk(self, d: Path, rel: str, prefix: str) -> Iterator[BlobInfo]:
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            return
        with it:
            entries = list(it)
        for ent in entries:
            name = ent.name
            if not _SEGMENT.match(name) or name in (".", ".."):  # temp files ("~"), lost+found, ...
                continue
            key = rel + name
            try:
                if ent.is_dir(follow_symlinks=False):
                    if key.startswith(prefix) or prefix.startswith(key + "/"):
                        yield from self._walk(Path(ent.path), key + "/", prefix)
                elif ent.is_file(follow_symlinks=False) and key.startswith(prefix):
                    st = ent.stat(follow_symlinks=False)
                    yield BlobInfo(key, st.st_size, st.st_mtime)
            except FileNotFoundError:
                continue  # deleted while we listed

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.append_only:
            raise Forbidden(f"store is append-only: delete of blob {key!r} refused", key=key)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                return  # a directory is no blob
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise self._translate(e, key, "delete") from e
        try:
            fsync_dir(path.parent)
        except OSError as e:
            raise self._translate(e, key, "delete") from e

    def close(self) -> None:
        pass

    # -- maintenance -------------------------------------------------------------------------------------------

    def clean_temps(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Remove temporary files older than ``older_than`` seconds; return how many were removed."""
        cutoff = time.time() - older_than
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if not is_temp_name(name):
                    continue
                p = os.path.join(dirpath, name)
                try:
                    if os.lstat(p).st_mtime < cutoff:
                        os.unlink(p)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    def temp_files(self) -> builtins.list[Path]:
        """Every temporary file present now (tests and diagnostics)."""
        return [Path(dp) / n for dp, _d, fs in os.walk(self.root) for n in fs if is_temp_name(n)]
