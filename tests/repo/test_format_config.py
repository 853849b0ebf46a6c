"""Config: damaged, newer version, swapped — each a clear error naming the config; nothing changes."""

from __future__ import annotations

import struct

import pytest
from tests.repo.test_format_support import PW, DictStore, cheap_params

from frieze.core.errors import FormatError, IntegrityError
from frieze.repo.repository import Repository


def _repo() -> DictStore:
    st = DictStore()
    r = Repository.init(st, PW, params=cheap_params(cdc_avg=32768))
    assert r.config.cdc_avg == 32768 and r.config.chunker_seed > 0
    return st


def _snapshot(st: DictStore) -> dict[str, bytes]:
    return {k: v[0] for k, v in st.blobs.items()}


def test_config_roundtrip_params() -> None:
    st = _repo()
    r = Repository.open(st, PW)
    assert (r.config.cdc_min, r.config.cdc_avg, r.config.page_size) == (4096, 32768, 8192)
    assert "chunker_seed" not in repr(r.config)


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "magic", "empty"])
def test_damaged_config(damage: str) -> None:
    st = _repo()
    cfg = bytearray(st.blobs["config"][0])
    if damage == "bitflip":
        cfg[len(cfg) // 2] ^= 0x10
    elif damage == "truncate":
        cfg = cfg[:30]
    elif damage == "magic":
        cfg[0:4] = b"XXXX"
    else:
        cfg = bytearray()
    st.force("config", bytes(cfg))
    before = _snapshot(st)
    with pytest.raises((FormatError, IntegrityError), match="config") as ei:
        Repository.open(st, PW)
    assert ei.value.exit_code != 0
    assert _snapshot(st) == before


def test_newer_version() -> None:
    st = _repo()
    cfg = bytearray(st.blobs["config"][0])
    struct.pack_into("<H", cfg, 4, 2)
    st.force("config", bytes(cfg))
    before = _snapshot(st)
    with pytest.raises(FormatError, match="newer") as ei:
        Repository.open(st, PW)
    assert ei.value.exit_code != 0
    assert _snapshot(st) == before


def test_config_from_other_repo_detected() -> None:
    a, b = _repo(), _repo()
    a.force("config", b.blobs["config"][0])
    with pytest.raises(IntegrityError, match="config"):
        Repository.open(a, PW)


def test_newer_version_of_other_objects_is_a_format_error() -> None:
    import os

    from tests.repo.test_format_support import simple_tree

    from frieze.repo.check import check
    from frieze.repo.snapshots import list_key

    st = _repo()
    repo = Repository.open(st, PW)
    d = os.urandom(100)
    with repo.writer(host="h") as w:
        w.add_blob(repo.chunk_id(d), d)
        t = simple_tree(repo, w, [repo.chunk_id(d)])
        w.commit(tree=t, paths=["/"], host="h", tags=[], label=None, parent=None, stats={})
    b = bytearray(st.blobs[list_key(1)][0])
    struct.pack_into("<H", b, 4, 9)
    st.force(list_key(1), bytes(b))
    with pytest.raises(FormatError, match="newer"):
        repo.list_snapshots()
    idx_key = next(k for k in st.blobs if k.startswith("index/"))
    b = bytearray(st.blobs[idx_key][0])
    struct.pack_into("<H", b, 4, 9)
    st.force(idx_key, bytes(b))
    r2 = Repository.open(st, PW)  # still opens; the index is reported, its blobs fail closed
    assert idx_key in r2.damaged_indexes and "newer" in r2.damaged_indexes[idx_key]
    rep = check(r2)
    assert idx_key in rep.ids() and list_key(1) in rep.ids()
    assert r2.stats()["damaged_index_files"] == [idx_key]
