"""Restore a snapshot (or chosen paths of it) into a target directory, safely.

Safety contract (tested by ``tests/repo/test_data_restore_malicious.py``):

- **Never outside the target.** Every file-system call is relative to a directory fd opened by this module
  (``dir_fd=``), every component is opened with ``O_NOFOLLOW`` (directories with ``O_DIRECTORY``), and
  every name passes :func:`frieze.repo.tree.check_name` (no ``..``, no ``/``, no NUL, no absolute path).
- **Never through a symlink.** A symlink already present in the target where the snapshot has a directory
  is an error (never followed); where the snapshot has a file, symlink or fifo, the new entry is created
  under a temporary name and renamed over it (rename replaces the link, it does not follow it). Symlinks
  from the snapshot are created, never followed.
- **Hard links only within the restore.** A hard-link node links to the file this restore itself wrote at
  the node's snapshot path; if that file is not part of the restore (a partial restore), its content is
  restored as a separate file; a path that is not a file of the snapshot is an IntegrityError.
- **Never a byte that failed its MAC.** Each blob comes from ``read_blob`` (verified) and must have the
  extent's length; a file is written to a temporary name and renamed into place only when all its bytes
  were verified and written; on any error the temporary file is removed and the restore stops with the
  error (fail closed).
- **Bounded claims.** A file claiming more than ``max_file_size`` bytes, a tree that contains itself, or a
  tree deeper than ``MAX_DEPTH`` is refused with IntegrityError before anything of it is written.
- Device files are created only with ``allow_devices=True`` (and the privilege to do so); otherwise they
  are skipped with a warning. Sockets are skipped. Owners are restored when running as root (or
  ``owners=True``); xattrs in the ``user.`` namespace always, others when the kernel permits.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from frieze.core.errors import FriezeError, IntegrityError, NotFound, StorageError, UsageError
from frieze.repo.dataport import RepoLike
from frieze.repo.directio import DIRECT_ALIGN, O_DIRECT, DirectBuffers, pwrite_direct, reopen_direct, write_alignment
from frieze.repo.pack import pack_key
from frieze.repo.progress import ProgressCallback, Throttle
from frieze.repo.tree import Node, NodeType, check_name, decode_tree, split_link_path

MAX_DEPTH = 1024
DEFAULT_MAX_FILE_SIZE = 1 << 44  # 16 TiB
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_TMP_PREFIX = b".frieze-restore-"
#: Blobs of one file that lie within ``_GAP`` bytes of each other in one pack are read with one ranged get of
#: at most ``_SPAN`` bytes (at most ``_RAW_SPAN`` plaintext bytes), decrypted on the pool and written with one
#: ``pwritev``.
_GAP = 256 << 10
_SPAN = 8 << 20
_RAW_SPAN = 16 << 20
_IOV_MAX = 1024
#: A run of a file with many blobs whose 4 KiB-aligned middle is at least this long is written with O_DIRECT
#: (when ``direct_io`` and the file system allow it); its unaligned head and tail, and shorter runs, go through
#: the page cache. Files of one blob always do.
DIRECT_MIN = 1 << 20


def _write_all(fd: int, datas: Sequence[bytes | memoryview], off: int) -> None:
    """Write the buffers back to back at ``off`` (``pwritev``, short writes resumed)."""
    bufs: list[memoryview] = [memoryview(d) for d in datas]
    i = 0
    while i < len(bufs):
        batch = bufs[i:i + _IOV_MAX]
        n = os.pwritev(fd, batch, off)
        off += n
        for b in batch:
            if n >= len(b):
                n -= len(b)
                i += 1
            else:
                bufs[i] = b[n:]
                break


class RestoreError(StorageError):
    """The target directory refused a restore step (exists as something else, permission, ...)."""

    code = "storage.restore"


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    special: int = 0
    skipped: int = 0
    bytes_written: int = 0
    #: of bytes_written, those written with O_DIRECT (around the page cache)
    bytes_written_direct: int = 0
    bytes_verified: int = 0
    mismatches: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RestoreResult:
    snapshot_id: str
    target: str
    stats: RestoreStats

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` record."""
        return {"snapshot": self.snapshot_id, "target": self.target, "stats": self.stats.to_dict()}


def _safe_name(node: Node, where: str) -> bytes:
    try:
        return check_name(node.name)
    except IntegrityError as e:
        raise IntegrityError(f"{where}: {e.message}", path=where) from e


def _split_rel(path: str) -> list[bytes]:
    parts = [p for p in os.fsencode(path).split(b"/") if p not in (b"", b".")]
    for p in parts:
        if p == b"..":
            raise UsageError(f"restore path {path!r} contains '..'", path=path)
    return parts


class _Restorer:
    def __init__(self, repo: RepoLike, root_tree: bytes, target_fd: int, *, owners: bool, allow_devices: bool,
                 xattrs: bool, max_file_size: int, threads: int, verify: bool, throttle: Throttle,
                 bytes_total: int, direct_io: bool = True) -> None:
        self.repo = repo
        self.root_tree = root_tree
        self.target_fd = target_fd
        self.owners = owners
        self.allow_devices = allow_devices
        self.xattrs = xattrs
        self.max_file_size = max_file_size
        self.verify = verify
        self.stats = RestoreStats()
        # Blob reads (decrypt + decompress + verify) on one pool; whole files on another, so that a file
        # worker waiting for its blobs never starves the blob pool (no deadlock).
        # With O_DIRECT a job also waits for its write to reach the device: twice the workers keep the cores busy
        # meanwhile. A job holds one direct buffer (16 MiB) only while it copies and writes, and waits for nothing
        # else meanwhile, so at most 8 of them (128 MiB) is enough and never deadlocks.
        direct = direct_io and bool(O_DIRECT) and not verify
        blob_workers = max(1, threads) * (2 if direct else 1)
        self.direct = DirectBuffers(_RAW_SPAN + DIRECT_ALIGN, min(blob_workers, 8)) if direct else None
        #: direct writes cover whole memory pages and file-system blocks only (:func:`write_alignment`)
        self.direct_align = DIRECT_ALIGN
        if direct:
            try:
                bsize = os.fstatvfs(target_fd).f_bsize
            except OSError:
                bsize = DIRECT_ALIGN
            self.direct_align = write_alignment(bsize)
        self.pool = ThreadPoolExecutor(max_workers=blob_workers, thread_name_prefix="frieze-restore-blob")
        self.files_pool = ThreadPoolExecutor(max_workers=max(2, threads), thread_name_prefix="frieze-restore-file")
        self.file_slots = threading.BoundedSemaphore(2 * max(2, threads) + 2)
        self.file_futs: list[Future[None]] = []
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        # Done after every file is written: hard links (their source must exist), then directory metadata
        # (children first: a read-only directory is filled before its mode is set; mtimes are final).
        self.deferred_links: list[tuple[list[bytes], Node, bytes]] = []
        self.deferred_dirs: list[tuple[list[bytes], Node]] = []
        self.window = 4 * max(1, threads)
        self._tree_cache: dict[bytes, dict[bytes, Node]] = {}
        self.restored: set[bytes] = set()  # snapshot paths of regular files this run wrote
        self._tmp_prefix = _TMP_PREFIX + secrets.token_hex(8).encode() + b"-"
        self._tmp_seq = itertools.count()
        #: small files of one blob (or none) of the directory being walked, restored as one file-pool job
        self.batch: list[tuple[Node, bytes]] = []
        self.batch_bytes = 0
        self.throttle = throttle
        self.bytes_total = bytes_total
        # Ranged pack reads for files of many blobs, when the repository exposes its index and store (the
        # Repository does); otherwise every blob goes through read_blob.
        dedup: Any = getattr(repo, "dedup", None)
        store: Any = getattr(repo, "store", None)
        read_entry: Any = getattr(repo, "read_entry", None)
        ok = dedup is not None and store is not None and read_entry is not None
        self._lookup: Any = dedup.lookup if ok else None
        self._lookup_many: Any = getattr(dedup, "lookup_many", None) if ok else None
        self._get: Any = store.get if ok else None
        self._read_entry: Any = read_entry

    # ------------------------------------------------------------------ trees
    def read_tree(self, tree_id: bytes) -> list[Node]:
        return decode_tree(self.repo.read_blob(tree_id), tree_id)

    def lookup_tree(self, tree_id: bytes) -> dict[bytes, Node]:
        """A tree's nodes by name, cached (hard-link fallbacks of a partial restore look paths up)."""
        got = self._tree_cache.get(tree_id)
        if got is None:
            if len(self._tree_cache) > 256:
                self._tree_cache.clear()
            got = self._tree_cache[tree_id] = {n.name: n for n in self.read_tree(tree_id)}
        return got

    def lookup(self, parts: list[bytes]) -> Node | None:
        """The node at a snapshot path (None if absent)."""
        tree: bytes | None = self.root_tree
        node: Node | None = None
        for i, part in enumerate(parts):
            if tree is None:
                return None
            node = self.lookup_tree(tree).get(part)
            if node is None:
                return None
            tree = node.subtree if node.type is NodeType.DIR else None
            if tree is None and i < len(parts) - 1:
                return None
        return node

    # ------------------------------------------------------------------ fs helpers
    def open_dir(self, dir_fd: int, name: bytes, rel: bytes, create: bool) -> int:
        if create and not self.verify:
            try:
                os.mkdir(name, 0o700, dir_fd=dir_fd)
            except FileExistsError:
                pass
            except OSError as e:
                raise RestoreError(f"cannot create directory {os.fsdecode(rel)}: {e.strerror}",
                                   path=os.fsdecode(rel)) from e
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise RestoreError(f"refusing to restore into {os.fsdecode(rel)}: it exists in the target and is "
                                   "not a directory (a symlink is never followed)", path=os.fsdecode(rel)) from e
            raise RestoreError(f"cannot open directory {os.fsdecode(rel)}: {e.strerror}",
                               path=os.fsdecode(rel)) from e

    def walk_dirs(self, parts: list[bytes]) -> int:
        """Open (never create) the directory at snapshot path ``parts`` below the target, no symlinks."""
        fd = os.dup(self.target_fd)
        try:
            for i, p in enumerate(parts):
                nfd = self.open_dir(fd, p, b"/".join(parts[: i + 1]), create=False)
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def tmp_name(self) -> bytes:
        """A fresh temporary name: this run's random prefix and a counter (created with O_EXCL, so a leftover of
        another run of the same name is never opened)."""
        return self._tmp_prefix + b"%x" % next(self._tmp_seq)

    def replace(self, dir_fd: int, tmp: bytes, name: bytes, rel: bytes) -> None:
        try:
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as e:
            self._unlink(dir_fd, tmp)
            raise RestoreError(f"cannot put {os.fsdecode(rel)} in place: {e.strerror} (is there a directory?)",
                               path=os.fsdecode(rel)) from e

    @staticmethod
    def _unlink(dir_fd: int, name: bytes) -> None:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass

    def apply_meta(self, fd: int | None, dir_fd: int, name: bytes, node: Node) -> None:
        """Owner, xattrs, mode, times. ``fd`` is an open fd of the object (None for a symlink)."""
        if self.owners:
            try:
                if fd is not None:
                    os.fchown(fd, node.uid, node.gid)
                else:
                    os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
            except OSError as e:
                self.stats.warnings.append(f"{os.fsdecode(name)}: cannot set owner: {e.strerror}")
        if fd is not None:
            if self.xattrs:
                for k, v in node.xattrs:
                    try:
                        os.setxattr(fd, k, v)
                    except OSError as e:
                        if k.startswith(b"user."):
                            self.stats.warnings.append(f"{os.fsdecode(name)}: xattr {k!r} not set: {e.strerror}")
            os.fchmod(fd, node.mode)
            os.utime(fd, ns=(node.atime_ns, node.mtime_ns))
        else:
            try:
                os.utime(name, ns=(node.atime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
            except OSError as e:
                self.stats.warnings.append(f"{os.fsdecode(name)}: times not set: {e.strerror}")

    # ------------------------------------------------------------------ walk
    def restore_dir(self, dir_fd: int, tree_id: bytes, rel: bytes, include: list[list[bytes]] | None,
                    ancestors: tuple[bytes, ...]) -> None:
        if tree_id in ancestors:
            raise IntegrityError(f"tree {tree_id.hex()} at {os.fsdecode(rel) or '/'} contains itself",
                                 tree=tree_id.hex())
        if len(ancestors) >= MAX_DEPTH:
            raise IntegrityError(f"tree deeper than {MAX_DEPTH} levels at {os.fsdecode(rel)}")
        nodes = self.read_tree(tree_id)
        # Check every entry of this directory before writing any of them.
        for node in nodes:
            _safe_name(node, os.fsdecode(rel + b"/" + node.name) if rel else repr(node.name))
            if node.type is NodeType.FILE and node.size > self.max_file_size:
                raise IntegrityError(f"{os.fsdecode(rel + b'/' + node.name)}: claims {node.size} bytes, more than "
                                     f"the limit {self.max_file_size}", size=node.size)
        for node in nodes:
            child = rel + b"/" + node.name if rel else node.name
            sub_include: list[list[bytes]] | None = None
            if include is not None:
                matching = [p for p in include if p[0] == node.name]
                if not matching:
                    continue
                if any(len(p) == 1 for p in matching):
                    sub_include = None
                else:
                    sub_include = [p[1:] for p in matching]
                    if node.type is not NodeType.DIR:
                        continue
            self.restore_node(dir_fd, node, child, sub_include, (*ancestors, tree_id))
        self.flush_batch(dir_fd)

    def restore_node(self, dir_fd: int, node: Node, rel: bytes, include: list[list[bytes]] | None,
                     ancestors: tuple[bytes, ...]) -> None:
        name = node.name
        t = node.type
        if t is NodeType.DIR:
            assert node.subtree is not None
            self.flush_batch(dir_fd)  # the batch holds files of this directory only
            fd = self.open_dir(dir_fd, name, rel, create=True)
            try:
                self.restore_dir(fd, node.subtree, rel, include, ancestors)
            finally:
                os.close(fd)
            if not self.verify and include is None:
                self.deferred_dirs.append((rel.split(b"/"), node))
            self.stats.dirs += 1
        elif t is NodeType.FILE:
            if len(node.extents) <= 1 and node.size <= self.BATCH_FILE_MAX:
                self.batch.append((node, rel))
                self.batch_bytes += node.size
                if len(self.batch) >= self.BATCH_FILES or self.batch_bytes >= self.BATCH_BYTES:
                    self.flush_batch(dir_fd)
            else:
                self.submit_file(dir_fd, node, rel)
        elif t is NodeType.HARDLINK:
            self.deferred_links.append((rel.split(b"/")[:-1], node, rel))
        elif t is NodeType.SYMLINK:
            assert node.target is not None
            if self.verify:
                self._verify_symlink(dir_fd, node, rel)
                return
            tmp = self.tmp_name()
            os.symlink(node.target, tmp, dir_fd=dir_fd)
            self.replace(dir_fd, tmp, name, rel)
            self.apply_meta(None, dir_fd, name, node)
            self.stats.symlinks += 1
        elif t is NodeType.FIFO:
            if self.verify:
                return
            tmp = self.tmp_name()
            os.mkfifo(tmp, 0o600, dir_fd=dir_fd)
            self._finish_special(dir_fd, tmp, node, rel)
        elif t in (NodeType.CHAR, NodeType.BLOCK):
            if not self.allow_devices or self.verify:
                self.stats.skipped += 1
                self.stats.warnings.append(f"{os.fsdecode(rel)}: device file not restored (not allowed)")
                return
            tmp = self.tmp_name()
            kind = stat.S_IFCHR if t is NodeType.CHAR else stat.S_IFBLK
            try:
                os.mknod(tmp, 0o600 | kind, node.rdev, dir_fd=dir_fd)
            except OSError as e:
                self.stats.skipped += 1
                self.stats.warnings.append(f"{os.fsdecode(rel)}: device file not restored: {e.strerror}")
                return
            self._finish_special(dir_fd, tmp, node, rel)
        else:
            self.stats.skipped += 1
            self.stats.warnings.append(f"{os.fsdecode(rel)}: {t.value} not restored")

    def _finish_special(self, dir_fd: int, tmp: bytes, node: Node, rel: bytes) -> None:
        """Metadata on a fifo/device at its temp name (opened O_PATH, never read), then rename."""
        try:
            if self.owners:
                os.chown(tmp, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
            # chmod has no no-follow form on Linux: pin the inode with O_PATH|O_NOFOLLOW (never opens the
            # device or fifo itself) and change it through /proc/self/fd, so a name swapped for a symlink by
            # someone racing us can never redirect the chmod outside the target.
            pfd = os.open(tmp, os.O_PATH | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
            try:
                if stat.S_ISLNK(os.fstat(pfd).st_mode):
                    raise OSError(errno.ELOOP, "replaced by a symlink")
                os.chmod(f"/proc/self/fd/{pfd}", node.mode)
            finally:
                os.close(pfd)
            os.utime(tmp, ns=(node.atime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            self.stats.warnings.append(f"{os.fsdecode(rel)}: metadata not set: {e.strerror}")
        self.replace(dir_fd, tmp, node.name, rel)
        self.stats.special += 1

    # ------------------------------------------------------------------ files
    def submit_file(self, dir_fd: int, node: Node, rel: bytes) -> None:
        """Restore (or verify) one file on the file pool; the first worker error stops the walk."""
        self._submit(self.restore_file, dir_fd, (node, rel), rel)

    def _submit(self, fn: Any, dir_fd: int, arg: Any, rel: bytes) -> None:
        """Run ``fn(dup of dir_fd, *arg)`` on the file pool (a bounded number queued or running)."""
        if self.error is not None:
            raise self.error
        self.file_slots.acquire()
        try:
            fd = os.dup(dir_fd)
        except BaseException:
            self.file_slots.release()
            raise
        try:
            fut = self.files_pool.submit(self._file_job, fd, fn, arg)
        except BaseException:
            os.close(fd)
            self.file_slots.release()
            raise
        self.file_futs.append(fut)
        if len(self.file_futs) > 256:
            self.file_futs = [f for f in self.file_futs if not f.done()]
        with self.lock:
            done, files = self.stats.bytes_written, self.stats.files
        self.throttle(done, self.bytes_total, files, 0, os.fsdecode(rel))

    #: Small files (one blob or none, at most :attr:`BATCH_FILE_MAX` bytes) of one directory are restored by one
    #: file-pool job, at most :attr:`BATCH_FILES` of them or :attr:`BATCH_BYTES` together: one hand-off between
    #: threads per batch instead of per file (for a tree of small files, the hand-offs cost more than the writes).
    BATCH_FILE_MAX = 1 << 20
    BATCH_FILES = 32
    BATCH_BYTES = 4 << 20

    def flush_batch(self, dir_fd: int) -> None:
        """Submit the small files collected from the directory ``dir_fd`` as one job."""
        if not self.batch:
            return
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        self._submit(self._batch_job, dir_fd, (batch,), batch[-1][1])

    def _batch_job(self, dir_fd: int, batch: list[tuple[Node, bytes]]) -> None:
        for node, rel in batch:
            if self.error is not None:
                return
            self.restore_file(dir_fd, node, rel)

    def _file_job(self, dir_fd: int, fn: Any, arg: Any) -> None:
        try:
            if self.error is None:
                fn(dir_fd, *arg)
        except BaseException as e:
            with self.lock:
                if self.error is None:
                    self.error = e
        finally:
            os.close(dir_fd)
            self.file_slots.release()

    def drain(self) -> None:
        """Wait for every submitted file; raise the first worker error."""
        wait(self.file_futs)
        self.file_futs = []
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """After the walk: wait for the files, then hard links, then directory metadata (children first)."""
        self.drain()
        for parts, node, rel in self.deferred_links:
            fd = self.walk_dirs([p for p in parts if p])
            try:
                self.restore_hardlink(fd, node, rel)
            finally:
                os.close(fd)
        for parts, node in self.deferred_dirs:
            fd = self.walk_dirs(parts)
            try:
                self.apply_meta(fd, -1, node.name, node)
            finally:
                os.close(fd)

    def blobs(self, node: Node) -> Iterator[tuple[int, int, bytes | None]]:
        """``(offset, length, data or None for a hole)`` in order; blobs prefetched on the pool, verified."""
        for off, ln, datas in self.runs(node):
            if datas is None:
                yield off, ln, None
                continue
            for data in datas:
                yield off, len(data), data
                off += len(data)

    def _plan(self, node: Node) -> list[tuple[int, int, Any]]:
        """Group the extents into runs: ``(offset, length, None)`` for a hole, ``(offset, length, [id])`` for a
        blob read on its own, or ``(offset, length, [IndexEntry, ...])`` for blobs that lie close together in
        one pack (one ranged read of at most ``_SPAN`` bytes, then decrypted and verified blob by blob)."""
        ids = [e.id for e in node.extents if e.id is not None]
        if self._lookup is None:
            found: Iterator[Any] = iter([None] * len(ids))
        elif self._lookup_many is not None:
            found = iter(self._lookup_many(ids))
        else:
            found = iter([self._lookup(i) for i in ids])
        out: list[tuple[int, int, Any]] = []
        pos = 0
        cur: list[Any] | None = None  # the open pack run's entries
        cur_off = cur_len = 0
        cur_start = cur_end = 0
        for e in node.extents:
            ent = next(found) if e.id is not None else None
            if (cur is not None and ent is not None and ent.pack_id == cur[0].pack_id
                    and 0 <= ent.offset - cur_end <= _GAP and ent.offset + ent.length - cur_start <= _SPAN
                    and ent.raw_length == e.length and cur_len + e.length <= _RAW_SPAN):
                cur.append(ent)
                cur_end = ent.offset + ent.length
                cur_len += e.length
            else:
                if cur is not None:
                    out.append((cur_off, cur_len, cur))
                    cur = None
                if e.id is None:
                    out.append((pos, e.length, None))
                elif ent is None or ent.raw_length != e.length:
                    out.append((pos, e.length, [e.id]))
                else:
                    cur, cur_off, cur_len = [ent], pos, e.length
                    cur_start, cur_end = ent.offset, ent.offset + ent.length
            pos += e.length
        if cur is not None:
            out.append((cur_off, cur_len, cur))
        return out

    def _fetch(self, items: list[Any]) -> list[bytes]:
        """Pool job: the verified plaintexts of one run (a single id, or entries of one pack)."""
        if isinstance(items[0], bytes):
            return [self.repo.read_blob(items[0])]
        first, last = items[0], items[-1]
        start = first.offset
        try:
            span = self._get(pack_key(first.pack_id), start, last.offset + last.length - start)
        except NotFound:
            raise IntegrityError(f"blob {first.blob_id.hex()} in pack {first.pack_id.hex()}: the pack is missing",
                                 blob=first.blob_id.hex(), pack=first.pack_id.hex()) from None
        mv = memoryview(span)
        read_entry = self._read_entry
        return [read_entry(e, bytes(mv[e.offset - start:e.offset - start + e.length])) for e in items]

    def runs(self, node: Node) -> Iterator[tuple[int, int, list[bytes] | None]]:
        """``(offset, length, plaintexts or None for a hole)`` in file order; runs prefetched on the pool.
        Every plaintext was authenticated, decompressed and checked against its id, and has the length the
        tree gives its extent (IntegrityError otherwise)."""
        if len(node.extents) == 1:  # the common small file: read in this thread, no hand-off
            e0 = node.extents[0]
            if e0.id is None:
                yield 0, e0.length, None
                return
            data0 = self.repo.read_blob(e0.id)
            if len(data0) != e0.length:
                raise IntegrityError(f"blob {e0.id.hex()} has {len(data0)} bytes, the tree says {e0.length}",
                                     offset=0, blob=e0.id.hex())
            yield 0, e0.length, [data0]
            return
        plan = self._plan(node)
        queue: deque[tuple[int, int, Future[list[bytes]] | None]] = deque()
        it = iter(plan)
        window = self.window if self._lookup is None else 3

        def fill() -> None:
            while len(queue) < window:
                r = next(it, None)
                if r is None:
                    return
                off, ln, items = r
                queue.append((off, ln, None if items is None else self.pool.submit(self._fetch, items)))

        exts = iter(node.extents)
        fill()
        try:
            while queue:
                off, ln, fut = queue.popleft()
                fill()
                if fut is None:
                    next(exts)
                    yield off, ln, None
                    continue
                datas = fut.result()
                pos = off
                for data in datas:
                    e = next(exts)
                    if len(data) != e.length:
                        bid = e.id.hex() if e.id else None
                        raise IntegrityError(f"blob {bid} has {len(data)} bytes, the tree says {e.length}",
                                             offset=pos, blob=bid)
                    pos += e.length
                yield off, ln, datas
        finally:
            for _, _, f in queue:
                if f is not None:
                    f.cancel()

    def _write_content(self, fd: int, node: Node, dfd: int | None = None) -> None:
        """Write a file's blobs into ``fd`` (a new temporary file). A file of one blob is read and written in
        this thread; otherwise each run (:meth:`_plan`) is fetched, verified *and written at its offset* by a
        pool job, so the copies into the page cache of one large file run on every core. At most
        :attr:`window` runs are in flight (3 with ranged reads); every job has ended before this returns, so
        none writes to ``fd`` once it is closed. ``dfd``: the same file open with O_DIRECT, for long runs."""
        if len(node.extents) <= 1:
            for off, ln, datas in self.runs(node):
                if datas is not None:
                    _write_all(fd, datas, off)
                    with self.lock:
                        self.stats.bytes_written += ln
            return
        window = self.window if self._lookup is None else 3
        inflight: deque[Future[None]] = deque()
        exts = iter(node.extents)
        try:
            for off, ln, items in self._plan(node):
                if items is None:
                    next(exts)
                    continue
                lengths = [next(exts).length for _ in items]
                while len(inflight) >= window:
                    inflight.popleft().result()
                inflight.append(self.pool.submit(self._fetch_write, fd, off, ln, items, lengths, dfd))
            while inflight:
                inflight.popleft().result()
        finally:
            for f in inflight:
                f.cancel()
            wait(inflight)

    def _fetch_write(self, fd: int, off: int, ln: int, items: list[Any], lengths: list[int],
                     dfd: int | None = None) -> None:
        """Pool job: fetch and verify one run (:meth:`_fetch`), check each blob has its extent's length, write it
        (its aligned middle through ``dfd`` with O_DIRECT, when given and long enough)."""
        datas = self._fetch(items)
        pos = off
        for k, (data, want) in enumerate(zip(datas, lengths, strict=True)):
            if len(data) != want:
                bid = items[k].hex() if isinstance(items[k], bytes) else items[k].blob_id.hex()
                raise IntegrityError(f"blob {bid} has {len(data)} bytes, the tree says {want}", offset=pos, blob=bid)
            pos += want
        direct = self._write_run(fd, dfd, datas, off, ln)
        with self.lock:
            self.stats.bytes_written += ln
            self.stats.bytes_written_direct += direct

    def _write_run(self, fd: int, dfd: int | None, datas: list[bytes], off: int, ln: int) -> int:
        """Write the run ``datas`` (``ln`` bytes at ``off``): its middle aligned to :attr:`direct_align` copied
        into a pooled aligned buffer and written through ``dfd`` (O_DIRECT), the unaligned head and tail through
        ``fd`` (the page cache; no page is written both ways). Returns the bytes written direct. Without ``dfd``,
        for a run too short, or a transfer the file system refuses (``REFUSED``), it goes through ``fd`` instead."""
        al = self.direct_align
        a = -(-off // al) * al
        b = (off + ln) // al * al
        pool = self.direct
        if dfd is None or pool is None or b - a < DIRECT_MIN or b - a > pool.size:
            _write_all(fd, datas, off)
            return 0
        head: list[memoryview] = []
        tail: list[memoryview] = []
        buf = pool.get()
        try:
            mv = memoryview(buf)
            w, pos = 0, off
            for d in datas:
                dv, end = memoryview(d), pos + len(d)
                if pos < a:
                    head.append(dv[:min(end, a) - pos])
                lo, hi = max(pos, a), min(end, b)
                if lo < hi:
                    mv[w:w + hi - lo] = dv[lo - pos:hi - pos]
                    w += hi - lo
                if end > b:
                    tail.append(dv[max(pos, b) - pos:])
                pos = end
            n = pwrite_direct(dfd, fd, mv[:w], a, al)
        finally:
            pool.put(buf)
        if head:
            _write_all(fd, head, off)
        if tail:
            _write_all(fd, tail, b)
        return n

    def restore_file(self, dir_fd: int, node: Node, rel: bytes) -> None:
        if self.verify:
            self._verify_file(dir_fd, node, rel)
            return
        tmp = self.tmp_name()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                     0o600, dir_fd=dir_fd)
        try:
            try:
                dfd = (reopen_direct(fd) if self.direct is not None and len(node.extents) > 1
                       and node.size >= DIRECT_MIN else None)
                try:
                    self._write_content(fd, node, dfd)
                finally:
                    if dfd is not None:
                        os.close(dfd)
                one = node.extents[0] if len(node.extents) == 1 else None
                if node.size and not (one is not None and one.id is not None and one.length == node.size):
                    os.ftruncate(fd, node.size)  # holes at the end (a new file of one blob is that long already)
                self.apply_meta(fd, dir_fd, node.name, node)
            finally:
                os.close(fd)
        except IntegrityError as e:
            self._unlink(dir_fd, tmp)
            raise IntegrityError(f"{os.fsdecode(rel)}: {e.message}; nothing of it was put in place",
                                 path=os.fsdecode(rel), **e.details) from e
        except BaseException:
            self._unlink(dir_fd, tmp)
            raise
        self.replace(dir_fd, tmp, node.name, rel)
        with self.lock:
            self.restored.add(rel)
            self.stats.files += 1

    def restore_hardlink(self, dir_fd: int, node: Node, rel: bytes) -> None:
        assert node.link is not None
        parts = split_link_path(node.link)
        link = b"/".join(parts)
        if link not in self.restored:
            target = self.lookup(parts)
            if target is None or target.type is not NodeType.FILE:
                raise IntegrityError(f"{os.fsdecode(rel)}: hard link to {os.fsdecode(link)!r}, which is not a "
                                     "file of this snapshot", path=os.fsdecode(rel))
            if target.size > self.max_file_size:
                raise IntegrityError(f"{os.fsdecode(rel)}: hard link to a file claiming {target.size} bytes")
            # Not restored in this run (a partial restore): restore its content as a separate file.
            copy = Node(**{**target.__dict__, "name": node.name})
            self.restore_file(dir_fd, copy, rel)
            return
        if self.verify:
            return
        src_fd = self.walk_dirs(parts[:-1])
        try:
            tmp = self.tmp_name()
            os.link(parts[-1], tmp, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(src_fd)
        self.replace(dir_fd, tmp, node.name, rel)
        self.stats.hardlinks += 1

    # ------------------------------------------------------------------ verify
    def _verify_file(self, dir_fd: int, node: Node, rel: bytes) -> None:
        try:
            fd = os.open(node.name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
        except OSError as e:
            with self.lock:
                self.stats.mismatches.append(f"{os.fsdecode(rel)}: cannot open: {e.strerror}")
            return
        try:
            if os.fstat(fd).st_size != node.size:
                with self.lock:
                    self.stats.mismatches.append(f"{os.fsdecode(rel)}: size differs")
                return
            for off, ln, data in self.blobs(node):
                have = os.pread(fd, ln, off)
                if have != (data if data is not None else bytes(ln)):
                    with self.lock:
                        self.stats.mismatches.append(f"{os.fsdecode(rel)}: content differs at byte {off}")
                    return
                with self.lock:
                    self.stats.bytes_verified += ln
            with self.lock:
                self.stats.files += 1
                self.restored.add(rel)
        finally:
            os.close(fd)

    def _verify_symlink(self, dir_fd: int, node: Node, rel: bytes) -> None:
        try:
            have = os.readlink(node.name, dir_fd=dir_fd)
        except OSError as e:
            self.stats.mismatches.append(f"{os.fsdecode(rel)}: not a symlink: {e.strerror}")
            return
        if os.fsencode(have) != node.target:
            self.stats.mismatches.append(f"{os.fsdecode(rel)}: symlink target differs")
        else:
            self.stats.symlinks += 1


def restore(repo: RepoLike, snapshot: str, target: str | os.PathLike[str], *, paths: list[str] | None = None,
            owners: bool | None = None, allow_devices: bool = False, xattrs: bool = True,
            max_file_size: int = DEFAULT_MAX_FILE_SIZE, threads: int | None = None, verify: bool = False,
            progress: ProgressCallback | None = None, direct_io: bool = True) -> RestoreResult:
    """Restore ``snapshot`` (id, prefix or "latest") into ``target`` (created if missing), or only the
    snapshot paths in ``paths`` (each kept at its own path below ``target``). See the module docstring.

    ``verify=True`` writes nothing: it compares the target's files with the snapshot and lists every
    difference in ``stats.mismatches``.

    ``direct_io``: long runs of files of many blobs are written with O_DIRECT where the file system allows it
    (``stats.bytes_written_direct``), around the page cache; the rest, and everything when False, through it.
    """
    t0 = time.monotonic()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 3 * MAX_DEPTH + 500))  # two frames per level
    snap = repo.load_snapshot(snapshot)
    include = [_split_rel(p) for p in paths] if paths is not None else None
    target_s = os.path.abspath(os.fspath(target))
    if include is not None and any(not p for p in include):
        include = None  # "" or "/" among the paths: the whole snapshot
    if not verify:
        os.makedirs(target_s, exist_ok=True)
    try:
        target_fd = os.open(target_s, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise NotFound(f"restore target {target_s} cannot be opened as a directory: {e.strerror}",
                       path=target_s) from e
    throttle = Throttle(progress, "verify" if verify else "restore")
    r = _Restorer(repo, snap.tree, target_fd, owners=(os.geteuid() == 0) if owners is None else owners,
                  allow_devices=allow_devices, xattrs=xattrs, max_file_size=max_file_size,
                  threads=threads or os.cpu_count() or 2, verify=verify, throttle=throttle, direct_io=direct_io,
                  bytes_total=int(snap.stats.get("bytes_total", 0) or 0) if isinstance(snap.stats, dict) else 0)
    try:
        if include is not None:
            for p in include:
                if r.lookup(p) is None:
                    raise NotFound(f"path {os.fsdecode(b'/'.join(p))!r} is not in snapshot {snap.id[:8]}",
                                   path=os.fsdecode(b"/".join(p)), snapshot=snap.id)
        try:
            r.restore_dir(target_fd, snap.tree, b"", include, ())
        finally:
            wait(r.file_futs)  # files in flight finish (their bytes are verified) before anything is raised
        r.finish()
    except FriezeError:
        raise
    except OSError as e:
        raise RestoreError(f"restore into {target_s} failed: {e}", path=target_s) from e
    finally:
        r.files_pool.shutdown(wait=True, cancel_futures=True)
        r.pool.shutdown(wait=True, cancel_futures=True)
        os.close(target_fd)
    r.stats.duration_s = round(time.monotonic() - t0, 3)
    throttle(r.stats.bytes_written, r.stats.bytes_written, r.stats.files, r.stats.files, done=True)
    return RestoreResult(snapshot_id=snap.id, target=target_s, stats=r.stats)
