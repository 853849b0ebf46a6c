"""Sealed boxes: nonce uniqueness, associated-data binding, compression skip."""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest
from tests.repo.test_format_support import PW, DictStore, cheap_params

from frieze.core.errors import IntegrityError
from frieze.repo.crypto import NONCE_LEN, SALT_LEN, KeyRing, MasterKeys, blob_ad
from frieze.repo.pack import parse_trailer
from frieze.repo.repository import Repository
from frieze.repo.types import BlobKind


def test_nonces_unique_across_threads() -> None:
    """Every (subkey salt, nonce) pair of every box in every pack of two writer sessions is distinct."""
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params(pack_size=32 * 1024))
    seen: set[bytes] = set()
    total = 0
    for _ in range(2):
        blobs = [os.urandom(900) for _ in range(600)]
        with repo.writer(host="h") as w, ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda b: w.add_blob(repo.chunk_id(b), b), blobs))
    for key, (data, _) in st.blobs.items():
        if not key.startswith("data/"):
            continue
        for bid, _k, _f, off, _ln, _raw in parse_trailer(repo.ring, data, key):
            pair = data[off:off + SALT_LEN + NONCE_LEN]
            assert pair not in seen, f"nonce reuse at blob {bid.hex()}"
            seen.add(pair)
            total += 1
        # the trailer box too
        (tlen,) = struct.unpack_from("<I", data, len(data) - 4)
        tstart = len(data) - 4 - tlen
        pair = data[tstart:tstart + SALT_LEN + NONCE_LEN]
        assert pair not in seen
        seen.add(pair)
    assert total == 1200
    print(f"RESULT nonce-uniqueness boxes={total} pairs_unique={len(seen)}")


def test_ad_binds_kind_and_id() -> None:
    ring = KeyRing(MasterKeys.generate())
    s = ring.session()
    bid = os.urandom(32)
    box = s.seal(b"hello", blob_ad(BlobKind.DATA, 0, bid))
    assert ring.open(box, blob_ad(BlobKind.DATA, 0, bid), "x") == b"hello"
    with pytest.raises(IntegrityError, match="tree-pose"):
        ring.open(box, blob_ad(BlobKind.TREE, 0, bid), "tree-pose")
    with pytest.raises(IntegrityError):
        ring.open(box, blob_ad(BlobKind.DATA, 0, os.urandom(32)), "other id")
    with pytest.raises(IntegrityError):
        ring.open(box, blob_ad(BlobKind.DATA, 1, bid), "flag flipped")
    other = KeyRing(MasterKeys.generate())
    with pytest.raises(IntegrityError):
        other.open(box, blob_ad(BlobKind.DATA, 0, bid), "other key")


def test_chunk_id_is_keyed() -> None:
    a, b = KeyRing(MasterKeys.generate()), KeyRing(MasterKeys.generate())
    assert a.chunk_id(b"x") != b.chunk_id(b"x")
    m = MasterKeys.generate()
    assert KeyRing(m).chunk_id(b"x") == KeyRing(m).chunk_id(b"x")
    assert 0 < KeyRing(m).chunker_seed < 2**63
    assert "secret" in repr(m) and m.enc_master.hex() not in repr(m)
