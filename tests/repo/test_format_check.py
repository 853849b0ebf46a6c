"""check finds damage and names the object (id and kind); read-data subsets rotate over all packs."""

from __future__ import annotations

import os

from tests.repo.test_format_support import PW, DictStore, cheap_params, simple_tree

from frieze.repo.check import check, in_subset
from frieze.repo.index import INDEX_PREFIX, IndexFile
from frieze.repo.pack import pack_key
from frieze.repo.repository import Repository
from frieze.repo.snapshots import manifest_key


def _build(n_snaps: int = 3) -> tuple[DictStore, Repository, list[str], list[list[bytes]]]:
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params(pack_size=16 * 1024))
    sids, ids_per = [], []
    for _ in range(n_snaps):
        blobs = [os.urandom(6000) for _ in range(8)]
        ids = [repo.chunk_id(b) for b in blobs]
        with repo.writer(host="h") as w:
            for i, b in zip(ids, blobs, strict=True):
                w.add_blob(i, b)
            sub = simple_tree(repo, w, ids[:4])
            w.flush()
            root = simple_tree(repo, w, ids[4:], [sub])
            sids.append(w.commit(tree=root, paths=["/"], host="h", tags=[], label=None, parent=None, stats={}))
        ids_per.append(ids)
    return st, repo, sids, ids_per


def test_clean_repository_checks_clean() -> None:
    st, _repo, _sids, _ = _build()
    rep = check(Repository.open(st, PW), read_data=True)
    assert rep.ok, rep.to_json()
    assert rep.counts["snapshots"] == 3 and rep.counts["data_blobs"] == 24 and rep.counts["trees"] == 6
    assert rep.counts["packs_read"] == rep.counts["packs"]


def test_check_finds_damage_with_ids() -> None:
    st, repo, sids, ids_per = _build()
    # 1. a bit flip inside a data blob of snapshot 0 (found by read-data only)
    e0 = repo.dedup.lookup(ids_per[0][0])
    assert e0 is not None
    k0 = pack_key(e0.pack_id)
    d = bytearray(st.blobs[k0][0])
    d[e0.offset + 50] ^= 4
    st.force(k0, bytes(d))
    # 2. a missing pack (structure)
    e1 = repo.dedup.lookup(ids_per[1][7])
    assert e1 is not None and e1.pack_id != e0.pack_id
    k1 = pack_key(e1.pack_id)
    del st.blobs[k1]
    # 3. a damaged manifest
    st.force(manifest_key(sids[2]), st.blobs[manifest_key(sids[2])][0][:-3] + b"xyz")
    # 4. a truncated index file: every pack it names stays present, but the index itself is reported
    ik = next(k for k in sorted(st.blobs) if k.startswith(INDEX_PREFIX)
              and e1.pack_id not in {p.pack_id for p in IndexFile.decode(repo.ring, k, st.blobs[k][0]).packs})
    st.force(ik, st.blobs[ik][0][:40])

    r2 = Repository.open(st, PW)
    structure = check(r2)
    assert not structure.ok
    ids = structure.ids()
    assert k1 in ids, structure.to_json()
    assert sids[2] in ids
    assert ik in ids
    kinds = {p.kind for p in structure.errors()}
    assert {"pack", "snapshot", "index"} <= kinds
    full = check(r2, read_data=True)
    assert ids_per[0][0].hex() in full.ids() or k0 in full.ids(), full.to_json()
    for p in full.errors():
        print(f"  {p.severity} {p.kind} {p.id[:24]} {p.message[:90]}")
    print(f"RESULT check-damage injected=4 errors={len(full.errors())} all_named=True")


def test_read_data_subsets_cover_all_packs() -> None:
    st, repo, _, _ = _build(2)
    packs = [k for k in st.blobs if k.startswith("data/")]
    total = 0
    for i in range(1, 4):
        rep = check(repo, read_data=True, subset=(i, 3))
        assert rep.ok
        total += rep.counts["packs_read"]
    assert total == len(packs)
    pid = os.urandom(32)
    assert sum(in_subset(pid, (i, 7)) for i in range(1, 8)) == 1
