"""The repository format on S3 (a real S3-speaking server, moto): round trip, concurrent commits through
conditional creates, forget + prune, check --read-data."""

from __future__ import annotations

import os
import threading

import pytest
from tests.repo.test_format_support import PW, cheap_params, simple_tree
from tests.support.s3 import S3Server, s3_server  # noqa: F401

from frieze.repo.blobstore.s3 import S3BlobStore
from frieze.repo.check import check
from frieze.repo.prune import PruneOptions, forget, prune
from frieze.repo.repository import Repository


def _store(server: S3Server, bucket: str) -> S3BlobStore:
    return S3BlobStore(bucket, prefix="repo", endpoint_url=server.endpoint, region=server.region,
                           credentials=server.credentials)


@pytest.mark.timeout(300)
def test_repository_on_s3(s3_server: S3Server) -> None:  # noqa: F811
    bucket = s3_server.make_bucket()
    Repository.init(_store(s3_server, bucket), PW, params=cheap_params(pack_size=32 * 1024),
                           lease_skew_s=0)
    sets: dict[str, list[bytes]] = {}
    errs: list[BaseException] = []

    def one(i: int) -> None:
        try:
            r = Repository.open(_store(s3_server, bucket), PW, lease_skew_s=0)
            blobs = [os.urandom(9000) for _ in range(5)]
            with r.writer(host=f"h{i}") as w:
                ids = [r.chunk_id(b) for b in blobs]
                for bid, b in zip(ids, blobs, strict=True):
                    w.add_blob(bid, b)
                t = simple_tree(r, w, ids)
                sets[w.commit(tree=t, paths=["/"], host=f"h{i}", tags=[], label=None, parent=None,
                              stats={})] = blobs
        except BaseException as e:  # pragma: no cover - reported below
            errs.append(e)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs, errs
    r = Repository.open(_store(s3_server, bucket), PW, lease_skew_s=0)
    assert {s.id for s in r.list_snapshots()} == set(sets)
    gone = sorted(sets)[:2]
    forget(r, ids=gone)
    rep = prune(r, PruneOptions(delete_margin_s=0, unindexed_min_age_s=0))
    assert rep.packs_deleted > 0
    r = Repository.open(_store(s3_server, bucket), PW)
    for sid, blobs in sets.items():
        if sid in gone:
            assert not any(r.has_blob(r.chunk_id(b)) for b in blobs)
        else:
            assert [r.read_blob(r.chunk_id(b)) for b in blobs] == blobs
    c = check(r, read_data=True)
    assert c.ok, c.to_json()
    print(f"RESULT repo-on-s3 writers=4 snapshots={len(sets)} forgotten=2 packs_deleted={rep.packs_deleted} "
          f"check_ok={c.ok}")
