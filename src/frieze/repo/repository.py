"""The repository façade: open/init, blob ids, reading blobs, writers, snapshots, key slots.

This is the API the data path (backup, restore, ls, diff), check, prune, copy and the CLI code against.
Contracts are in docs/design/repository-format.md; in short:

- ``read_blob`` never returns a byte that failed authentication: decrypt, decompress and recompute the id,
  else :class:`IntegrityError` naming the blob and its pack.
- A :class:`RepoWriter` holds a writer lease; ``commit`` publishes nothing unless the lease is still valid
  at every step (fencing), and the snapshot-list entry is the commit point, written last.
"""

from __future__ import annotations

import threading
import time as _time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from frieze.core.clock import iso, now
from frieze.core.errors import (
    AlreadyExists,
    Forbidden,
    FormatError,
    FriezeError,
    IntegrityError,
    InternalError,
    NotFound,
    UsageError,
    WrongPassword,
)
from frieze.core.ids import new_id
from frieze.repo.appendonly import AppendOnlyView, marker_present, write_marker
from frieze.repo.blobstore.base import BlobStore
from frieze.repo.config import CONFIG_KEY, RepoConfig, read_config_bytes
from frieze.repo.crypto import KeyRing, MasterKeys, blob_ad, compress, decompress
from frieze.repo.index import (
    INDEX_PREFIX,
    IndexArrays,
    IndexFile,
    PackRecord,
    decode_arrays,
    index_id,
    new_index_key,
)
from frieze.repo.keys import KeySlots, SlotInfo
from frieze.repo.lock import WRITER, Lease, LockRecord, read_locks
from frieze.repo.pack import DATA_PREFIX, PackWriter, pack_id_from_key, pack_key, read_trailer_ranged
from frieze.repo.snapshots import (
    SnapshotCatalog,
    encode_manifest,
    list_entry,
    manifest_key,
    new_snapshot,
)
from frieze.repo.types import FLAG_ZSTD, BlobKind, IndexEntry, KdfParams, RepoParams, Snapshot, SnapshotInfo

__all__ = ["BlobKind", "RepoParams", "RepoWriter", "Repository", "Snapshot", "SnapshotInfo"]


class Repository:
    """An open repository. Thread-safe for reads; writes go through :meth:`writer`."""

    def __init__(self, store: BlobStore, ring: KeyRing, master: MasterKeys, config: RepoConfig, slot_id: str,
                 state_dir: Path | None, lease_skew_s: float) -> None:
        self.store = store
        self._ring = ring
        self._master = master
        self.config = config
        self.slot_id = slot_id
        self.state_dir = state_dir
        self.lease_skew_s = lease_skew_s
        from frieze.repo.dedup import DedupIndex  # numpy: see open()

        self.dedup = DedupIndex()
        self.catalog = SnapshotCatalog(store, ring, config.id, state_dir)
        self._loaded_indexes: set[str] = set()
        #: index files that failed to load (key -> error); ``check`` reports them
        self.damaged_indexes: dict[str, str] = {}
        #: ids of index files some loaded index supersedes (prune wrote it); readers ignore those files
        self.superseded_indexes: set[str] = set()
        self._index_lock = threading.Lock()
        self.closed = False

    def __repr__(self) -> str:
        return f"Repository(id={self.config.id})"

    # -- opening ---------------------------------------------------------------------------------------------
    @classmethod
    def init(cls, store: BlobStore, password: str, *, params: RepoParams | None = None,
             state_dir: Path | None = None, lease_skew_s: float = 30.0, append_only: bool = False) -> Repository:
        """Create a new repository: key slot first, then the config (which makes it a repository).

        ``append_only``: also write the append-only marker, so every later client refuses deletes
        (see :mod:`frieze.repo.appendonly`)."""
        p = params or RepoParams()
        if store.stat(CONFIG_KEY) is not None:
            raise AlreadyExists("a repository already exists here (object 'config' is present)", object=CONFIG_KEY)
        src = p.copy_id_keys_from
        master = MasterKeys.generate()
        if src is not None:
            if not isinstance(src, Repository):
                raise UsageError("copy_id_keys_from must be an open Repository")
            master = MasterKeys(master.enc_master, src._master.id_master)
        ring = KeyRing(master)
        repo_id = new_id()
        cfg = RepoConfig.from_params(repo_id, iso(now()), p)
        if src is not None:
            s = src.config
            cfg = RepoConfig(id=repo_id, created=cfg.created, cdc_min=s.cdc_min, cdc_avg=s.cdc_avg,
                             cdc_max=s.cdc_max, page_size=s.page_size, block_size=s.block_size,
                             compression_level=p.compression_level, pack_size=p.pack_size)
        slot_id = KeySlots(store).add(repo_id, master, password, p.kdf)
        store.put(CONFIG_KEY, cfg.encode(ring))
        cfg = RepoConfig.decode(ring, store.get(CONFIG_KEY))
        if append_only:
            write_marker(store, ring, cfg.id)
        return cls(_honour_marker(store), ring, master, cfg, slot_id, state_dir, lease_skew_s)

    @classmethod
    def open(cls, store: BlobStore, password: str, *, state_dir: Path | None = None,
             lease_skew_s: float = 30.0) -> Repository:
        """Open: config header (FormatError if newer), key slots (WrongPassword), config body, indexes."""
        data = read_config_bytes(store)
        found: dict[str, RepoConfig | IntegrityError] = {}

        def accept(m: MasterKeys, repo_id: str) -> bool:
            try:
                cfg = RepoConfig.decode(KeyRing(m), data)
            except IntegrityError as e:  # a slot of another repository, or a damaged config
                found["err"] = e
                return False
            found["cfg"] = cfg
            return cfg.id == repo_id

        # The key-slot KDF (Argon2id, ~0.1 s) releases the GIL: it runs on a helper thread while this one
        # imports the index code (numpy) and reads index files, which need no key yet.
        box: dict[str, Any] = {}

        def unlock() -> None:
            try:
                box["ok"] = KeySlots(store).unlock(password, accept)
            except BaseException as e:  # re-raised below, in the caller's thread
                box["err"] = e

        helper = threading.Thread(target=unlock, name="frieze-unlock", daemon=True)
        helper.start()
        prefetched = _prefetch_indexes(store, helper.is_alive)
        helper.join()
        if "err" in box:
            err = found.get("err")
            if isinstance(box["err"], WrongPassword) and isinstance(err, IntegrityError) and "cfg" not in found:
                raise err from None  # the password opened a slot, but the config does not authenticate
            raise box["err"]
        master, slot_id, _repo_id = box["ok"]
        ring = KeyRing(master)
        cfg = found["cfg"]
        assert isinstance(cfg, RepoConfig)
        repo = cls(_honour_marker(store), ring, master, cfg, slot_id, state_dir, lease_skew_s)
        repo.load_index(prefetched=prefetched)
        return repo

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def append_only(self) -> bool:
        """True when the store refuses deletes: the opener asked, or the repository carries the marker."""
        return bool(getattr(self.store, "append_only", False))

    @property
    def append_only_marker(self) -> bool:
        """True when the repository itself is marked append-only (honoured whatever the opener asked)."""
        return isinstance(self.store, AppendOnlyView) or marker_present(self.store)

    def make_append_only(self) -> None:
        """Switch this repository to append-only for every client from now on (writes the marker).

        Only an operator with delete rights can switch it back (:func:`frieze.repo.appendonly.clear_append_only`
        on a store opened directly)."""
        self._check_open()
        write_marker(self.store, self._ring, self.id)
        self.store = _honour_marker(self.store)
        self.catalog.store = self.store

    @property
    def ring(self) -> KeyRing:
        return self._ring

    def same_dedup_domain(self, other: Repository) -> bool:
        """True when blob ids are the same in both repositories (shared id keys)."""
        return self._ring.id_key == other._ring.id_key

    # -- index -------------------------------------------------------------------------------------------------
    def index_keys(self) -> list[str]:
        return sorted(b.key for b in self.store.list(INDEX_PREFIX))

    def load_index(self, threads: int = 8, prefetched: dict[str, bytes] | None = None) -> int:
        """Load index files not loaded yet (fetched and decrypted in parallel); returns how many.

        ``prefetched``: bytes of some index files already read (by :meth:`open`), used instead of a get."""
        with self._index_lock:
            todo = [k for k in self.index_keys() if k not in self._loaded_indexes]
            if not todo:
                return 0
            early = dict(prefetched or {})

            def fetch(key: str) -> tuple[str, IndexArrays | None]:
                try:
                    data = early.get(key)
                    return key, decode_arrays(self._ring, key, data if data is not None else self.store.get(key))
                except NotFound:
                    return key, None  # removed by a concurrent prune after it wrote a superseding index
                except (IntegrityError, FormatError) as e:
                    # fail closed per blob, not per repository: blobs only this index knew read as missing
                    self.damaged_indexes[key] = e.message
                    return key, None

            if len(todo) == 1:
                got = [fetch(todo[0])]
            else:
                with ThreadPoolExecutor(min(threads, len(todo))) as ex:
                    got = list(ex.map(fetch, todo))
            for _, arr in got:
                if arr is not None:
                    self.superseded_indexes.update(arr.supersedes)
            # an index file another one supersedes (an interrupted prune, or an old index put back) is ignored:
            # the superseding file lists every live blob, the old one may name packs prune deleted
            files = [(arr.packs, arr.entries) for k, arr in got
                     if arr is not None and index_id(k) not in self.superseded_indexes]
            self.dedup.add_many(files)
            self.dedup.compact()
            self._loaded_indexes.update(k for k, arr in got if arr is not None)
            return len(files)

    def reload_index(self) -> None:
        """Forget the in-memory index and load every index file again (after prune)."""
        from frieze.repo.dedup import DedupIndex

        with self._index_lock:
            self.dedup = DedupIndex()
            self._loaded_indexes = set()
            self.damaged_indexes = {}
            self.superseded_indexes = set()
        self.load_index()

    def write_index(self, packs: list[PackRecord], supersedes: list[str] | None = None) -> str:
        key = new_index_key()
        self.store.put(key, IndexFile(packs, supersedes or []).encode(self._ring, key))
        with self._index_lock:
            self._loaded_indexes.add(key)
        return key

    # -- blobs -------------------------------------------------------------------------------------------------
    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        """Keyed BLAKE3 of ``data`` (32 bytes). Thread-safe."""
        return self._ring.chunk_id(data)

    def has_blob(self, blob_id: bytes) -> bool:
        return self.dedup.has(blob_id)

    def read_blob(self, blob_id: bytes) -> bytes:
        """Decrypt, decompress and verify one blob; IntegrityError naming the blob and pack on any mismatch."""
        e = self.dedup.lookup(blob_id)
        if e is None and self.load_index():
            e = self.dedup.lookup(blob_id)
        if e is None:
            if self.damaged_indexes:
                raise IntegrityError(f"blob {blob_id.hex()} is not in the repository index (damaged index "
                                     f"files: {', '.join(sorted(self.damaged_indexes))})", blob=blob_id.hex())
            raise NotFound(f"blob {blob_id.hex()} is not in the repository index", blob=blob_id.hex())
        return self.read_entry(e)

    def read_blobs(self, blob_ids: list[bytes], *, max_gap: int = 1 << 20,
                   max_span: int = 32 << 20) -> Iterator[tuple[bytes, bytes]]:
        """Yield ``(id, plaintext)`` for every id (each verified like :meth:`read_blob`), reading each pack
        with as few ranged GETs as possible: blobs of one pack closer than ``max_gap`` share one read of at
        most ``max_span`` bytes. Order: grouped by pack, by offset. Duplicate ids are yielded once."""
        entries: dict[bytes, IndexEntry] = {}
        for bid in dict.fromkeys(blob_ids):
            e = self.dedup.lookup(bid)
            if e is None:
                self.read_blob(bid)  # raises the right NotFound / IntegrityError
                continue
            entries[bid] = e
        by_pack: dict[bytes, list[IndexEntry]] = {}
        for e in entries.values():
            by_pack.setdefault(e.pack_id, []).append(e)
        for pid, ents in by_pack.items():
            ents.sort(key=lambda x: x.offset)
            i = 0
            while i < len(ents):
                j = i + 1
                start, end = ents[i].offset, ents[i].offset + ents[i].length
                while (j < len(ents) and ents[j].offset - end <= max_gap
                       and ents[j].offset + ents[j].length - start <= max_span):
                    end = max(end, ents[j].offset + ents[j].length)
                    j += 1
                try:
                    span = self.store.get(pack_key(pid), start, end - start)
                except NotFound:
                    raise IntegrityError(f"blob {ents[i].blob_id.hex()} in pack {pid.hex()}: the pack is missing",
                                         blob=ents[i].blob_id.hex(), pack=pid.hex()) from None
                mv = memoryview(span)
                for e in ents[i:j]:
                    yield e.blob_id, self.read_entry(e, bytes(mv[e.offset - start:e.offset - start + e.length]))
                i = j

    def read_entry(self, e: IndexEntry, box: bytes | None = None) -> bytes:
        """Read (or take ``box``), decrypt, decompress and verify the blob ``e`` describes."""
        blob_id = e.blob_id
        what = f"blob {blob_id.hex()} ({e.kind.name.lower()}) in pack {e.pack_id.hex()}"
        if box is None:
            try:
                box = self.store.get(pack_key(e.pack_id), e.offset, e.length)
            except NotFound:
                raise IntegrityError(f"{what}: the pack is missing", blob=blob_id.hex(),
                                     pack=e.pack_id.hex()) from None
        if len(box) != e.length:
            raise IntegrityError(f"{what}: pack is truncated ({len(box)} of {e.length} bytes)",
                                 blob=blob_id.hex(), pack=e.pack_id.hex())
        try:
            plain = self._ring.open(box, blob_ad(e.kind, e.flags, blob_id), what)
            if e.flags & FLAG_ZSTD:
                plain = decompress(plain, e.raw_length, what)
        except IntegrityError as err:
            raise IntegrityError(err.message, blob=blob_id.hex(), pack=e.pack_id.hex()) from None
        if len(plain) != e.raw_length or self._ring.chunk_id(plain) != blob_id:
            raise IntegrityError(f"{what}: content does not match its id", blob=blob_id.hex(),
                                 pack=e.pack_id.hex())
        return plain

    def blob_kind(self, blob_id: bytes) -> BlobKind | None:
        e = self.dedup.lookup(blob_id)
        return None if e is None else e.kind

    # -- writing -----------------------------------------------------------------------------------------------
    def writer(self, *, host: str, lease_s: float = 300.0, verify: bool = False) -> RepoWriter:
        """Take a writer lease (Busy while an exclusive lease is live) and return a writer.

        ``verify``: decrypt and decompress every blob right after sealing it and compare with the input
        (verify-before-upload, against compressor/cipher bugs; costs roughly a third more CPU)."""
        self._check_open()
        return RepoWriter(self, host, lease_s, verify=verify)

    # -- snapshots ---------------------------------------------------------------------------------------------
    def list_snapshots(self) -> list[SnapshotInfo]:
        """The authenticated, rollback-checked list, sorted by time."""
        return self.catalog.current().infos()

    def load_snapshot(self, snap_id_or_prefix: str) -> Snapshot:
        """``latest``, an id or a unique prefix; verified against the list. NotFound naming it."""
        sl = self.catalog.current()
        return self.catalog.load_manifest(self.catalog.find(sl, snap_id_or_prefix))

    def stats(self) -> dict[str, Any]:
        """Counts and sizes from the store listing and the in-memory index (for ``frieze repo stats``)."""
        packs = list(self.store.list(DATA_PREFIX))
        raw = stored = 0
        n = 0
        for e in self.dedup.entries():
            n += 1
            raw += e.raw_length
            stored += e.length
        try:
            n_snaps: int | None = len(self.list_snapshots())
            list_error = None
        except FriezeError as e:
            n_snaps, list_error = None, e.message
        return {"repository": self.id, "format_version": self.config.version, "packs": len(packs),
                "pack_bytes": sum(b.size for b in packs), "indexed_blobs": n, "blob_raw_bytes": raw,
                "blob_stored_bytes": stored, "index_files": len(self.index_keys()),
                "snapshots": n_snaps, "snapshot_list_error": list_error, "dedup_index_bytes": self.dedup.nbytes(),
                "damaged_index_files": sorted(self.damaged_indexes)}

    # -- key slots ---------------------------------------------------------------------------------------------
    def list_keys(self) -> list[SlotInfo]:
        return KeySlots(self.store).info()

    def add_key(self, password: str, kdf: KdfParams | None = None) -> str:
        return KeySlots(self.store).add(self.id, self._master, password, kdf or KdfParams())

    def remove_key(self, slot_id: str) -> None:
        self._refuse_append_only("removing a key slot")
        KeySlots(self.store).remove(slot_id)

    def change_password(self, new_password: str, kdf: KdfParams | None = None) -> str:
        """Rotate: add a slot for ``new_password``, then remove the slot this repository was opened with."""
        self._refuse_append_only("changing the password (it removes the old key slot)")
        new_slot = self.add_key(new_password, kdf)
        old = self.slot_id
        KeySlots(self.store).remove(old)
        self.slot_id = new_slot
        return new_slot

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def _refuse_append_only(self, what: str) -> None:
        if self.append_only:
            raise Forbidden(f"repository is append-only: {what} refused (nothing was changed)", operation=what)

    def _check_open(self) -> None:
        if self.closed:
            raise UsageError("repository is closed")

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: At most this many bytes of index files are read ahead while the key-slot KDF runs.
PREFETCH_INDEX_BYTES = 256 << 20


def _prefetch_indexes(store: BlobStore, keep_going: Callable[[], bool]) -> dict[str, bytes]:
    """Import the index code and read index files (raw, still sealed) while ``keep_going()``; best effort:
    whatever is not read here (or fails) is read by :meth:`Repository.load_index`, which reports errors."""
    out: dict[str, bytes] = {}
    try:
        import frieze.repo.dedup  # noqa: F401  (numpy, ~0.15-0.3 s)
        from frieze.repo.index import dtypes

        dtypes()
        total = 0
        for b in sorted(store.list(INDEX_PREFIX), key=lambda b: b.key):
            if not keep_going() or total + b.size > PREFETCH_INDEX_BYTES:
                break
            out[b.key] = store.get(b.key)
            total += len(out[b.key])
    except FriezeError:
        pass
    return out


def _honour_marker(store: BlobStore) -> BlobStore:
    """The store as this repository must use it: delete-refusing when the append-only marker is present."""
    if isinstance(store, AppendOnlyView) or not marker_present(store):
        return store
    return AppendOnlyView(store)


#: A dead writer's lock younger than this (seconds past its expiry) makes the next writer index its packs.
RECOVER_WINDOW_S = 6 * 3600.0


class RepoWriter:
    """Adds blobs and commits snapshots under a writer lease. Thread-safe ``has``/``add_blob``."""

    INDEX_EVERY_PACKS = 8

    def __init__(self, repo: Repository, host: str, lease_s: float, *, verify: bool = False) -> None:
        self.repo = repo
        self.verify = verify
        self.host = host
        self.lease = Lease(repo.store, repo.ring, WRITER, host, lease_s, skew_s=repo.lease_skew_s).acquire()
        self._session = repo.ring.session()
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._unindexed: list[PackRecord] = []
        #: packs durable so far, and (after a checkpoint) how many must be before an index file is written
        self._durable = 0
        self._index_at: int | None = None
        self._level = repo.config.compression_level
        self.blobs_added = 0
        self.bytes_added = 0
        self.stored_bytes = 0
        self.index_keys: list[str] = []
        self.closed = False
        repo.load_index()  # see what other writers committed since open
        #: packs of dead writers this writer indexed at start (see :meth:`_recover_dead_writers`)
        self.recovered_packs = 0
        try:
            self.recovered_packs = self._recover_dead_writers()
        except BaseException:
            self.lease.release()
            raise
        self._pw = PackWriter(repo.store, repo.ring, repo.config.pack_size, self._on_durable)

    def _dead_writer_locks(self) -> list[LockRecord]:
        wall = _time.time()
        return [r for r in read_locks(self.repo.store, self.repo.ring)
                if r.readable and r.kind == WRITER and r.lease != self.lease.id
                and wall - r.expires.timestamp() < RECOVER_WINDOW_S
                and (r.stale_local() or not r.live(wall, self.repo.lease_skew_s))]

    def _recover_dead_writers(self) -> int:
        """Index the durable packs a writer killed before its index write left behind, so this run reuses them.

        Runs only when a writer lock of a dead holder is present (its process is gone on this machine, or its
        lease expired less than :data:`RECOVER_WINDOW_S` ago): then every pack in no loaded index is read
        (header and authenticated trailer, by ranged reads) and one index file naming them is written under
        this writer's lease before any blob is deduplicated against them (invariant D holds: the blobs are
        indexed first). Afterwards the dead holders' lock objects on this machine are deleted (best effort),
        so the next run does not look again. Returns how many packs were indexed."""
        dead = self._dead_writer_locks()
        if not dead:
            return 0
        repo = self.repo
        known = set(repo.dedup.pack_ids)
        recs: list[PackRecord] = []
        for b in repo.store.list(DATA_PREFIX):
            pid = pack_id_from_key(b.key)
            if pid is None or pid in known or pack_key(pid) != b.key:
                continue
            try:
                entries = read_trailer_ranged(repo.store, repo.ring, b.key, b.size)
            except (IntegrityError, FormatError, NotFound):
                continue  # damaged or vanished: check reports it, prune removes it
            if entries:
                recs.append(PackRecord(pid, b.size, entries))
        if recs:
            self.lease.ensure_valid("indexing the packs of a dead writer")
            self.index_keys.append(repo.write_index(recs))
            for rec in recs:
                repo.dedup.add_pack(rec.pack_id, rec.size, rec.entries)
        for r in dead:
            if r.stale_local():
                try:
                    repo.store.delete(r.key)
                except FriezeError:
                    pass  # append-only: it expires on its own
        return len(recs)

    # -- blobs -------------------------------------------------------------------------------------------------
    def has(self, blob_id: bytes) -> bool:
        with self._lock:
            if blob_id in self._pending:
                return True
        return self.repo.dedup.has(blob_id)

    def add_blob(self, blob_id: bytes, data: bytes | bytearray | memoryview, *,
                 kind: BlobKind = BlobKind.DATA) -> bool:
        """Store ``data`` under ``blob_id`` (= ``repo.chunk_id(data)``) unless known; True if new.

        Compression and encryption run in the caller's thread; the pack append takes a short lock.
        """
        if self.closed:
            raise UsageError("writer is closed")
        with self._lock:
            if blob_id in self._pending:
                return False
            if self.repo.dedup.has(blob_id):
                return False
            self._pending.add(blob_id)
        try:
            raw = len(data)
            z = compress(data, self._level)
            if len(z) < raw:
                payload: bytes | bytearray | memoryview = z
                flags = FLAG_ZSTD
            else:
                payload, flags = data, 0
            ad = blob_ad(kind, flags, blob_id)
            prefix, ct = self._session.seal_parts(payload, ad)  # type: ignore[arg-type]
            if self.verify:
                self._verify(blob_id, data, raw, flags, prefix + ct, ad)
            self._pw.add(blob_id, int(kind), flags, raw, prefix, ct)
        except BaseException:
            with self._lock:
                self._pending.discard(blob_id)
            raise
        with self._lock:
            self.blobs_added += 1
            self.bytes_added += raw
            self.stored_bytes += len(prefix) + len(ct)
        return True

    def _verify(self, blob_id: bytes, data: bytes | bytearray | memoryview, raw: int, flags: int, box: bytes,
                ad: bytes) -> None:
        what = f"blob {blob_id.hex()} (verify before upload)"
        plain = self.repo.ring.open(box, ad, what)
        if flags & FLAG_ZSTD:
            plain = decompress(plain, raw, what)
        if plain != data:
            raise InternalError(f"{what}: sealed blob does not round-trip (compressor or cipher fault); "
                                f"nothing was stored", blob=blob_id.hex())

    def _on_durable(self, rec: PackRecord) -> None:
        """Writer thread: a pack is durable; write an index file every few packs.

        Its blobs stay in this writer's ``_pending`` (not in the shared in-memory index) until an index file
        names them: another writer of the same process must never dedup against a blob no index lists."""
        with self._lock:
            self._unindexed.append(rec)
            self._durable += 1
            due = len(self._unindexed) >= self.INDEX_EVERY_PACKS
            if self._index_at is not None and self._durable >= self._index_at:
                due, self._index_at = True, None
        if due:
            self._write_index()

    def _write_index(self) -> None:
        with self._lock:
            recs, self._unindexed = self._unindexed, []
        if not recs:
            return
        self.lease.ensure_valid("writing an index file")
        try:
            self.index_keys.append(self.repo.write_index(recs))
        except BaseException:
            with self._lock:
                self._unindexed = recs + self._unindexed
            raise
        for rec in recs:
            self.repo.dedup.add_pack(rec.pack_id, rec.size, rec.entries)
        with self._lock:
            for rec in recs:
                for e in rec.entries:
                    self._pending.discard(e[0])

    # -- commit ------------------------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Start a checkpoint without waiting: the open pack goes to the put threads, and an index file
        naming every durable unindexed pack is written (on a put thread) as soon as that many packs are
        durable. A storage error surfaces at the next ``add_blob``, ``flush`` or ``commit``."""
        self.lease.ensure_valid("a checkpoint")
        handed = self._pw.seal()
        with self._lock:
            if self._durable >= handed:
                due = bool(self._unindexed)
            else:
                due, self._index_at = False, handed
        if due:
            self._write_index()

    def flush(self) -> None:
        """Make every blob added so far durable and indexed (a checkpoint; not a commit)."""
        self.lease.ensure_valid("flushing packs")
        self._pw.flush()
        self._write_index()

    def commit(self, *, tree: bytes, paths: list[str], host: str, tags: list[str], label: Any,
               parent: str | None, stats: dict[str, Any], time: datetime | None = None) -> str:
        """Flush packs, write the index, then the manifest, then the snapshot-list entry (the commit point)."""
        if self.closed:
            raise UsageError("writer is closed")
        self.flush()
        if not self.has(tree):
            raise UsageError(f"tree blob {tree.hex()} is not in the repository; add it before commit",
                             tree=tree.hex())
        cat = self.repo.catalog
        seq = cat.current().seq + 1
        snap = new_snapshot(new_id(), seq, time or now(), host, paths, tags, parent, tree, label, dict(stats))
        mdata = encode_manifest(self.repo.ring, snap, {"writer_lease": self.lease.id})
        self.lease.ensure_valid("writing the snapshot manifest")
        self.repo.store.put(manifest_key(snap.id), mdata)
        entry = list_entry(snap, mdata)
        # the list records every index file now present (all durable; no prune can run under our lease), so
        # check can name an index file that later goes missing
        present = {index_id(k) for k in self.repo.index_keys()}
        cat.commit(lambda cur: [*cur.snapshots, entry],
                   before_put=lambda: self.lease.ensure_valid("the commit point (snapshot list)"),
                   indexes=lambda cur: sorted(set(cur.indexes or ()) | present))
        return snap.id

    def abort(self) -> None:
        """Stop: nothing is committed. Durable packs are indexed (best effort) so a re-run reuses them."""
        if self.closed:
            return
        try:
            if self.lease.valid():
                self._pw.flush()
                self._write_index()
        except Exception:
            pass
        self._close()

    def close(self) -> None:
        """Checkpoint what was added (so a later run reuses it) and release the lease."""
        if self.closed:
            return
        try:
            if self.lease.valid():
                self.flush()
        finally:
            self._close()

    def _close(self) -> None:
        self.closed = True
        self._pw.close()
        self.lease.release()

    def __enter__(self) -> RepoWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.close()
        else:
            self.abort()
