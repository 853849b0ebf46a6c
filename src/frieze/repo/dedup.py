"""The in-memory dedup index: every known blob -> where it lives, in <= 64 bytes per blob.

Layout: a sorted numpy table (uint64 search key = first 8 bytes of the id big-endian; the other 24 bytes;
pack number, offset, length, raw length as uint32; kind<<4|flags as uint8) = 49 bytes per blob, one 32-byte
pack id per pack, plus a small dict of recent additions merged into the table every ``merge_every`` entries.
Thread-safe. A blob may be listed twice (in two packs); lookups return one of them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

# Only numpy's sort and search are used, never its BLAS: without this OpenBLAS starts a thread per CPU at
# import, which spin and take CPU from the data path (about 0.5 % of a first backup's samples).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np
import numpy.typing as npt

from frieze.repo.types import BlobKind, IndexEntry

_Pending = tuple[int, int, int, int, int]  # pack number, offset, length, raw length, kind<<4|flags


class DedupIndex:
    def __init__(self, merge_every: int = 65536) -> None:
        self._lock = threading.RLock()
        self._merge_every = merge_every
        self.pack_ids: list[bytes] = []
        self.pack_sizes: list[int] = []
        self._pack_num: dict[bytes, int] = {}
        self._pending: dict[bytes, _Pending] = {}
        self._prefix: npt.NDArray[np.uint64] = np.zeros(0, dtype=np.uint64)
        self._rest: npt.NDArray[np.uint8] = np.zeros((0, 24), dtype=np.uint8)
        self._cols: npt.NDArray[np.uint32] = np.zeros((0, 4), dtype=np.uint32)
        self._kf: npt.NDArray[np.uint8] = np.zeros(0, dtype=np.uint8)

    # -- writing ---------------------------------------------------------------------------------------------
    def add_pack(self, pack_id: bytes, size: int,
                 entries: list[tuple[bytes, int, int, int, int, int]]) -> None:
        """Register a durable pack and its blobs ``(id, kind, flags, offset, length, raw length)``."""
        with self._lock:
            num = self._pack_num.get(pack_id)
            if num is None:
                num = len(self.pack_ids)
                self.pack_ids.append(pack_id)
                self.pack_sizes.append(size)
                self._pack_num[pack_id] = num
            for bid, kind, flags, off, ln, raw in entries:
                self._pending[bid] = (num, off, ln, raw, (kind << 4) | flags)
            if len(self._pending) >= self._merge_every:
                self.compact()

    def add_arrays(self, packs: npt.NDArray[np.void], entries: npt.NDArray[np.void]) -> None:
        """Bulk-add a decoded index file (``frieze.repo.index.IndexArrays``) without a per-entry loop."""
        self.add_many([(packs, entries)])

    def add_many(self, files: list[tuple[npt.NDArray[np.void], npt.NDArray[np.void]]]) -> None:
        """Bulk-add several decoded index files with a single merge into the sorted table."""
        with self._lock:
            parts = [p for p in (self._columns(packs, entries) for packs, entries in files) if p is not None]
            if parts:
                self._merge(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                            np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]))

    def _columns(self, packs: npt.NDArray[np.void], entries: npt.NDArray[np.void]) -> tuple[
            npt.NDArray[np.uint64], npt.NDArray[np.uint8], npt.NDArray[np.uint32], npt.NDArray[np.uint8]] | None:
        nums = np.empty(len(packs), dtype=np.uint32)
        for i, p in enumerate(packs):
            pid = p["id"].tobytes()
            num = self._pack_num.get(pid)
            if num is None:
                num = len(self.pack_ids)
                self.pack_ids.append(pid)
                self.pack_sizes.append(int(p["size"]))
                self._pack_num[pid] = num
            nums[i] = num
        n = len(entries)
        if not n:
            return None
        ids = entries["id"]
        prefix = np.ascontiguousarray(ids[:, :8]).view(">u8").reshape(n).astype(np.uint64)
        cols = np.empty((n, 4), dtype=np.uint32)
        cols[:, 0] = np.repeat(nums, packs["count"].astype(np.int64))
        cols[:, 1] = entries["offset"]
        cols[:, 2] = entries["length"]
        cols[:, 3] = entries["raw"]
        kf = ((entries["kind"].astype(np.uint8) << 4) | entries["flags"]).astype(np.uint8)
        return prefix, np.ascontiguousarray(ids[:, 8:]), cols, kf

    def _merge(self, prefix: npt.NDArray[np.uint64], rest: npt.NDArray[np.uint8], cols: npt.NDArray[np.uint32],
               kf: npt.NDArray[np.uint8]) -> None:
        all_prefix = np.concatenate([self._prefix, prefix])
        order = np.argsort(all_prefix, kind="stable")
        self._prefix = all_prefix[order]
        self._rest = np.concatenate([self._rest, rest])[order]
        self._cols = np.concatenate([self._cols, cols])[order]
        self._kf = np.concatenate([self._kf, kf])[order]

    def compact(self) -> None:
        """Merge the dict of recent additions into the sorted table."""
        with self._lock:
            if not self._pending:
                return
            n = len(self._pending)
            ids = np.frombuffer(b"".join(self._pending.keys()), dtype=np.uint8).reshape(n, 32)
            prefix = ids[:, :8].copy().view(">u8").reshape(n).astype(np.uint64)
            vals = np.array(list(self._pending.values()), dtype=np.int64).reshape(n, 5)
            self._merge(prefix, ids[:, 8:], vals[:, :4].astype(np.uint32), vals[:, 4].astype(np.uint8))
            self._pending = {}

    # -- reading ---------------------------------------------------------------------------------------------
    def _find(self, blob_id: bytes) -> _Pending | None:
        p = self._pending.get(blob_id)
        if p is not None:
            return p
        if not len(self._prefix):
            return None
        key = int.from_bytes(blob_id[:8], "big")
        pre = self._prefix
        i = int(pre.searchsorted(np.uint64(key)))
        rest = blob_id[8:]
        n = len(pre)
        while i < n and int(pre[i]) == key:
            if self._rest[i].tobytes() == rest:
                num, off, ln, raw = self._cols[i].tolist()
                return num, off, ln, raw, int(self._kf[i])
            i += 1
        return None

    def _table_rows(self, ids: list[bytes]) -> npt.NDArray[np.int64]:
        """Row of each id in the sorted table (one vectorised search), or -1 where the first row with its
        prefix is not it (absent, only in the recent-additions dict, or behind a prefix collision)."""
        n = len(ids)
        if not n or not len(self._prefix):
            return np.full(n, -1, dtype=np.int64)
        arr = np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(n, 32)
        keys = arr[:, :8].copy().view(">u8").reshape(n).astype(np.uint64)
        idx = np.searchsorted(self._prefix, keys, side="left")
        cand = np.minimum(idx, len(self._prefix) - 1)
        match = (idx < len(self._prefix)) & (self._prefix[cand] == keys) & (self._rest[cand] == arr[:, 8:]).all(axis=1)
        return np.where(match, cand, -1).astype(np.int64)

    def missing(self, blob_ids: list[bytes]) -> list[bytes]:
        """The ids of ``blob_ids`` that are not in the index (one vectorised lookup for the many)."""
        with self._lock:
            rows = self._table_rows(blob_ids)
            return [blob_ids[i] for i in np.flatnonzero(rows < 0).tolist() if self._find(blob_ids[i]) is None]

    def lookup_many(self, blob_ids: list[bytes]) -> list[IndexEntry | None]:
        """:meth:`lookup` of every id, with one vectorised search of the table."""
        with self._lock:
            rows = self._table_rows(blob_ids).tolist()
            cols = self._cols
            kfs = self._kf
            out: list[IndexEntry | None] = []
            for bid, r in zip(blob_ids, rows, strict=True):
                if r >= 0 and bid not in self._pending:
                    num, off, ln, raw = cols[r].tolist()
                    kf = int(kfs[r])
                    out.append(IndexEntry(bid, self.pack_ids[num], off, ln, raw, BlobKind(kf >> 4), kf & 0xF))
                else:
                    out.append(self.lookup(bid))
            return out

    def has(self, blob_id: bytes) -> bool:
        with self._lock:
            return self._find(blob_id) is not None

    def lookup(self, blob_id: bytes) -> IndexEntry | None:
        with self._lock:
            f = self._find(blob_id)
            if f is None:
                return None
            num, off, ln, raw, kf = f
            return IndexEntry(blob_id, self.pack_ids[num], off, ln, raw, BlobKind(kf >> 4), kf & 0xF)

    def __len__(self) -> int:
        with self._lock:
            return len(self._prefix) + len(self._pending)

    def entries(self) -> Iterator[IndexEntry]:
        """Every entry (duplicates included), as a snapshot taken under the lock."""
        with self._lock:
            self.compact()
            prefix, rest, cols, kf = self._prefix, self._rest, self._cols, self._kf
            packs = list(self.pack_ids)
        for i in range(len(prefix)):
            bid = int(prefix[i]).to_bytes(8, "big") + rest[i].tobytes()
            c = cols[i]
            yield IndexEntry(bid, packs[int(c[0])], int(c[1]), int(c[2]), int(c[3]), BlobKind(int(kf[i]) >> 4),
                             int(kf[i]) & 0xF)

    def pack_size(self, pack_id: bytes) -> int | None:
        with self._lock:
            n = self._pack_num.get(pack_id)
            return None if n is None else self.pack_sizes[n]

    def nbytes(self) -> int:
        """Bytes held by the table and pack list (what the <= 64 B/chunk budget counts)."""
        with self._lock:
            tbl = self._prefix.nbytes + self._rest.nbytes + self._cols.nbytes + self._kf.nbytes
            return tbl + 32 * len(self.pack_ids) + 8 * len(self.pack_sizes)
