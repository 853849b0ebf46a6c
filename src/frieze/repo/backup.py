"""Backup of directory trees into the repository.

Layout of a snapshot's root tree: when exactly one path is given and it is a directory, the root tree *is*
that directory (its entries at the top); otherwise the root tree holds one entry per path, named by the
path's last component (two paths with the same last component are refused). Every "snapshot path" below
(``changed_ranges`` keys, ``fixed_block_globs``, ls, restore, diff) is ``/``-separated and relative to
that root.

Cost follows change:

- With a parent snapshot (``parent="auto"``: the newest snapshot of the same host and the same paths), a
  regular file whose ``(size, mtime_ns, ctime_ns, inode, mode)`` equals the parent's node, and whose parent
  blobs are all still in the repository, is not opened: its extents are reused.
- ``changed_ranges`` maps a snapshot path to the byte ranges ``(offset, length)`` that changed since the
  parent (or ``None``: the whole file). For a fixed-block file whose parent node has the same block spec,
  only the blocks those ranges touch (plus blocks past the parent's end) are read; every other block reuses
  the parent's blob. The caller vouches for the map: a file listed with ``[]`` is not read at all. For a
  content-defined file the ranges only say "changed": the file is read whole. Files not in the map fall
  back to the metadata rule.
- ``changed_paths`` (with a parent) lists the snapshot paths of every entry that may differ from the
  parent's: changed, added or removed files, directories, symlinks (a superset is allowed, a subset never; the
  keys of ``changed_ranges`` count as listed). The caller vouches for the rest: a directory that is neither
  listed nor above a listed path, and whose own record matches the parent's (the metadata rule), keeps the
  parent's record and subtree without being walked, so the cost is that of the listed paths' directories, not
  of the tree. The snapshot providers and the coordinator's mover know this set (what the ingest wrote). Its
  directories' own records are still compared: one whose metadata changed is walked anyway, with a warning.
  The data blobs of a kept subtree are not looked up (its tree blob is); ``check --read-data`` finds damage.

Speed: the calling thread walks (``lstat``, metadata, the parent comparison); files that must be read are
read and cut by ``read_threads`` reader threads (``readinto`` into a per-thread chunker buffer, ``pread``
for blocks), so a cold small file's latency overlaps the next one's and two large files stream at once; a
thread pool hashes, compresses and encrypts (those libraries release the GIL); at most ``4 * threads``
chunk tasks and ``2 * read_threads`` file reads are in flight. A file with several hard links is read
before the walk goes on (the first link seen must be known to be readable). Errors reading one file
(vanished, unreadable) skip that file and are listed in ``stats["warnings"]``; a missing top-level path is
a NotFound before anything is written.
"""

from __future__ import annotations

import bisect
import errno
import functools
import mmap
import operator
import os
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypeVar

from frieze.core.errors import FriezeError, NotFound, UsageError
from frieze.repo.chunking import CdcChunker, CdcParams, FixedBlocks, fixed_block_spec_for
from frieze.repo.dataport import RepoLike, WriterLike
from frieze.repo.directio import DIRECT_ALIGN, REFUSED, DirectBuffers, give_back, set_direct
from frieze.repo.fsmeta import data_segments, is_probably_sparse, node_from_stat, read_xattrs
from frieze.repo.progress import ProgressCallback, Throttle
from frieze.repo.tree import (
    Extent,
    Node,
    NodeType,
    check_name,
    encode_objects,
    extent_ids,
    extent_ids_all,
    node_to_obj,
    obj_to_node,
    parse_tree_objects,
    subtree_id,
)
from frieze.repo.types import BlobKind

Ranges = list[tuple[int, int]]
_T = TypeVar("_T")


@dataclass
class BackupStats:
    """What a backup did. ``bytes_read`` counts every byte read from source files (the cost)."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    other: int = 0
    files_unchanged: int = 0
    files_ranged: int = 0
    files_read: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    #: of ``bytes_read``, those read with O_DIRECT (fixed blocks: no page-cache copy, no cache pollution)
    bytes_read_direct: int = 0
    read_calls: int = 0
    chunks: int = 0
    chunks_new: int = 0
    bytes_new: int = 0
    trees: int = 0
    trees_new: int = 0
    #: directories kept from the parent without being walked (``changed_paths``)
    subtrees_kept: int = 0
    duration_s: float = 0.0
    checkpoints: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["warnings"] = self.warnings[:100]
        d["warnings_count"] = len(self.warnings)
        return d


@dataclass(frozen=True)
class BackupResult:
    snapshot_id: str
    parent: str | None
    tree: bytes
    stats: BackupStats

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` record."""
        return {"snapshot": self.snapshot_id, "parent": self.parent, "tree": self.tree.hex(),
                "stats": self.stats.to_dict()}


# --------------------------------------------------------------------------------------------- pipeline


class _Pipeline:
    """Hash + store chunks on a thread pool with a bounded number in flight."""

    def __init__(self, repo: RepoLike, writer: WriterLike, threads: int, checkpoint_bytes: int) -> None:
        self.repo = repo
        self.writer = writer
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="frieze-backup")
        self.slots = threading.BoundedSemaphore(4 * max(1, threads))
        self.checkpoint_bytes = checkpoint_bytes
        self._lock = threading.Lock()
        self._new_since_checkpoint = 0
        #: the writer's count of stored bytes, when it has one (else raw new bytes are counted here)
        self._stored: Callable[[], int] | None = (
            (lambda: int(writer.stored_bytes)) if hasattr(writer, "stored_bytes") else None)
        self._stored_at_checkpoint = 0
        self.checkpoints = 0
        self._checkpointing = threading.Lock()

    def _store(self, data: bytes | memoryview) -> tuple[bytes, bool]:
        bid = self.repo.chunk_id(data)
        new = bool(self.writer.add_blob(bid, data, kind=BlobKind.DATA))
        if new and self._stored is None:
            with self._lock:
                self._new_since_checkpoint += len(data)
        return bid, new

    def maybe_checkpoint(self) -> None:
        """Make what was stored so far durable *and indexed* every ``checkpoint_bytes`` of new stored
        (compressed, encrypted) bytes, so a killed backup loses at most that much for the re-run to reuse.

        With a writer that has ``checkpoint()`` the main thread does not wait for it (the index file is
        written once the packs are durable); with only ``flush()`` it does. Reader threads call this
        concurrently: one decides and starts a checkpoint at a time, the others go on without one."""
        if self.checkpoint_bytes <= 0 or not self._checkpointing.acquire(blocking=False):
            return
        try:
            if self._stored is not None:
                stored = self._stored()
                if stored - self._stored_at_checkpoint < self.checkpoint_bytes:
                    return
                self._stored_at_checkpoint = stored
            else:
                with self._lock:
                    if self._new_since_checkpoint < self.checkpoint_bytes:
                        return
                    self._new_since_checkpoint = 0
            start = getattr(self.writer, "checkpoint", None) or getattr(self.writer, "flush", None)
            if start is None:
                return
            start()
            self.checkpoints += 1
        finally:
            self._checkpointing.release()

    def _store_many(self, views: list[bytes | memoryview]) -> list[tuple[bytes, bool]]:
        return [self._store(v) for v in views]

    def submit(self, data: bytes | memoryview) -> Future[list[tuple[bytes, bool]]]:
        """Hash and store one chunk on the pool; the future's result is ``[(id, new)]``."""
        return self.submit_many([data])

    def submit_many(self, views: list[bytes | memoryview]) -> Future[list[tuple[bytes, bool]]]:
        """Hash and store several chunks as one pool task (less per-chunk overhead for small blocks); the
        future's result is ``(id, new)`` per chunk, in order."""
        self.maybe_checkpoint()
        self.slots.acquire()
        try:
            fut = self.pool.submit(self._store_many, views)
        except BaseException:
            self.slots.release()
            raise
        fut.add_done_callback(lambda _f: self.slots.release())
        return fut

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# A pending extent: a finished Extent, or (future of [(id, new), ...], its length, its index in that list).
_Pending = Extent | tuple[Future[list[tuple[bytes, bool]]], int, int]
# An entry's metadata read ahead: (lstat, its xattrs or the error reading them), or the lstat error.
_Meta = tuple[os.stat_result, list[tuple[bytes, bytes]] | OSError] | OSError


class _Batched:
    """A small file's place in a batch of small files read by one reader task (:meth:`_Backup._flush_small`)."""

    __slots__ = ("fut", "idx")

    def __init__(self, idx: int) -> None:
        self.fut: Future[list[list[_Pending] | None]] | None = None
        self.idx = idx

    def result(self) -> list[_Pending] | None:
        assert self.fut is not None, "small-file batch not submitted"
        return self.fut.result()[self.idx]


# A file's content: its pending extents, None (unreadable: the entry is left out, with a warning), a reader
# thread's future of either, or its place in a batch of small files.
_Content = list[_Pending] | None | Future[list[_Pending] | None] | _Batched


@dataclass
class _DirWork:
    """A directory walked but not finished: its entries, the contents still being read, its subdirectories.
    Finished (:meth:`_Backup._finish`) in the order walks end, so every subdirectory before its parent."""

    pdir: _ParentDir | None
    items: list[tuple[bytes, Node | dict[str, Any]]] = field(default_factory=list)
    pending: list[tuple[Node, _Content]] = field(default_factory=list)
    subdirs: list[tuple[Node, _DirWork]] = field(default_factory=list)
    tree_id: bytes | None = None


class _CountingReader:
    """``readinto`` over a byte range of an fd (pread-based, so segments of sparse files work).

    ``direct``: the fd has O_DIRECT set and the caller passes aligned buffers (the chunker's stream buffer);
    the first read the file system refuses (:data:`~frieze.repo.directio.REFUSED`: a file system without
    direct reads, or an unaligned offset, which a file that grew between two reads gives) turns O_DIRECT off
    and is made again through the page cache. At the end of an unchanged file the read returns 0."""

    def __init__(self, fd: int, start: int, end: int | None, count: Callable[[int, bool], None],
                 direct: bool = False) -> None:
        self.fd, self.pos, self.end, self.count, self.direct = fd, start, end, count, direct

    def readinto(self, b: memoryview) -> int:
        want = len(b) if self.end is None else min(len(b), self.end - self.pos)
        if want <= 0:
            return 0
        direct = self.direct
        try:
            n = os.preadv(self.fd, [b[:want]], self.pos)
        except OSError as e:
            if not direct or e.errno not in REFUSED:
                raise
            self.direct = direct = False
            set_direct(self.fd, False)
            n = os.preadv(self.fd, [b[:want]], self.pos)
        self.pos += n
        self.count(n, direct)
        return n


# ----------------------------------------------------------------------------------------------- backup


@dataclass
class _ParentDir:
    """A parent snapshot's directory: its node objects by name (framing checked); a node is built and
    checked in full only for an entry that needs one (:meth:`_Backup.parent_node`)."""

    tree_id: bytes
    objs: dict[bytes, dict[str, Any]]
    nodes: dict[bytes, Node] = field(default_factory=dict)
    #: data blob ids of each file entry (filled with :attr:`missing` on the first presence check)
    ids: dict[bytes, list[bytes]] = field(default_factory=dict)
    #: the ids of its files' blobs the loaded index lacks (None: not looked up yet)
    missing: set[bytes] | None = None
    #: file entries whose extent list is malformed
    bad: set[bytes] = field(default_factory=set)


@dataclass
class _Totals:
    """The counts of :class:`BackupStats` that say what a snapshot holds, summed over parent tree objects."""

    #: the counted fields (every field but :attr:`unknown`)
    KEYS: ClassVar[tuple[str, ...]] = ("files", "dirs", "symlinks", "hardlinks", "other", "bytes_total")
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    other: int = 0
    bytes_total: int = 0
    #: a parent subtree could not be read: the sums are short
    unknown: bool = False

    def add_obj(self, o: dict[str, Any]) -> None:
        t = o.get("t")
        if t == "file":
            self.files += 1
            sz = o.get("s", 0)
            self.bytes_total += sz if type(sz) is int and sz > 0 else 0
        elif t == "dir":
            self.dirs += 1
        elif t == "symlink":
            self.symlinks += 1
        elif t == "hardlink":
            self.hardlinks += 1
        else:
            self.other += 1


def _open_source(path: bytes) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        return os.open(path, flags)


class _Backup:
    def __init__(self, repo: RepoLike, writer: WriterLike, pipeline: _Pipeline, *,
                 changed_ranges: Mapping[str, Ranges | None] | None,
                 walk: set[str] | None = None,
                 fixed_block_globs: Mapping[str, int | FixedBlocks] | None,
                 progress: Throttle, bytes_total: int, files_total: int,
                 open_file: Callable[[bytes], int], readers: ThreadPoolExecutor | None = None,
                 read_slots: int = 4, statters: ThreadPoolExecutor | None = None,
                 direct: DirectBuffers | None = None) -> None:
        self.repo = repo
        self.writer = writer
        self.pipe = pipeline
        self.changed = changed_ranges or {}
        #: with ``changed_paths``: the snapshot paths to walk (each listed path and every directory above one)
        self.walk = walk
        self.globs = fixed_block_globs
        cfg = repo.config
        self.cdc_params = CdcParams(cfg.cdc_min, cfg.cdc_avg, cfg.cdc_max, cfg.chunker_seed)
        CdcChunker(self.cdc_params)  # checks the chunker's version and the sizes before anything is read
        self._tls = threading.local()
        self.readers = readers
        self.statters = statters
        self.direct = direct
        self.read_slots = threading.BoundedSemaphore(max(1, read_slots))
        self._count_lock = threading.Lock()
        self.default_block = int(getattr(cfg, "block_size", 0) or 8 * cfg.page_size)
        self.stats = BackupStats()
        self.progress = progress
        self.bytes_total = bytes_total
        self.files_total = files_total
        self.files_done = 0
        self.bytes_done = 0
        self.open_file = open_file
        # (dev, inode) of files with several links -> snapshot path of the first one seen.
        self.links: dict[tuple[int, int], bytes] = {}
        #: with ``changed_paths``: first links taken from the parent's hard-link records (:meth:`_link_into_kept`)
        #: not yet confirmed (their directory kept unwalked, or the walk meeting that inode there), by path
        self.tentative: dict[bytes, tuple[int, int]] = {}
        #: with ``changed_paths``: the directories kept from the parent unwalked
        self.kept_dirs: set[str] = set()
        #: with ``changed_paths``: what the walked directories held in the parent (see :meth:`snapshot_totals`)
        self.parent_side = _Totals()
        self.seen_trees: set[bytes] = set()
        #: parent trees being read ahead of the walk (:meth:`_prefetch_trees`), by tree id
        self.tree_prefetch: dict[bytes, Future[bytes]] = {}
        #: walked directories not finished yet, oldest first (see :attr:`OPEN_DIRS`)
        self.open_dirs: deque[_DirWork] = deque()
        #: small files waiting to be read as one batch: (path, rel, stat, node, place)
        self.small: list[tuple[bytes, str, os.stat_result, Node, _Batched]] = []
        self.small_bytes = 0

    @property
    def cdc(self) -> CdcChunker:
        """This thread's chunker (each reuses its own buffer)."""
        c: CdcChunker | None = getattr(self._tls, "cdc", None)
        if c is None:
            c = self._tls.cdc = CdcChunker(self.cdc_params)
        return c

    def _count_file(self) -> None:
        with self._count_lock:
            self.stats.files_read += 1

    def _count_read(self, n: int, direct: bool = False) -> None:
        with self._count_lock:
            self.stats.bytes_read += n
            self.stats.read_calls += 1
            if direct:
                self.stats.bytes_read_direct += n

    def _reading(self, fn: Callable[..., _T], *args: Any) -> _T | Future[_T]:
        """Run a file read on a reader thread (at most ``read_slots`` queued or running), or here."""
        if self.readers is None:
            return fn(*args)
        self.read_slots.acquire()
        try:
            fut = self.readers.submit(fn, *args)
        except BaseException:
            self.read_slots.release()
            raise
        fut.add_done_callback(lambda _f: self.read_slots.release())
        return fut

    # -- parent access
    def parent_dir(self, tree_id: bytes | None) -> _ParentDir | None:
        if tree_id is None:
            return None
        fut = self.tree_prefetch.pop(tree_id, None)
        try:
            data = fut.result() if fut is not None else self.repo.read_blob(tree_id)
            return _ParentDir(tree_id, parse_tree_objects(data, tree_id))
        except FriezeError as e:
            self.stats.warnings.append(f"parent tree {tree_id.hex()} unreadable ({e}); reading files again")
            return None

    def parent_node(self, pdir: _ParentDir | None, name: bytes) -> Node | None:
        """The parent's node of ``name`` (checked in full), or None (absent, or unreadable: a warning)."""
        if pdir is None or name not in pdir.objs:
            return None
        n = pdir.nodes.get(name)
        if n is None:
            try:
                n = obj_to_node(pdir.objs[name], f"tree {pdir.tree_id.hex()}")
            except FriezeError as e:
                self.stats.warnings.append(f"parent tree {pdir.tree_id.hex()} entry {name!r} unreadable ({e}); "
                                           "reading it again")
                del pdir.objs[name]
                return None
            pdir.nodes[name] = n
        return n

    def _blobs_present(self, node: Node) -> bool:
        ids = list(dict.fromkeys(node.data_ids()))
        missing = getattr(getattr(self.repo, "dedup", None), "missing", None)
        if missing is not None and len(ids) > 4:
            ids = missing(ids)  # one vectorised search; what is left may still be pending in this writer
        return all(self.writer.has(i) for i in ids)

    def _parent_blobs_present(self, pdir: _ParentDir, name: bytes) -> bool:
        """Whether every data blob of the parent's file ``name`` is in the repository. The first call for a
        directory checks the blobs of all its files with one vectorised search."""
        if pdir.missing is None:
            missing = getattr(getattr(self.repo, "dedup", None), "missing", None)
            xss = [o["x"] for o in pdir.objs.values() if "x" in o]
            raw = extent_ids_all(xss)
            if raw is not None and missing is not None:  # the usual case: one decode, one search
                every = list(dict.fromkeys(raw[k:k + 32] for k in range(0, len(raw), 33)))
                pdir.missing = set(missing(every))
            else:
                every_d: dict[bytes, None] = {}
                for n, o in pdir.objs.items():
                    if "x" not in o:
                        continue
                    try:
                        ids = extent_ids(o["x"], f"tree {pdir.tree_id.hex()}")
                    except FriezeError:
                        pdir.bad.add(n)  # handled (and reported) as a changed entry
                        continue
                    pdir.ids[n] = ids
                    every_d.update(dict.fromkeys(ids))
                pdir.missing = set(missing(list(every_d)) if missing is not None else every_d)
        if name in pdir.bad:
            return False
        if not pdir.missing:
            return True
        known = pdir.ids.get(name)
        if known is None:
            x = pdir.objs[name].get("x")
            if x is None:
                return True  # an empty file
            known = pdir.ids[name] = extent_ids(x, f"tree {pdir.tree_id.hex()}")
        ids = known
        return all(self.writer.has(i) for i in ids if i in pdir.missing)

    # -- walking
    def dir_tree(self, abs_path: bytes, rel: str, parent_tree: bytes | None, st: os.stat_result) -> _DirWork:
        """Walk the entries of directory ``abs_path`` (the one ``st`` describes); its tree id is set once it
        is finished (:meth:`settle`).

        The directory is opened with O_NOFOLLOW and checked to be the stat'ed inode; its entries are listed
        and stat'ed through that fd, so a directory swapped for a symlink mid-walk is never followed.
        """
        names: list[bytes] = []
        dfd = -1
        try:
            dfd = os.open(abs_path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
            fst = os.fstat(dfd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                self.stats.warnings.append(f"{rel or '/'}: directory replaced during backup; not descended")
            else:
                names = sorted(os.fsencode(n) for n in os.listdir(dfd))
        except OSError as e:
            self.stats.warnings.append(f"cannot list {os.fsdecode(abs_path)}: {e.strerror}")
        try:
            return self.entries_tree([(n, abs_path + b"/" + n) for n in names], rel, parent_tree,
                                     dfd if dfd >= 0 else None)
        finally:
            if dfd >= 0:
                os.close(dfd)

    #: Entries whose metadata one stat task reads (see :meth:`_prefetch`).
    STAT_BATCH = 16

    @staticmethod
    def _stat_batch(batch: list[tuple[bytes, bytes]], dir_fd: int | None,
                    cold: frozenset[bytes] = frozenset()) -> list[_Meta]:
        out: list[_Meta] = []
        for name, path in batch:
            try:
                st = os.lstat(name, dir_fd=dir_fd) if dir_fd is not None else os.lstat(path)
            except OSError as e:
                out.append(e)
                continue
            try:
                xattrs: list[tuple[bytes, bytes]] | OSError = read_xattrs(path)
            except OSError as e:
                xattrs = e
            if stat.S_ISDIR(st.st_mode) and name not in cold:
                try:  # warm the directory's blocks for the walk that lists it soon after
                    os.listdir(path)
                except OSError:
                    pass
            out.append((st, xattrs))
        return out

    #: Parent trees read ahead and not yet used, at most (each is a tree blob in memory).
    TREES_AHEAD = 32

    def _prefetch_trees(self, pdir: _ParentDir | None, entries: list[tuple[bytes, bytes]],
                        skip: frozenset[bytes] = frozenset()) -> list[bytes]:
        """Start reading the parent trees of this directory's subdirectories on the stat threads (cold, each is
        a pack read), so that each is there when the walk descends into it. Returns the ids it started (the
        caller drops those its walk did not use)."""
        started: list[bytes] = []
        if pdir is None or self.statters is None:
            return started
        for name, _path in entries:
            if len(self.tree_prefetch) >= self.TREES_AHEAD:
                break  # a directory of very many subdirectories: the rest are read when the walk gets there
            o = pdir.objs.get(name)
            if o is None or o.get("t") != "dir" or "st" not in o or name in skip:
                continue
            try:
                tid = subtree_id(o)
            except FriezeError:
                continue  # reported when the walk reaches it
            if tid not in self.tree_prefetch:
                self.tree_prefetch[tid] = self.statters.submit(self.repo.read_blob, tid)
                started.append(tid)
        return started

    def _prefetch(self, entries: list[tuple[bytes, bytes]], dir_fd: int | None,
                  into: list[Future[list[_Meta]]], cold: frozenset[bytes] = frozenset()) -> None:
        """Read every entry's ``lstat`` and xattrs on the stat threads, :attr:`STAT_BATCH` entries per task
        (futures appended to ``into`` one by one, so the caller waits for every one submitted, even if a
        later submit fails): on a cold cache each is a disk read, and many in flight cost little more than one."""
        if self.statters is None or len(entries) < 2:
            return
        b = self.STAT_BATCH
        for i in range(0, len(entries), b):
            into.append(self.statters.submit(self._stat_batch, entries[i:i + b], dir_fd, cold))

    #: Directories walked but not finished that the walk keeps before it waits for the oldest: the walk goes on
    #: into the next directories while the last ones' files are still read and stored.
    OPEN_DIRS = 32

    def entries_tree(self, entries: list[tuple[bytes, bytes]], rel: str, parent_tree: bytes | None,
                     dir_fd: int | None = None) -> _DirWork:
        dw = _DirWork(self.parent_dir(parent_tree))
        metas: list[Future[list[_Meta]]] = []
        ahead: list[bytes] = []
        try:
            # with changed_paths: the entries outside the walk set are not descended (if unchanged), so neither
            # listed to warm them nor their parent trees read ahead
            kept = frozenset() if self.walk is None else frozenset(
                n for n, _p in entries if (f"{rel}/{os.fsdecode(n)}" if rel else os.fsdecode(n)) not in self.walk)
            self._prefetch(entries, dir_fd, metas, kept)
            ahead = self._prefetch_trees(dw.pdir, entries, kept)
            for i, (name, path) in enumerate(entries):
                child_rel = f"{rel}/{os.fsdecode(name)}" if rel else os.fsdecode(name)
                meta = metas[i // self.STAT_BATCH].result()[i % self.STAT_BATCH] if metas else None
                item = self.entry(name, path, child_rel, dw.pdir, dw, dir_fd, meta)
                if item is not None:
                    dw.items.append((name, item))
        finally:
            for tid in ahead:  # read ahead for a subdirectory the walk did not descend into (gone, now a file)
                fut = self.tree_prefetch.pop(tid, None)
                if fut is not None:
                    fut.cancel()
            if metas:  # none may still use dir_fd once the caller closes it
                for f in metas:
                    f.cancel()
                wait(metas)
        self._flush_small()
        self.open_dirs.append(dw)
        self.settle(self.OPEN_DIRS)
        return dw

    def settle(self, keep: int = 0) -> None:
        """Finish the oldest walked directories until at most ``keep`` are open."""
        while len(self.open_dirs) > keep:
            self._finish(self.open_dirs.popleft())

    def _finish(self, dw: _DirWork) -> None:
        """Wait for a walked directory's contents and store its tree (its subdirectories are finished)."""
        for node, sub in dw.subdirs:
            assert sub.tree_id is not None, "subdirectory finished after its parent"
            node.subtree = sub.tree_id
        unreadable: set[int] = set()
        for node, content in dw.pending:
            exts = content.result() if isinstance(content, (Future, _Batched)) else content
            if exts is None:
                unreadable.add(id(node))
            else:
                node.extents = self._resolve(exts)
        pdir = dw.pdir
        objs = [(name, it if isinstance(it, dict) else self._obj(it, pdir)) for name, it in dw.items
                if id(it) not in unreadable]
        dw.items, dw.pending, dw.subdirs, dw.pdir = [], [], [], None
        if self.walk is not None and pdir is not None:
            self._count_parent_side(pdir, dict(objs))
        if pdir is not None and len(objs) == len(pdir.objs) and all(pdir.objs.get(n) == o for n, o in objs):
            self.stats.trees += 1  # unchanged directory: the parent's tree blob, not encoded again
            dw.tree_id = pdir.tree_id
        else:
            dw.tree_id = self.store_tree(objs)

    def _count_parent_side(self, pdir: _ParentDir, objs: dict[bytes, dict[str, Any]]) -> None:
        """Count what walked directory ``pdir`` held in the parent: its entries, and the whole subtree of each
        of its directories that is no directory now (a directory still there is walked, which counts its own,
        or kept, which counts the same in both)."""
        t = self.parent_side
        for name, pobj in pdir.objs.items():
            t.add_obj(pobj)
            if pobj.get("t") == "dir" and objs.get(name, {}).get("t") != "dir":
                self._count_parent_subtree(pobj, f"{pdir.tree_id.hex()}/{os.fsdecode(name)}")

    def _count_parent_subtree(self, pobj: dict[str, Any], what: str) -> None:
        stack = [pobj]
        while stack:
            o = stack.pop()
            try:
                tid = subtree_id(o)
                objs = parse_tree_objects(self.repo.read_blob(tid), tid)
            except (FriezeError, KeyError) as e:
                self.parent_side.unknown = True
                self.stats.warnings.append(f"parent subtree {what} unreadable ({e}); the snapshot's totals "
                                           "cover what this backup saw")
                return
            for sub in objs.values():
                self.parent_side.add_obj(sub)
                if sub.get("t") == "dir":
                    stack.append(sub)

    def snapshot_totals(self, parent_stats: Mapping[str, Any] | None) -> None:
        """With ``changed_paths``: turn the counts of what this backup saw (``files``, ``dirs``, ...,
        ``bytes_total``) into what the snapshot holds: the parent's figures, less what the walked directories
        held in the parent, plus what they hold now (a kept subtree counts the same in both). Without the
        parent's figures the counts stay those of what was walked, with a warning."""
        if self.walk is None:
            return
        ps = parent_stats or {}
        keys = _Totals.KEYS
        if self.parent_side.unknown or not all(type(ps.get(k)) is int and ps[k] >= 0 for k in keys):
            if not self.parent_side.unknown:
                self.stats.warnings.append("the parent snapshot has no totals; the snapshot's totals cover "
                                           "the walked directories only")
            return
        for k in keys:
            setattr(self.stats, k, max(0, ps[k] + getattr(self.stats, k) - getattr(self.parent_side, k)))

    @staticmethod
    def _obj(node: Node, pdir: _ParentDir | None) -> dict[str, Any]:
        """The object of ``node``; a directory whose record differs from the parent's only in its access time
        (listing it moves that) keeps the parent's record, as unchanged files do (:meth:`_same_as_parent`)."""
        obj = node_to_obj(node)
        if node.type is NodeType.DIR and pdir is not None:
            pobj = pdir.objs.get(node.name)
            if pobj is not None and _same_record(obj, pobj):
                return pobj
        return obj

    def store_tree(self, objs: list[tuple[bytes, dict[str, Any]]]) -> bytes:
        blob = encode_objects(objs)
        tid = self.repo.chunk_id(blob)
        self.stats.trees += 1
        if tid not in self.seen_trees:
            self.seen_trees.add(tid)
            if self.writer.add_blob(tid, blob, kind=BlobKind.TREE):
                self.stats.trees_new += 1
        return tid

    def _resolve(self, exts: list[_Pending]) -> list[Extent]:
        out: list[Extent] = []
        for e in exts:
            if isinstance(e, Extent):
                out.append(e)
                continue
            fut, ln, k = e
            bid, new = fut.result()[k]
            self.stats.chunks += 1
            if new:
                self.stats.chunks_new += 1
                self.stats.bytes_new += ln
            out.append(Extent(bid, ln))
        return out

    def entry(self, name: bytes, path: bytes, rel: str, pdir: _ParentDir | None,
              dw: _DirWork, dir_fd: int | None = None,
              meta: _Meta | None = None) -> Node | dict[str, Any] | None:
        """Back up one entry: its node, or (an unchanged file) the parent's node object as is. ``meta`` is
        its ``lstat`` and xattrs when :meth:`_prefetch` read them (else they are read here)."""
        check_name(name)
        if meta is None:
            meta = self._stat_batch([(name, path)], dir_fd)[0]
        if isinstance(meta, FileNotFoundError):
            self.stats.warnings.append(f"{rel}: vanished during backup")
            return None
        if isinstance(meta, OSError):
            self.stats.warnings.append(f"{rel}: cannot stat: {meta.strerror}")
            return None
        st, xattrs = meta
        if isinstance(xattrs, OSError):
            raise xattrs
        node = node_from_stat(name, st, xattrs=xattrs)
        if node.type is NodeType.DIR:
            self.stats.dirs += 1
            if self.walk is not None and rel not in self.walk:
                kept = self._kept_subtree(node, rel, pdir)
                if kept is not None:
                    return kept
            parent = self.parent_node(pdir, name)
            sub_parent = parent.subtree if parent is not None and parent.type is NodeType.DIR else None
            self._flush_small()  # this directory's small files are read while the walk is in the subdirectory
            dw.subdirs.append((node, self.dir_tree(path, rel, sub_parent, st)))
            return node
        if node.type is NodeType.SYMLINK:
            self.stats.symlinks += 1
            try:
                node.target = os.readlink(name, dir_fd=dir_fd) if dir_fd is not None else os.readlink(path)
            except OSError as e:
                self.stats.warnings.append(f"{rel}: cannot read link: {e.strerror}")
                return None
            return node
        if node.type is not NodeType.FILE:
            self.stats.other += 1
            return node
        was_tentative = False
        rel_b = rel.encode("utf-8", "surrogateescape") if st.st_nlink > 1 else b""
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is None and self.walk is not None:
                first = self._link_into_kept(key, pdir, name, st)
            if first is not None and first == rel_b:
                # the first link an earlier entry was linked to (:meth:`_link_into_kept`), met by the walk
                # after all: this entry is that file
                self.tentative.pop(first, None)
                first, was_tentative = None, True
            if first is not None:
                self.stats.hardlinks += 1
                return Node(name=name, type=NodeType.HARDLINK, link=first, mode=node.mode, uid=node.uid,
                            gid=node.gid, user=node.user, group=node.group, mtime_ns=node.mtime_ns,
                            atime_ns=node.atime_ns, ctime_ns=node.ctime_ns, inode=node.inode, dev=node.dev,
                            nlink=node.nlink)
            self.links[key] = rel_b
        self.stats.files += 1
        self.stats.bytes_total += st.st_size
        spec = fixed_block_spec_for(rel, self.globs, self.default_block)
        if spec is not None:
            node.block_size, node.page_size = spec.block_size, spec.page_size
        same = self._same_as_parent(node, rel, pdir)
        if same is not None:
            self.stats.files_unchanged += 1
            exts: _Content = []
        else:
            exts = self.file_content(path, rel, st, node, self.parent_node(pdir, name), spec)
            if st.st_nlink > 1 and isinstance(exts, Future):
                exts = exts.result()  # whether this first link is readable decides what later links are
        self.files_done += 1
        self.bytes_done += st.st_size
        self.progress(self.bytes_done, self.bytes_total, self.files_done, self.files_total, rel)
        if same is not None:
            return same
        if exts is None:
            if st.st_nlink > 1 and self.links.get((st.st_dev, st.st_ino)) == rel_b:
                del self.links[(st.st_dev, st.st_ino)]
                if was_tentative:  # earlier entries link to it: unresolved (the backup walks everything again)
                    self.tentative[rel_b] = (st.st_dev, st.st_ino)
            return None
        dw.pending.append((node, exts))
        return node

    def _kept_subtree(self, node: Node, rel: str, pdir: _ParentDir | None) -> dict[str, Any] | None:
        """With ``changed_paths``, for a directory outside every listed path: the parent's record (its subtree
        kept unwalked) when the directory's own record is the parent's (atime aside) and its tree blob is in
        the repository; None (walk it) otherwise, with a warning if its metadata changed unlisted."""
        if pdir is None:
            return None
        pobj = pdir.objs.get(node.name)
        if pobj is None or pobj.get("t") != "dir" or "st" not in pobj:
            return None
        try:
            tid = subtree_id(pobj)
        except FriezeError:
            return None  # the walk reports it
        obj = node_to_obj(node)
        obj["st"] = pobj["st"]
        if not _same_record(obj, pobj):
            self.stats.warnings.append(f"{rel}: directory changed but not in the changed paths; walked")
            return None
        if not self.writer.has(tid):
            return None
        self.stats.subtrees_kept += 1
        self.kept_dirs.add(rel)
        under = rel.encode("utf-8", "surrogateescape") + b"/"
        for t in [t for t in self.tentative if t.startswith(under)]:
            del self.tentative[t]  # the first link is in this kept subtree, as the parent has it
        return pobj

    def _link_into_kept(self, key: tuple[int, int], pdir: _ParentDir | None, name: bytes,
                        st: os.stat_result) -> bytes | None:
        """With ``changed_paths``, a further link of a file whose first link is outside the walked directories:
        the parent records this entry as a hard link (to the same inode) to that path; it is registered as the
        first link so this entry (and any later one) stays a hard link to it. Until the directory of that path
        is kept unwalked, or the walk meets the inode at that path, the link is tentative
        (:attr:`tentative`); one still tentative when the walk ends makes the backup walk everything again."""
        pobj = pdir.objs.get(name) if pdir is not None else None
        if pobj is None or pobj.get("t") != NodeType.HARDLINK.value:
            return None
        try:
            n = obj_to_node(pobj, f"tree {pdir.tree_id.hex()}") if pdir is not None else None
        except FriezeError:
            return None
        if n is None or n.link is None or (n.inode and n.inode != st.st_ino):
            return None
        target = os.fsdecode(n.link)
        assert self.walk is not None
        parts = target.split("/")
        dirs = ["/".join(parts[:k]) for k in range(1, len(parts))]
        if all(d in self.walk for d in dirs):
            return None  # its directory is walked: the first link is (or will be) seen there
        self.links[key] = n.link
        if not any(d in self.kept_dirs for d in dirs):
            self.tentative[n.link] = key
        return n.link

    def _same_as_parent(self, node: Node, rel: str, pdir: _ParentDir | None) -> dict[str, Any] | None:
        """The parent's object for this file when it is the object this backup would write (every field
        the same, its extents included, so the file is unchanged by the metadata rule) and its blobs are
        all present; None otherwise (then the file goes through :meth:`file_content`)."""
        if pdir is None or rel in self.changed:
            return None
        pobj = pdir.objs.get(node.name)
        if pobj is None or pobj.get("t") != "file":
            return None
        obj = node_to_obj(node)
        x = pobj.get("x")
        if x is not None:
            obj["x"] = x
        if not _same_record(obj, pobj):
            # Anything but the access time differs: the long way. When only the atime moved (any reader of
            # the file moves it, another backup tool included), the file is unchanged and keeps the parent's
            # record, atime included, so its directory's tree is the parent's too.
            return None
        if not self._parent_blobs_present(pdir, node.name):
            return None
        return pobj

    # -- file content
    def file_content(self, path: bytes, rel: str, st: os.stat_result, node: Node,
                     parent: Node | None, spec: FixedBlocks | None) -> _Content:
        same_kind = (parent is not None and parent.type is NodeType.FILE
                     and parent.block_size == node.block_size and parent.page_size == node.page_size)
        has_ranges = rel in self.changed
        ranges = self.changed.get(rel)
        if parent is not None and same_kind and not has_ranges and (
                parent.size, parent.mtime_ns, parent.ctime_ns, parent.inode, parent.mode) == (
                st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, stat.S_IMODE(st.st_mode)
        ) and self._blobs_present(parent):
            self.stats.files_unchanged += 1
            return list(parent.extents)
        if parent is not None and same_kind and has_ranges and ranges is not None and self._blobs_present(parent):
            if spec is None:
                if not ranges and parent.size == st.st_size:
                    self.stats.files_unchanged += 1
                    return list(parent.extents)
            else:
                self.stats.files_ranged += 1
                return self._reading(self._read_fixed, path, rel, st, node, spec, parent, ranges)
        if (self.readers is not None and spec is None and st.st_size < self.cdc_params.min_size
                and st.st_nlink == 1 and not is_probably_sparse(st)):
            return self._add_small(path, rel, st, node)
        return self._reading(self._read_full, path, rel, st, node, spec)

    #: Small files (below the chunker's minimum, so one chunk each) are read by one reader task and stored by
    #: one pool task per batch of at most this many files or bytes: one hand-off per batch, not three per file.
    SMALL_BATCH_FILES = 64
    SMALL_BATCH_BYTES = 1 << 20

    def _add_small(self, path: bytes, rel: str, st: os.stat_result, node: Node) -> _Batched:
        place = _Batched(len(self.small))
        self.small.append((path, rel, st, node, place))
        self.small_bytes += st.st_size
        if len(self.small) >= self.SMALL_BATCH_FILES or self.small_bytes >= self.SMALL_BATCH_BYTES:
            self._flush_small()
        return place

    def _flush_small(self) -> None:
        if not self.small:
            return
        batch, self.small, self.small_bytes = self.small, [], 0
        fut = self._reading(self._read_small, batch)
        assert isinstance(fut, Future)
        for *_rest, place in batch:
            place.fut = fut

    def _read_small(self, batch: list[tuple[bytes, str, os.stat_result, Node, _Batched]]
                    ) -> list[list[_Pending] | None]:
        """Reader thread: read each small file with one ``pread``; store all their chunks with one pool task.
        A file that grew since its lstat is read again to its end and cut as usual (:meth:`_read_full`)."""
        out: list[list[_Pending] | int | None] = []
        datas: list[bytes | memoryview] = []
        for path, rel, st, node, _place in batch:
            fd = self._open(path, rel, st)
            if fd is None:
                out.append(None)
                continue
            data: bytes | None = b""
            try:
                data = self._pread_small(fd, node, st.st_size)
            except OSError as e:
                self.stats.warnings.append(f"{rel}: read failed: {e.strerror}")
                out.append(None)
                continue
            finally:
                if data is not None:  # a file that grew is warned about once, by _read_full
                    self._note_change(fd, rel, st)
                os.close(fd)
            if data is None:
                out.append(self._read_full(path, rel, st, node, None, grown=True))  # read again to its end, cut
                continue
            self._count_file()
            if data:
                out.append(len(datas))
                datas.append(data)
            else:
                out.append([])
        fut = self.pipe.submit_many(datas) if datas else None
        return [[(fut, len(datas[k]), k)] if isinstance(k, int) and fut is not None else k  # type: ignore[misc]
                for k in out]

    def _open(self, path: bytes, rel: str, st: os.stat_result) -> int | None:
        try:
            fd = self.open_file(path)
        except OSError as e:
            self.stats.warnings.append(f"{rel}: cannot open: {e.strerror}")
            return None
        try:
            fst = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            self.stats.warnings.append(f"{rel}: replaced during backup")
            return None
        return fd

    def _read_full(self, path: bytes, rel: str, st: os.stat_result, node: Node,
                   spec: FixedBlocks | None, grown: bool = False) -> list[_Pending] | None:
        """Open, read and cut one file (``grown``: a small file known to have grown since its lstat, cut to its
        end without trying one pread first)."""
        fd = self._open(path, rel, st)
        if fd is None:
            return None
        self._count_file()
        try:
            if spec is not None:
                return self._read_fixed_fd(fd, rel, st, node, spec, None, None)
            size = st.st_size
            segs = data_segments(fd, size) if is_probably_sparse(st) else None
            out: list[_Pending] = []
            if segs is None and size < self.cdc_params.min_size and not grown:
                data = self._pread_small(fd, node, size)
                if data is not None:
                    return [(self.pipe.submit(data), len(data), 0)] if data else []
                # It grew meanwhile: cut it to its end below.
            if segs is None:
                out.extend(self._cut(fd, 0, None))
            else:
                pos = 0
                for off, ln in segs:
                    if off > pos:
                        out.append(Extent(None, off - pos))
                    out.extend(self._cut(fd, off, off + ln))
                    pos = off + ln
                if pos < size:
                    out.append(Extent(None, size - pos))
            node.size = sum(e.length if isinstance(e, Extent) else e[1] for e in out)
            return out
        except OSError as e:
            self.stats.warnings.append(f"{rel}: read failed: {e.strerror}")
            return None
        finally:
            self._note_change(fd, rel, st)
            os.close(fd)

    def _pread_small(self, fd: int, node: Node, size: int) -> bytes | None:
        """A file below the chunker's minimum, read with one ``pread`` (CDC never cuts at or below ``min_size``,
        so it is one chunk) and ``node.size`` set; None if it grew since its ``lstat`` (the caller then reads it
        to its end and cuts it as usual, rather than keep its first ``size + 1`` bytes)."""
        data = os.pread(fd, size + 1, 0)
        if len(data) > size:
            return None  # counted when it is read again, to its end
        self._count_read(len(data))
        node.size = len(data)
        return data

    def _note_change(self, fd: int, rel: str, st: os.stat_result) -> None:
        """Warn (the content is kept as read) when a file changed while it was being read."""
        try:
            now = os.fstat(fd)
        except OSError:
            return
        if (now.st_mtime_ns, now.st_size, now.st_ctime_ns) != (st.st_mtime_ns, st.st_size, st.st_ctime_ns):
            self.stats.warnings.append(f"{rel}: changed while it was read (not a consistent copy of it)")

    def _cut(self, fd: int, start: int, end: int | None) -> Iterator[_Pending]:
        # a whole file is read with O_DIRECT into the chunker's aligned buffer where allowed: a buffered read
        # costs 1-3 s of system CPU per GB here (the page cache), a direct one almost none
        direct = self.direct is not None and start == 0 and end is None and set_direct(fd, True)
        reader = _CountingReader(fd, start, end, self._count_read, direct)
        for view in self.cdc.cut_stream(reader):
            yield (self.pipe.submit(bytes(view)), len(view), 0)

    def _read_fixed(self, path: bytes, rel: str, st: os.stat_result, node: Node, spec: FixedBlocks,
                    parent: Node, ranges: Ranges) -> list[_Pending] | None:
        touched = spec.touched(ranges, st.st_size)
        if not touched and parent.size == st.st_size:
            return list(parent.extents)
        fd = self._open(path, rel, st)
        if fd is None:
            return None
        try:
            return self._read_fixed_fd(fd, rel, st, node, spec, parent, touched)
        except OSError as e:
            self.stats.warnings.append(f"{rel}: read failed: {e.strerror}")
            return None
        finally:
            os.close(fd)

    #: Consecutive fixed blocks are read with one ``pread`` of at most this many bytes and hashed and stored
    #: by one pool task (a 1 GiB file of 64 KiB blocks: 256 reads and tasks, not 16 384).
    FIXED_READ_BYTES = 4 << 20

    def _read_fixed_fd(self, fd: int, rel: str, st: os.stat_result, node: Node, spec: FixedBlocks,
                       parent: Node | None, touched: set[int] | None) -> list[_Pending]:
        """One extent per block (holes too, so block ``i`` is always extent ``i``). With a parent and
        ``touched``, every other block whose parent extent has the block's length is the parent's."""
        size = st.st_size
        bs = spec.block_size
        nblocks = -(-size // bs)
        last_len = size - (nblocks - 1) * bs if nblocks else 0
        out: list[_Pending | None]
        order: Iterable[int]
        if parent is not None and touched is not None:
            pe = parent.extents
            k = min(len(pe), nblocks)
            out = [*pe[:k], *([None] * (nblocks - k))]
            todo = {i for i in touched if i < nblocks}
            todo.update(range(k, nblocks))
            whole = min(k, nblocks - 1)  # extents 0 .. whole-1 must be whole blocks
            if whole and set(map(_LENGTH, pe[:whole])) != {bs}:
                todo.update(i for i in range(whole) if pe[i].length != bs)
            if k == nblocks and pe[k - 1].length != last_len:
                todo.add(k - 1)
            order = sorted(todo)
        else:
            out = [None] * nblocks
            order = range(nblocks)
        segs = data_segments(fd, size) if is_probably_sparse(st) else None
        starts = [a for a, _ in segs] if segs is not None else []
        per_read = max(1, self.FIXED_READ_BYTES // bs)
        run: list[int] = []
        pool = self.direct if self.direct is not None and bs % DIRECT_ALIGN == 0 and size else None
        direct = pool is not None and per_read * bs <= pool.size and set_direct(fd, True)

        def read(off: int, want: int) -> tuple[bytes | memoryview, mmap.mmap | None]:
            """``want`` bytes at ``off``: O_DIRECT into a pooled buffer when the file allows it, else ``pread``."""
            nonlocal direct
            if direct:
                assert pool is not None
                buf = pool.get()
                try:
                    n = os.preadv(fd, [memoryview(buf)[:-(-want // DIRECT_ALIGN) * DIRECT_ALIGN]], off)
                except OSError as e:
                    pool.put(buf)
                    if e.errno not in REFUSED:
                        raise
                    direct = False  # the file system refused this transfer: buffered from here on
                    set_direct(fd, False)
                else:
                    self._count_read(min(n, want), direct=True)
                    if n < want:
                        pool.put(buf)
                        raise OSError(errno.EIO, f"short read at {off} (file shrank?)")
                    return memoryview(buf)[:want], buf
            data = os.pread(fd, want, off)
            self._count_read(len(data))
            if len(data) != want:
                raise OSError(errno.EIO, f"short read at {off} (file shrank?)")
            return data, None

        def flush() -> None:
            if not run:
                return
            off = run[0] * bs
            want = min(len(run) * bs, size - off)
            data, buf = read(off, want)
            mv = memoryview(data)
            views: list[bytes | memoryview] = [mv[j * bs:min((j + 1) * bs, want)] for j in range(len(run))]
            try:
                fut = self.pipe.submit_many(views)
            except BaseException:
                if buf is not None and pool is not None:
                    pool.put(buf)
                raise
            if buf is not None and pool is not None:
                # reused once the task that hashes and stores these views is done (no view outlives it)
                fut.add_done_callback(functools.partial(give_back, pool, buf))
            for j, i in enumerate(run):
                out[i] = (fut, len(views[j]), j)
            run.clear()

        for i in order:
            if segs is not None:
                off, ln = i * bs, (bs if i < nblocks - 1 else last_len)
                j = bisect.bisect_right(starts, off + ln - 1) - 1
                if j < 0 or segs[j][0] + segs[j][1] <= off:  # no data segment overlaps the block: a hole
                    flush()
                    out[i] = Extent(None, ln)
                    continue
            if run and (run[-1] != i - 1 or len(run) >= per_read):
                flush()
            run.append(i)
        flush()
        node.size = size
        assert all(e is not None for e in out)
        return out  # type: ignore[return-value]


_LENGTH = operator.itemgetter(1)  # Extent.length


def _same_record(obj: dict[str, Any], pobj: dict[str, Any]) -> bool:
    """Whether the parent's object ``pobj`` may stand for the new object ``obj``: they are equal, or differ in
    the access time alone and the parent's is a valid one (an int in range, or absent), so that keeping
    ``pobj`` keeps a record that :func:`~frieze.repo.tree.obj_to_node` accepts."""
    if obj == pobj:
        return True
    pat = pobj.get("at", 0)
    if type(pat) is not int or not 0 <= pat < 1 << 64 or obj.get("at", 0) == pat:
        return False
    return {**obj, "at": 0} == {**pobj, "at": 0}


def load_changed_ranges(path: os.PathLike[str] | str) -> dict[str, Ranges | None]:
    """A ``changed_ranges`` map from a JSON file (snapshot path -> ``[[offset, length], ...]`` or null), as
    ``frieze repo backup --changed-ranges`` takes it; NotFound or UsageError naming the problem."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise NotFound(f"--changed-ranges file {path} does not exist", path=str(path)) from None
    except (OSError, ValueError) as e:
        raise UsageError(f"--changed-ranges file {path}: {e}", path=str(path)) from None
    if not isinstance(d, dict):
        raise UsageError(f"--changed-ranges file {path}: expected an object of path -> [[offset, length], ...]")
    out: dict[str, Ranges | None] = {}
    for k, v in d.items():
        if v is None:
            out[str(k)] = None
            continue
        try:
            out[str(k)] = [(int(a), int(b)) for a, b in v]
        except (TypeError, ValueError):
            raise UsageError(f"--changed-ranges file {path}: bad ranges for {k!r}") from None
    return out


def walk_set(changed_paths: Iterable[str], also: Iterable[str] = ()) -> set[str]:
    """The snapshot paths a ``changed_paths`` backup walks: each listed path and every directory above one
    (``""`` is the root). UsageError naming a path that is not a clean relative ``/``-separated path."""
    if isinstance(changed_paths, (str, bytes)):
        raise UsageError("changed paths must be a list of snapshot paths, not one string")
    out = {""}
    for p in [*changed_paths, *also]:
        if not isinstance(p, str) or not p or p.startswith("/") or any(
                c in ("", ".", "..") for c in p.split("/")) or "\0" in p:
            raise UsageError(f"changed path {p!r} is not a relative snapshot path (a/b/c, no '.', '..' or '//')",
                             path=str(p))
        parts = p.split("/")
        out.update("/".join(parts[:k]) for k in range(1, len(parts) + 1))
    return out


def load_changed_paths(path: os.PathLike[str] | str) -> list[str]:
    """A ``changed_paths`` list from a JSON file (an array of snapshot paths), as ``frieze repo backup
    --changed-paths`` takes it; NotFound or UsageError naming the problem."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise NotFound(f"--changed-paths file {path} does not exist", path=str(path)) from None
    except (OSError, ValueError) as e:
        raise UsageError(f"--changed-paths file {path}: {e}", path=str(path)) from None
    if not isinstance(d, list) or not all(isinstance(x, str) for x in d):
        raise UsageError(f"--changed-paths file {path}: expected an array of snapshot paths", path=str(path))
    try:
        walk_set(d)  # checks each
    except UsageError as e:
        raise UsageError(f"--changed-paths file {path}: {e.message}", path=str(path)) from None
    return d


def _scan_totals(paths: list[bytes]) -> tuple[int, int]:
    total, files = 0, 0
    stack = list(paths)
    while stack:
        p = stack.pop()
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                stack.extend(p + b"/" + n for n in os.listdir(p))
            except OSError:
                pass
        elif stat.S_ISREG(st.st_mode):
            total += st.st_size
            files += 1
    return total, files


def _pick_parent(repo: RepoLike, parent: str | None, host: str,
                 paths: list[str]) -> tuple[str | None, bytes | None, dict[str, Any] | None]:
    if parent is None:
        return None, None, None
    if parent == "auto":
        best = None
        for s in repo.list_snapshots():
            if s.host == host and sorted(s.paths) == sorted(paths) and (best is None or s.seq > best.seq):
                best = s
        return (best.id, best.tree, None) if best is not None else (None, None, None)
    snap = repo.load_snapshot(parent)
    return snap.id, snap.tree, snap.stats


def backup(repo: RepoLike, paths: list[str | os.PathLike[str]], *, host: str, tags: list[str] | None = None,
           label: Any = None, parent: str | None = "auto",
           changed_ranges: Mapping[str, Ranges | None] | None = None,
           changed_paths: Iterable[str] | None = None,
           fixed_block_globs: Mapping[str, int | FixedBlocks] | None = None,
           progress: ProgressCallback | None = None, threads: int | None = None,
           lease_s: float = 300.0, checkpoint_bytes: int | None = None,
           open_file: Callable[[bytes], int] = _open_source, read_threads: int = 2,
           direct_io: bool = True) -> BackupResult:
    """Back up ``paths`` as one snapshot and commit it; see the module docstring for the rules.

    ``checkpoint_bytes`` (default: 4 packs' worth) bounds what a killed backup leaves unindexed: after that
    much new data the writer is flushed (packs durable and indexed), so a re-run reuses it; 0 disables.
    ``open_file`` opens a source file for reading (tests count opens through it). ``read_threads`` files
    are read at once (0: the walking thread reads them itself). ``direct_io``: fixed blocks, and whole files
    the chunker cuts, are read with O_DIRECT where the file system allows it (no copy through the page cache,
    and the application's cache is not evicted by the backup); a file that refuses it is read through the
    cache.
    """
    t0 = time.monotonic()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))  # three frames per directory level
    if not paths:
        raise UsageError("backup needs at least one path")
    abs_paths = [os.path.abspath(os.fspath(p)) for p in paths]
    for p in abs_paths:
        if not os.path.lexists(p):
            raise NotFound(f"backup path {p} does not exist", path=p)
    bpaths = [os.fsencode(p) for p in abs_paths]
    single_dir = len(bpaths) == 1 and os.path.isdir(bpaths[0]) and not os.path.islink(bpaths[0])
    if not single_dir:
        names = [os.path.basename(p.rstrip(b"/")) for p in bpaths]
        if any(not n for n in names):
            raise UsageError("cannot back up / together with other paths; give it alone")
        if len(set(names)) != len(names):
            raise UsageError(f"two backup paths end in the same name: {sorted(os.fsdecode(n) for n in names)}")
    walk = walk_set(changed_paths, changed_ranges or {}) if changed_paths is not None else None
    parent_id, parent_tree, parent_stats = _pick_parent(repo, parent, host, abs_paths)
    if parent_tree is None:
        walk = None  # nothing to keep: every path is read (a full backup is always right)
    elif walk is not None and parent_stats is None:
        assert parent_id is not None
        parent_stats = repo.load_snapshot(parent_id).stats  # its totals carry the kept subtrees'
    throttle = Throttle(progress, "backup")
    # the totals' scan walks the whole tree, which a changed-paths backup exists not to do
    bytes_total, files_total = _scan_totals(bpaths) if progress is not None and walk is None else (0, 0)
    with repo.writer(host=host, lease_s=lease_s) as writer:
        if checkpoint_bytes is None:
            checkpoint_bytes = 4 * int(getattr(repo.config, "pack_size", 16 << 20))
        nthreads = threads or os.cpu_count() or 2
        pipe = _Pipeline(repo, writer, nthreads, checkpoint_bytes)
        readers = (ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="frieze-read")
                   if read_threads > 0 else None)
        # one buffer per pool task that may be queued or running, one per reader filling one, and a spare
        direct = (DirectBuffers(_Backup.FIXED_READ_BYTES, 4 * nthreads + max(1, read_threads) + 1)
                  if direct_io else None)
        statters = (ThreadPoolExecutor(max_workers=4 * read_threads, thread_name_prefix="frieze-stat")
                    if read_threads > 0 else None)

        def run(walk: set[str] | None) -> tuple[_Backup, bytes]:
            b = _Backup(repo, writer, pipe, changed_ranges=changed_ranges, walk=walk,
                        fixed_block_globs=fixed_block_globs, progress=throttle, bytes_total=bytes_total,
                        files_total=files_total, open_file=open_file, readers=readers, read_slots=2 * read_threads,
                        statters=statters, direct=direct)
            if single_dir:
                root = b.dir_tree(bpaths[0], "", parent_tree, os.lstat(bpaths[0]))
            else:
                root = b.entries_tree([(os.path.basename(p.rstrip(b"/")), p) for p in bpaths], "", parent_tree)
            b.settle(0)
            assert root.tree_id is not None
            return b, root.tree_id

        try:
            b, tree = run(walk)
            if b.tentative:
                # hard links to first links the walk did not confirm (their directory walked although not listed,
                # and the file not there as the parent has it): walk everything, which is always right
                warned = [*b.stats.warnings, f"{len(b.tentative)} hard links point into directories that changed "
                          "outside the changed paths; walked the whole tree"]
                b, tree = run(None)
                b.stats.warnings[:0] = warned
            else:
                b.snapshot_totals(parent_stats)
        except BaseException:
            for pool in (statters, readers):
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
            pipe.close()
            writer.abort()
            raise
        for pool in (statters, readers):
            if pool is not None:
                pool.shutdown(wait=True)
        pipe.close()
        b.stats.duration_s = round(time.monotonic() - t0, 3)
        b.stats.checkpoints = pipe.checkpoints
        snap_id = writer.commit(tree=tree, paths=abs_paths, host=host, tags=list(tags or []), label=label,
                                parent=parent_id, stats=b.stats.to_dict())
    throttle(b.bytes_done, bytes_total or b.bytes_done, b.files_done, files_total or b.files_done, done=True)
    return BackupResult(snapshot_id=snap_id, parent=parent_id, tree=tree, stats=b.stats)
