"""Repository round trips through the façade (memory and local stores)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.repo.test_format_support import PW, DictStore, cheap_params, local_store, memory_store, simple_tree

from frieze.core.errors import AlreadyExists, IntegrityError, NotFound
from frieze.repo.pack import pack_key
from frieze.repo.repository import Repository
from frieze.repo.types import BlobKind


def _roundtrip(store: object, tmp_path: Path) -> None:
    repo = Repository.init(store, PW, params=cheap_params())  # type: ignore[arg-type]
    blobs = [os.urandom(50_000) for _ in range(20)] + [b"a" * 100_000, b""]
    ids = [repo.chunk_id(b) for b in blobs]
    with repo.writer(host="h1") as w:
        with ThreadPoolExecutor(4) as ex:
            new = list(ex.map(lambda p: w.add_blob(p[0], p[1]), zip(ids, blobs, strict=True)))
        assert all(new)
        assert not w.add_blob(ids[0], blobs[0])  # dedup
        tid = simple_tree(repo, w, ids)
        sid = w.commit(tree=tid, paths=["/x"], host="h1", tags=["t"], label={"consistency": "crash"},
                       parent=None, stats={"files": 22})
    repo.close()
    r2 = Repository.open(store, PW, state_dir=tmp_path / "state")  # type: ignore[arg-type]
    for bid, data in zip(ids, blobs, strict=True):
        assert r2.read_blob(bid) == data
    assert r2.has_blob(tid) and r2.blob_kind(tid) == BlobKind.TREE
    snaps = r2.list_snapshots()
    assert [s.id for s in snaps] == [sid]
    s = r2.load_snapshot("latest")
    assert s.id == sid and s.tree == tid and s.label == {"consistency": "crash"} and s.tags == ["t"]
    assert r2.load_snapshot(sid[:6]).id == sid
    with pytest.raises(NotFound, match="nope"):
        r2.load_snapshot("nope")
    # the compressible blob was stored compressed
    assert r2.dedup.lookup(ids[20]).compressed  # type: ignore[union-attr]
    assert not r2.dedup.lookup(ids[0]).compressed  # type: ignore[union-attr]


def test_roundtrip_memory_and_local(tmp_path: Path) -> None:
    _roundtrip(memory_store(), tmp_path)
    _roundtrip(local_store(tmp_path / "repo"), tmp_path / "l")


def test_init_twice_refused() -> None:
    st = DictStore()
    Repository.init(st, PW, params=cheap_params())
    before = dict(st.blobs)
    with pytest.raises(AlreadyExists, match="config"):
        Repository.init(st, PW, params=cheap_params())
    assert st.blobs == before


def test_read_blob_detects_damage() -> None:
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params())
    a, b = os.urandom(3000), os.urandom(3000)
    ia, ib = repo.chunk_id(a), repo.chunk_id(b)
    with repo.writer(host="h") as w:
        w.add_blob(ia, a)
        w.add_blob(ib, b)
        w.flush()
    ea, eb = repo.dedup.lookup(ia), repo.dedup.lookup(ib)
    assert ea and eb and ea.pack_id == eb.pack_id
    key = pack_key(ea.pack_id)
    raw = bytearray(st.blobs[key][0])
    # swap the two blobs' boxes inside the pack (same length): each read must fail closed naming id + pack
    sa, sb = bytes(raw[ea.offset:ea.offset + ea.length]), bytes(raw[eb.offset:eb.offset + eb.length])
    raw[ea.offset:ea.offset + ea.length] = sb
    raw[eb.offset:eb.offset + eb.length] = sa
    st.force(key, bytes(raw))
    with pytest.raises(IntegrityError) as ei:
        repo.read_blob(ia)
    assert ia.hex() in str(ei.value) and ea.pack_id.hex() in str(ei.value)
    # a bit flip
    raw[ea.offset + 40] ^= 1
    st.force(key, bytes(raw))
    with pytest.raises(IntegrityError, match=ib.hex()):
        repo.read_blob(ib)
    # a missing pack
    del st.blobs[key]
    with pytest.raises(IntegrityError, match="missing"):
        repo.read_blob(ia)


def test_big_blob_and_many_packs() -> None:
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params(pack_size=64 * 1024))
    big = os.urandom(300_000)  # larger than a pack
    small = [os.urandom(20_000) for _ in range(30)]
    with repo.writer(host="h") as w:
        for d in [big, *small]:
            w.add_blob(repo.chunk_id(d), d)
        w.flush()
        assert w._pw.packs_written >= 5
    r2 = Repository.open(st, PW)
    for d in [big, *small]:
        assert r2.read_blob(r2.chunk_id(d)) == d


def test_unindexed_blobs_are_not_shared_between_writers() -> None:
    """A writer of the same process never dedups against a blob that no index file lists yet."""
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params(pack_size=4096))
    d = os.urandom(5000)
    bid = repo.chunk_id(d)
    w1 = repo.writer(host="a")
    w1.add_blob(bid, d)
    w1._pw.flush()  # the pack is durable but no index names it yet
    assert w1.has(bid)
    with repo.writer(host="b") as w2:
        assert not w2.has(bid)
        assert w2.add_blob(bid, d)  # stored again: w1 may still abort
    w1.abort()
    assert Repository.open(st, PW).read_blob(bid) == d


def test_verify_before_upload_catches_a_bad_compressor(monkeypatch: pytest.MonkeyPatch) -> None:
    from frieze.core.errors import InternalError
    from frieze.repo import repository as R

    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params())
    good = b"x" * 10_000
    with repo.writer(host="h", verify=True) as w:
        assert w.add_blob(repo.chunk_id(good), good)
    real = R.compress
    monkeypatch.setattr(R, "compress", lambda d, lvl: real(bytes(d)[:-1] + b"y", lvl))  # a corrupting codec
    bad = b"z" * 10_000
    with repo.writer(host="h", verify=True) as w:
        with pytest.raises(InternalError, match="round-trip"):
            w.add_blob(repo.chunk_id(bad), bad)
        assert not w.has(repo.chunk_id(bad))


def test_read_blobs_batches_per_pack() -> None:
    class Counting(DictStore):
        gets = 0

        def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
            if key.startswith("data/"):
                Counting.gets += 1
            return super().get(key, offset, length)

    st = Counting()
    repo = Repository.init(st, PW, params=cheap_params(pack_size=64 * 1024))
    blobs = [os.urandom(5000) for _ in range(40)]
    ids = [repo.chunk_id(b) for b in blobs]
    with repo.writer(host="h") as w:
        for i, b in zip(ids, blobs, strict=True):
            w.add_blob(i, b)
    packs = {repo.dedup.lookup(i).pack_id for i in ids}  # type: ignore[union-attr]
    Counting.gets = 0
    got = dict(repo.read_blobs([*ids, ids[0]]))
    assert got == dict(zip(ids, blobs, strict=True))
    assert Counting.gets == len(packs) < len(ids)
    # damage is still caught per blob
    e = repo.dedup.lookup(ids[3])
    assert e is not None
    raw = bytearray(st.blobs[pack_key(e.pack_id)][0])
    raw[e.offset + 30] ^= 1
    st.force(pack_key(e.pack_id), bytes(raw))
    with pytest.raises(IntegrityError, match=ids[3].hex()):
        dict(repo.read_blobs(ids))
