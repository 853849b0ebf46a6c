"""The in-memory dedup index: correctness and <= 64 bytes per chunk."""

from __future__ import annotations

import os
import tracemalloc

from frieze.repo.dedup import DedupIndex


def _fill(idx: DedupIndex, n: int, per_pack: int = 16) -> list[bytes]:
    ids = [os.urandom(32) for _ in range(n)]
    for p in range(0, n, per_pack):
        pid = os.urandom(32)
        idx.add_pack(pid, 16 << 20, [(b, 0, 1, 8 + i * 1000, 1000, 2000) for i, b in enumerate(ids[p:p + per_pack])])
    idx.compact()
    return ids


def test_index_memory_per_chunk() -> None:
    n = 200_000
    ids = [os.urandom(32) for _ in range(n)]
    tracemalloc.start()
    idx = DedupIndex()
    base = tracemalloc.get_traced_memory()[0]
    for p in range(0, n, 16):
        pid = os.urandom(32)
        idx.add_pack(pid, 16 << 20, [(b, 0, 1, 8 + i, 1000, 2000) for i, b in enumerate(ids[p:p + 16])])
    idx.compact()
    traced = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    per_table = idx.nbytes() / n
    per_traced = traced / n
    print(f"RESULT dedup-index-memory chunks={n} table_bytes_per_chunk={per_table:.1f} "
          f"traced_bytes_per_chunk={per_traced:.1f}")
    assert per_table <= 64
    # traced includes the pack-id bytes objects and dict for pack numbers (~16 chunks/pack here)
    assert per_traced <= 64


def test_lookup_correct() -> None:
    idx = DedupIndex(merge_every=1000)
    ids = _fill(idx, 5000)
    # same 8-byte prefix, different rest: must not collide
    twin = ids[0][:8] + os.urandom(24)
    assert not idx.has(twin)
    for i, b in enumerate(ids[:500]):
        e = idx.lookup(b)
        assert e is not None and e.blob_id == b and e.offset == 8 + (i % 16) * 1000 and e.raw_length == 2000
    pid = os.urandom(32)
    idx.add_pack(pid, 99, [(twin, 1, 0, 8, 10, 10)])
    e = idx.lookup(twin)
    assert e is not None and e.pack_id == pid and int(e.kind) == 1
    assert idx.lookup(ids[0]) is not None and idx.lookup(ids[0]).pack_id != pid  # type: ignore[union-attr]
    assert len(list(idx.entries())) == 5001
    assert not idx.has(os.urandom(32))


def test_bulk_load_from_index_files_matches() -> None:
    from frieze.repo.crypto import KeyRing, MasterKeys
    from frieze.repo.index import IndexFile, PackRecord, decode_arrays

    ring = KeyRing(MasterKeys.generate())
    files, expect = [], {}
    for f in range(5):
        packs = []
        for _ in range(7):
            pid = os.urandom(32)
            ents = [(os.urandom(32), i % 2, i % 2, 8 + 100 * i, 100, 300 + i) for i in range(11)]
            packs.append(PackRecord(pid, 5000, ents))
            expect.update({e[0]: (pid, e) for e in ents})
        key = f"index/{f:032x}"
        files.append(decode_arrays(ring, key, IndexFile(packs).encode(ring, key)))
    idx = DedupIndex()
    idx.add_many([(a.packs, a.entries) for a in files[:3]])
    idx.add_arrays(files[3].packs, files[3].entries)
    idx.add_arrays(files[4].packs, files[4].entries)
    assert len(idx) == len(expect) == 5 * 7 * 11
    for bid, (pid, e) in expect.items():
        got = idx.lookup(bid)
        assert got is not None and got.pack_id == pid
        assert (int(got.kind), got.flags, got.offset, got.length, got.raw_length) == e[1:]
    assert idx.pack_size(next(iter(expect.values()))[0]) == 5000
