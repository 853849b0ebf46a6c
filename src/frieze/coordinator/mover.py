"""The mover: the coordinator side that writes and reads the repository. Agents never hold repository keys
or storage credentials; they only serve a snapshot's files and accept restored files.

Backup path (:meth:`Mover.ingest`):

1. The agent lists the snapshot (:class:`FileEntry`: path, type, size, mode, mtime, BLAKE3 of the content).
2. The mover keeps a per-volume *mirror* of the host's data under the coordinator's state directory. A file
   whose (size, mtime, digest) equals the mirror's record is not fetched again; every other file is
   streamed from the agent into a temporary file while the mover hashes it itself, and only if the
   BLAKE3 of the received bytes equals the digest the agent announced is it renamed into the mirror.
   A mismatch is an :class:`~frieze.core.errors.IntegrityError` naming the host, volume and file, and
   nothing of that backup is committed.
3. The repository's own backup runs over the mirror with the volume's previous snapshot as parent, so
   only what changed is read, chunked and stored; its chunk ids are keyed BLAKE3 computed here, from the
   bytes the mover holds. A host therefore can never get data stored under an id that does not match it
   (the requirement "data a host sends is checked against its chunk ids before it is stored": the ids are
   computed, not trusted, and the transfer itself is checked against the host's digest first).

Changed byte ranges: a source that can say what changed since an earlier snapshot of the same volume
(``changed_since(parent_snap_id)``, ``read_range(path, offset, length)``: the agent's
``GET .../snapshots/{snap}/changes?parent=`` over btrfs or reflink extent maps) lets the mover fetch only
those ranges of a changed file. The mirror remembers which snapshot it holds (``state.json``); for a file
the mirror has, the mover copies its mirror version to a temporary file, writes the fetched ranges into it,
cuts it to the new size, and keeps it only if the BLAKE3 of the whole result equals the digest the host
announced; otherwise (a wrong map, an edited mirror) it fetches the file whole, so a bad map costs bytes,
never correctness. :attr:`IngestResult.changed_ranges` hands the map on (relative to
:attr:`IngestResult.ranges_parent`) for the repository's backup (``changed_ranges=``), whose parent must then
be the repository snapshot of that earlier ingest.

Changed paths: every ingest also knows exactly what it changed in the mirror (entries removed, created,
fetched, patched, or whose owner, mode or mtime it set). :attr:`IngestResult.changed_paths` hands that list
on, relative to :attr:`IngestResult.mirror_parent` (the snapshot the mirror held before), for the backup's
``changed_paths=``: the repository keeps every other directory's subtree from the parent without walking it.
Owners, modes and times are set only where they differ, so an unchanged entry's ctime does not move (a moved
ctime would make the backup read the file again).

Restore path (:meth:`Mover.extract`): the repository restores the snapshot (or chosen paths) into a fresh
coordinator-side staging directory, whose files are then sent to the agent with their digests.

Every path from an agent is checked (relative, no ``..``, no NUL) and the mirror is written without ever
following a symlink (each parent is checked with ``lstat``; files are created ``O_EXCL|O_NOFOLLOW``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import blake3

from frieze.coordinator.metrics import BYTES_MOVED
from frieze.core.errors import Cancelled, IntegrityError, UsageError

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class FileEntry:
    """One entry of a snapshot as an agent lists it."""

    path: str  # relative, '/'-separated
    type: str  # "file" | "dir" | "symlink"
    size: int = 0
    mode: int = 0o644
    mtime_ns: int = 0
    digest: str | None = None  # BLAKE3 hex of the content (files)
    target: str | None = None  # symlink target
    uid: int | None = None  # numeric owner on the host
    gid: int | None = None


class SnapshotSource(Protocol):
    """A host snapshot as the mover reads it (implemented over the agent protocol)."""

    def entries(self) -> list[FileEntry]: ...

    def read(self, path: str) -> Iterable[bytes]: ...


class RestoreSink(Protocol):
    """A restore target as the mover writes it (implemented over the agent protocol)."""

    def put(self, entry: FileEntry, chunks: Iterable[bytes] | None) -> None: ...


def check_rel(path: str) -> str:
    """A safe relative path, else IntegrityError (an agent sent something no snapshot contains)."""
    if (not path or path.startswith("/") or "\x00" in path or "\\" in path
            or any(p in ("", ".", "..") for p in path.split("/"))):
        raise IntegrityError(f"unsafe path {path!r} in a snapshot listing", path=path)
    return path


def _ensure_dirs(root: Path, rel_parent: str) -> Path:
    cur = root
    if not rel_parent:
        return cur
    for part in rel_parent.split("/"):
        cur = cur / part
        try:
            st = os.lstat(cur)
            if not stat.S_ISDIR(st.st_mode):
                _remove(cur)
                os.mkdir(cur, 0o700)
        except FileNotFoundError:
            os.mkdir(cur, 0o700)
    return cur


def _remove(p: Path) -> None:
    st = os.lstat(p)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(p)
    else:
        os.unlink(p)


Ranges = list[tuple[int, int]]


@dataclass
class IngestResult:
    files: int
    bytes_total: int
    bytes_received: int
    files_received: int
    #: files brought up to date by fetching only their changed ranges (counted in files_received too)
    files_patched: int = 0
    #: the snapshot the changed ranges are relative to (the one the mirror held before), or None
    ranges_parent: str | None = None
    #: per file path: changed ranges since ``ranges_parent`` (``[]`` unchanged, None whole), or None (not known)
    changed_ranges: dict[str, Ranges | None] | None = None
    #: the snapshot the mirror held before this ingest (None: unknown, or an earlier ingest did not finish)
    mirror_parent: str | None = None
    #: every mirror path this ingest removed, created or changed (content, owner, mode, mtime), sorted
    changed_paths: list[str] = field(default_factory=list)


class Mover:
    """Moves data between agents and repositories, on the coordinator."""

    def __init__(self, staging_dir: Path) -> None:
        self.staging_dir = staging_dir

    def mirror_dir(self, volume_id: str) -> Path:
        return self.staging_dir / "mirror" / volume_id / "data"

    def _records(self, volume_id: str) -> Path:
        return self.staging_dir / "mirror" / volume_id / "records.json"

    def _state(self, volume_id: str) -> Path:
        return self.staging_dir / "mirror" / volume_id / "state.json"

    def mirrored_snapshot(self, volume_id: str) -> str | None:
        """The host snapshot the mirror holds exactly (None: unknown, or an ingest did not finish)."""
        try:
            v = json.loads(self._state(volume_id).read_text()).get("snap_id")
        except (FileNotFoundError, ValueError, AttributeError):
            return None
        return v if isinstance(v, str) else None

    def _set_mirrored(self, volume_id: str, snap: str | None) -> None:
        p = self._state(volume_id)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps({"snap_id": snap}))
        os.replace(tmp, p)

    def _changed_ranges(self, volume_id: str,
                        source: SnapshotSource) -> tuple[str | None, dict[str, Ranges | None] | None]:
        snap = getattr(source, "snap_id", None)
        ask = getattr(source, "changed_since", None)
        parent = self.mirrored_snapshot(volume_id)
        if not isinstance(snap, str) or ask is None or parent is None or parent == snap \
                or getattr(source, "read_range", None) is None:
            return None, None
        ranges = ask(parent)
        if ranges is None:
            return None, None
        for path in ranges:
            check_rel(path)
        return parent, ranges

    def ingest(self, volume_id: str, source: SnapshotSource, *, progress: Progress | None = None,
               cancelled: Callable[[], bool] | None = None, what: str = "") -> IngestResult:
        """Bring the volume's mirror to exactly the snapshot's content, fetching only changed files."""
        root = self.mirror_dir(volume_id)
        root.mkdir(parents=True, exist_ok=True)
        rec_path = self._records(volume_id)
        try:
            records: dict[str, dict[str, Any]] = json.loads(rec_path.read_text())
        except (FileNotFoundError, ValueError):
            records = {}
        entries = source.entries()
        for e in entries:
            check_rel(e.path)
        ranges_parent, ranges = self._changed_ranges(volume_id, source)
        mirror_parent = self.mirrored_snapshot(volume_id)
        changed: set[str] = set()
        self._set_mirrored(volume_id, None)  # until this ingest is complete the mirror is no known snapshot
        npatched = 0
        wanted = {e.path: e for e in entries}
        total = sum(e.size for e in entries if e.type == "file")
        received = 0
        nrecv = 0
        # remove what is gone (deepest first), and anything whose type changed
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for fname in filenames + dirnames:
                p = Path(dirpath) / fname
                rel = p.relative_to(root).as_posix()
                have = wanted.get(rel)
                st = os.lstat(p)
                kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
                if have is None or have.type != kind:
                    _remove(p)
                    records.pop(rel, None)
                    changed.add(rel)
        done = 0
        for e in sorted(entries, key=lambda x: (x.path.count("/"), x.path)):
            if cancelled is not None and cancelled():
                raise Cancelled(f"move of {what or volume_id} was cancelled")
            parent, _, name = e.path.rpartition("/")
            pdir = _ensure_dirs(root, parent)
            dest = pdir / name
            if e.type == "dir":
                if not dest.is_dir() or dest.is_symlink():
                    if os.path.lexists(dest):
                        _remove(dest)
                    os.mkdir(dest, 0o700)
                    changed.add(e.path)
            elif e.type == "symlink":
                if e.target is None:
                    raise IntegrityError(f"symlink {e.path!r} of {what} has no target", path=e.path)
                if os.path.lexists(dest):
                    if os.path.islink(dest) and os.readlink(dest) == e.target:
                        continue
                    _remove(dest)
                os.symlink(e.target, dest)
                changed.add(e.path)
            elif e.type == "file":
                rec = records.get(e.path)
                if (rec is not None and rec.get("size") == e.size and rec.get("mtime_ns") == e.mtime_ns
                        and rec.get("digest") == e.digest and os.path.lexists(dest)):
                    done += e.size
                    continue
                kept = False
                r = ranges.get(e.path, None) if ranges is not None else None
                if rec is not None and r is not None and os.path.isfile(dest) and not os.path.islink(dest):
                    got, kept = self._patch(source, e, pdir, name, r)
                    received += got
                    npatched += kept
                if not kept:
                    received += self._fetch(source, e, pdir, name, what)
                changed.add(e.path)
                nrecv += 1
                done += e.size
                records[e.path] = {"size": e.size, "mtime_ns": e.mtime_ns, "digest": e.digest}
                if progress is not None:
                    progress(done, total)
            else:
                raise IntegrityError(f"entry {e.path!r} of {what} has unknown type {e.type!r}", path=e.path)
        # owners, modes and times last (directories after their content), each only where it differs (setting
        # one moves the ctime). The mirror keeps the host's numeric owners (when the coordinator runs as root), so
        # the repository records them and a restore gives them back.
        as_root = os.geteuid() == 0
        for e in sorted(entries, key=lambda x: -x.path.count("/")):
            p = root / e.path
            st = os.lstat(p)
            if as_root and ((e.uid is not None and e.uid != st.st_uid) or (e.gid is not None and e.gid != st.st_gid)):
                os.lchown(p, -1 if e.uid is None else e.uid, -1 if e.gid is None else e.gid)
                changed.add(e.path)
            if e.type != "symlink":
                if stat.S_IMODE(st.st_mode) != e.mode & 0o7777:
                    os.chmod(p, e.mode & 0o7777)
                    changed.add(e.path)
                if st.st_mtime_ns != e.mtime_ns:
                    os.utime(p, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
                    changed.add(e.path)
        tmp = rec_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(records))
        os.replace(tmp, rec_path)
        snap = getattr(source, "snap_id", None)
        self._set_mirrored(volume_id, snap if isinstance(snap, str) else None)
        if progress is not None:
            progress(total, total)
        return IngestResult(files=sum(1 for e in entries if e.type == "file"), bytes_total=total,
                            bytes_received=received, files_received=nrecv, files_patched=npatched,
                            ranges_parent=ranges_parent if ranges is not None else None,
                            changed_ranges=ranges, mirror_parent=mirror_parent, changed_paths=sorted(changed))

    def _patch(self, source: SnapshotSource, e: FileEntry, pdir: Path, name: str,
               ranges: Ranges) -> tuple[int, bool]:
        """Bring the mirror's copy of ``e`` up to date by fetching only ``ranges``; returns (bytes received,
        kept): not kept (the mirror's copy untouched) when the result does not match the announced digest."""
        read_range = getattr(source, "read_range", None)
        if read_range is None or e.digest is None:
            return 0, False
        dest = pdir / name
        tmp = pdir / f".frieze-patch-{name}"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        n = 0
        try:
            src_fd = os.open(dest, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                size = os.fstat(src_fd).st_size
                off = 0
                while off < size:
                    k = os.copy_file_range(src_fd, fd, size - off, off, off)
                    if k == 0:
                        break
                    off += k
            finally:
                os.close(src_fd)
            os.ftruncate(fd, e.size)
            for a, ln in ranges:
                if a >= e.size or ln <= 0:
                    continue
                pos = a
                for chunk in read_range(e.path, a, min(ln, e.size - a)):
                    os.pwrite(fd, chunk, pos)
                    pos += len(chunk)
                    n += len(chunk)
            h = blake3.blake3()
            pos = 0
            while pos < e.size:
                b = os.pread(fd, 1 << 20, pos)
                if not b:
                    break
                h.update(b)
                pos += len(b)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        BYTES_MOVED.inc(n)
        if h.hexdigest() != e.digest or pos != e.size:
            os.unlink(tmp)
            return n, False
        os.replace(tmp, dest)
        return n, True

    def _fetch(self, source: SnapshotSource, e: FileEntry, pdir: Path, name: str, what: str) -> int:
        tmp = pdir / f".frieze-in-{name}"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        h = blake3.blake3()
        n = 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in source.read(e.path):
                    h.update(chunk)
                    f.write(chunk)
                    n += len(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
        BYTES_MOVED.inc(n)
        if e.digest is None or h.hexdigest() != e.digest or n != e.size:
            os.unlink(tmp)
            raise IntegrityError(
                f"file {e.path!r} of {what} does not match the digest its host announced "
                f"({n} bytes received, {e.size} announced); nothing was stored", path=e.path, volume=what)
        dest = pdir / name
        if os.path.lexists(dest) and os.path.isdir(dest) and not os.path.islink(dest):
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return n

    # -- restore ---------------------------------------------------------------------------------------
    def restore_dir(self, op_id: str) -> Path:
        return self.staging_dir / "restore" / op_id.replace("/", "_").replace(":", "_")

    def extract_entries(self, root: Path) -> Iterator[tuple[FileEntry, Path]]:
        """Entries of a restored staging tree, parents before children, with their digests."""
        stack = [root]
        while stack:
            d = stack.pop()
            for n in sorted(os.listdir(d)):
                p = d / n
                st = os.lstat(p)
                rel = p.relative_to(root).as_posix()
                uid, gid = st.st_uid, st.st_gid
                if stat.S_ISDIR(st.st_mode):
                    yield FileEntry(rel, "dir", 0, st.st_mode & 0o7777, st.st_mtime_ns, uid=uid, gid=gid), p
                    stack.append(p)
                elif stat.S_ISLNK(st.st_mode):
                    yield FileEntry(rel, "symlink", 0, 0o777, st.st_mtime_ns, target=os.readlink(p), uid=uid,
                                    gid=gid), p
                elif stat.S_ISREG(st.st_mode):
                    h = blake3.blake3()
                    with open(p, "rb") as f:
                        while b := f.read(1 << 20):
                            h.update(b)
                    yield FileEntry(rel, "file", st.st_size, st.st_mode & 0o7777, st.st_mtime_ns,
                                    digest=h.hexdigest(), uid=uid, gid=gid), p

    def send(self, root: Path, sink: RestoreSink, *, progress: Progress | None = None,
             cancelled: Callable[[], bool] | None = None) -> tuple[int, int]:
        """Send a staged tree to a restore sink; returns (files, bytes)."""
        entries = list(self.extract_entries(root))
        total = sum(e.size for e, _ in entries)
        done = 0
        nfiles = 0
        for e, p in entries:
            if cancelled is not None and cancelled():
                raise Cancelled("restore was cancelled")
            if e.type == "file":
                sink.put(e, _read_chunks(p))
                done += e.size
                nfiles += 1
                if progress is not None:
                    progress(done, total)
            else:
                sink.put(e, None)
        return nfiles, done

    def entries_json(self, entries: list[FileEntry]) -> list[dict[str, Any]]:
        return [asdict(e) for e in entries]


def _read_chunks(p: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(p, "rb") as f:
        while b := f.read(size):
            yield b


def clean(path: Path) -> None:
    """Remove a staging directory (idempotent)."""
    if os.path.lexists(path):
        if not str(path).count("/staging/"):
            raise UsageError(f"refusing to remove {path}: not a staging directory")
        shutil.rmtree(path, ignore_errors=True)
