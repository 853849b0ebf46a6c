"""Packs: many encrypted blobs in one write-once object, assembled in reused buffers and put by a thread.

Layout: ``header(FZPK) | blob box ... | trailer box | u32 trailer length``; the trailer lists
``(blob id, kind, flags, offset, length, raw length)`` per blob (AD = header + ``"trailer"``). The pack id is
the unkeyed BLAKE3 of the pack bytes; its key is ``data/<2 hex>/<64 hex>``.

:class:`PackWriter` contract: :meth:`PackWriter.add` is thread-safe and never blocks on storage except for
back-pressure (at most ``max_in_flight`` full packs waiting; ``threads`` puts run in parallel so
that fsyncs overlap); :meth:`PackWriter.flush` returns once every
pack handed over is durable and ``on_durable`` has been called for it, or raises the first storage error;
:meth:`PackWriter.seal` hands the open pack over without waiting.
"""

from __future__ import annotations

import queue
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from frieze.core.errors import AlreadyExists, FriezeError, IntegrityError, StorageError
from frieze.repo.blobstore.base import BlobStore
from frieze.repo.crypto import HEADER_LEN, MAGIC_PACK, KeyRing, check_header, header, pack_hash
from frieze.repo.index import ENTRY, PackRecord

DATA_PREFIX = "data/"
Entry = tuple[bytes, int, int, int, int, int]


def pack_key(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"{DATA_PREFIX}{h[:2]}/{h}"


def pack_id_from_key(key: str) -> bytes | None:
    name = key.rsplit("/", 1)[-1]
    try:
        b = bytes.fromhex(name)
    except ValueError:
        return None
    return b if len(b) == 32 else None


def trailer_ad() -> bytes:
    return header(MAGIC_PACK) + b"trailer"


def parse_trailer(ring: KeyRing, data: bytes | memoryview, what: str) -> list[Entry]:
    """Authenticate and parse a whole pack's trailer; IntegrityError naming the pack if damaged."""
    check_header(data, MAGIC_PACK, what)
    if len(data) < HEADER_LEN + 4:
        raise IntegrityError(f"{what}: truncated pack", object=what)
    (tlen,) = struct.unpack_from("<I", data, len(data) - 4)
    start = len(data) - 4 - tlen
    if start < HEADER_LEN:
        raise IntegrityError(f"{what}: bad trailer length {tlen}", object=what)
    body = ring.open(memoryview(data)[start:len(data) - 4], trailer_ad(), f"{what} (trailer)")
    return _trailer_entries(body, start, what)


def _trailer_entries(body: bytes, start: int, what: str) -> list[Entry]:
    try:
        (n,) = struct.unpack_from("<I", body, 0)
        ents: list[Entry] = [ENTRY.unpack_from(body, 4 + ENTRY.size * i) for i in range(n)]
    except struct.error as e:
        raise IntegrityError(f"{what}: malformed trailer ({e})", object=what) from None
    for ent in ents:
        if ent[3] < HEADER_LEN or ent[3] + ent[4] > start or ent[1] > 1:
            raise IntegrityError(f"{what}: trailer entry {ent[0].hex()} lies outside the pack's blobs",
                                 object=what)
    return ents


def read_trailer_ranged(store: BlobStore, ring: KeyRing, key: str, size: int) -> list[Entry]:
    """Authenticate and parse a pack's trailer with three ranged reads (header, length, trailer box) instead
    of reading the whole pack; IntegrityError/FormatError naming the pack if damaged."""
    if size < HEADER_LEN + 4:
        raise IntegrityError(f"{key}: truncated pack", object=key)
    check_header(store.get(key, 0, HEADER_LEN), MAGIC_PACK, key)
    tail = store.get(key, size - 4, 4)
    if len(tail) != 4:
        raise IntegrityError(f"{key}: truncated pack", object=key)
    (tlen,) = struct.unpack("<I", tail)
    start = size - 4 - tlen
    if start < HEADER_LEN:
        raise IntegrityError(f"{key}: bad trailer length {tlen}", object=key)
    body = ring.open(store.get(key, start, tlen), trailer_ad(), f"{key} (trailer)")
    return _trailer_entries(body, start, key)


@dataclass
class _Open:
    buf: bytearray
    pos: int
    entries: list[Entry]


class PackWriter:
    """Assembles packs from already-encrypted blob boxes and puts them on a background thread."""

    def __init__(self, store: BlobStore, ring: KeyRing, target_size: int,
                 on_durable: Callable[[PackRecord], None], max_in_flight: int = 3,
                 buffer_size: int | None = None, threads: int = 2) -> None:
        self.store = store
        self.ring = ring
        self.target = target_size
        self.on_durable = on_durable
        self._bufsize = buffer_size or (target_size + (1 << 20))
        self._lock = threading.Lock()
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._nbufs = 0
        self._max_bufs = max_in_flight + 1
        self._q: queue.Queue[tuple[bytearray, int, list[Entry]] | None] = queue.Queue()
        self._outstanding = 0
        #: packs handed to the put threads so far
        self.packs_handed = 0
        self._idle = threading.Condition(self._lock)
        self._error: FriezeError | None = None
        self._open: _Open | None = None
        self._threads = [threading.Thread(target=self._run, name=f"frieze-pack-writer-{i}", daemon=True)
                         for i in range(max(1, threads))]
        for t in self._threads:
            t.start()
        self._stats_lock = threading.Lock()
        self.packs_written = 0
        self.bytes_written = 0

    def _get_buf(self) -> bytearray:
        with self._lock:
            if self._nbufs < self._max_bufs and self._free.empty():
                self._nbufs += 1
                return bytearray(self._bufsize)
        return self._free.get()  # back-pressure: wait for the writer thread to free one

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def add(self, blob_id: bytes, kind: int, flags: int, raw_length: int, prefix: bytes, ct: bytes) -> None:
        """Append one encrypted blob (``prefix`` = salt+nonce, ``ct`` = ciphertext+tag)."""
        self._raise_error()
        n = len(prefix) + len(ct)
        handoff = None
        fresh: _Open | None = None
        while True:
            with self._lock:
                op = self._open
                if op is None and fresh is not None:
                    op = self._open = fresh
                    fresh = None
                if op is not None:
                    o = op.pos
                    op.buf[o:o + len(prefix)] = prefix
                    op.buf[o + len(prefix):o + n] = ct
                    op.pos = o + n
                    op.entries.append((blob_id, kind, flags, o, n, raw_length))
                    if op.pos >= self.target:
                        handoff = op
                        self._open = None
                        self._outstanding += 1
                        self.packs_handed += 1
                    break
            buf = self._get_buf()  # outside the lock: may wait for the writer thread (back-pressure)
            buf[0:HEADER_LEN] = header(MAGIC_PACK)
            fresh = _Open(buf, HEADER_LEN, [])
        if fresh is not None:
            self._free.put(fresh.buf)
        if handoff is not None:
            self._q.put((handoff.buf, handoff.pos, handoff.entries))

    def pending_bytes(self) -> int:
        with self._lock:
            return 0 if self._open is None else self._open.pos

    def seal(self) -> int:
        """Hand over the open pack (if it holds a blob) without waiting; return how many packs have been
        handed over so far (the sealed one included)."""
        self._raise_error()
        with self._lock:
            op = self._open
            self._open = None
            if op is not None and op.entries:
                self._outstanding += 1
                self.packs_handed += 1
            elif op is not None:
                self._free.put(op.buf)
                op = None
            handed = self.packs_handed
        if op is not None:
            self._q.put((op.buf, op.pos, op.entries))
        return handed

    def flush(self) -> None:
        """Hand over the open pack and wait until every pack is durable (or raise the first error)."""
        self.seal()
        with self._idle:
            while self._outstanding and self._error is None:
                self._idle.wait(0.5)
        self._raise_error()

    def _finish(self, buf: bytearray, pos: int, entries: list[Entry]) -> memoryview:
        body = struct.pack("<I", len(entries)) + b"".join(ENTRY.pack(*e) for e in entries)
        tr = self.ring.seal(body, trailer_ad())
        end = pos + len(tr) + 4
        buf[pos:end] = tr + struct.pack("<I", len(tr))
        return memoryview(buf)[:end]

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            buf, pos, entries = item
            try:
                if self._error is None:
                    mv = self._finish(buf, pos, entries)
                    pid = pack_hash(mv)
                    try:
                        self.store.put(pack_key(pid), mv)
                    except AlreadyExists:
                        pass  # same bytes, same id: a pack identical to this one is already durable
                    size = len(mv)
                    mv.release()
                    self.on_durable(PackRecord(pid, size, entries))
                    with self._stats_lock:
                        self.packs_written += 1
                        self.bytes_written += size
            except FriezeError as e:
                self._error = e
            except Exception as e:  # a bug or an untranslated library error: surface it, never swallow
                self._error = StorageError(f"pack write failed: {type(e).__name__}: {e}")
            finally:
                self._free.put(buf)
                with self._idle:
                    self._outstanding -= 1
                    self._idle.notify_all()

    def close(self) -> None:
        """Stop the thread (after :meth:`flush` for a clean close; pending packs are dropped otherwise)."""
        with self._lock:
            self._open = None
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            t.join(timeout=60)
