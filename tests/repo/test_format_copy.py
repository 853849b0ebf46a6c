"""copy: re-encrypts under the destination's keys, dedups against it, skips what was already copied."""

from __future__ import annotations

import os

from tests.repo.test_format_support import PW, DictStore, cheap_params, simple_tree

from frieze.repo.check import check
from frieze.repo.copy import copy_snapshots
from frieze.repo.repository import Repository
from frieze.repo.tree import decode_tree


def _snap(repo: Repository, blobs: list[bytes], tag: str, parent: str | None = None) -> str:
    with repo.writer(host="src-host") as w:
        ids = [repo.chunk_id(b) for b in blobs]
        for i, b in zip(ids, blobs, strict=True):
            w.add_blob(i, b)
        sub = simple_tree(repo, w, ids[:2])
        root = simple_tree(repo, w, ids[2:], [sub])
        return w.commit(tree=root, paths=["/data"], host="src-host", tags=[tag], label={"c": tag}, parent=parent,
                        stats={})


def _contents(repo: Repository, sid: str) -> list[bytes]:
    out = []
    stack = [repo.load_snapshot(sid).tree]
    while stack:
        for n in decode_tree(repo.read_blob(stack.pop())):
            if n.subtree:
                stack.append(n.subtree)
            out += [repo.read_blob(e.id) for e in n.extents if e.id]
    return sorted(out)


def test_copy_other_domain_and_same_domain() -> None:
    sst = DictStore()
    src = Repository.init(sst, PW, params=cheap_params())
    shared = [os.urandom(3000) for _ in range(3)]
    a = _snap(src, [*shared, os.urandom(3000)], "a")
    b = _snap(src, [*shared, os.urandom(3000), b"z" * 5000], "b", parent=a)
    for dst_params in (cheap_params(), cheap_params(copy_id_keys_from=src)):
        dst_store = DictStore()
        dst = Repository.init(dst_store, "other password", params=dst_params)
        assert dst.same_dedup_domain(src) == (dst_params.copy_id_keys_from is not None)
        rep = copy_snapshots(src, dst, [a])
        assert list(rep.copied) == [a] and rep.blobs_new > 0
        rep2 = copy_snapshots(src, dst)
        assert rep2.skipped == [a] and list(rep2.copied) == [b]
        assert rep2.blobs_reused >= 3  # the shared blobs were not stored again
        rep3 = copy_snapshots(src, dst)
        assert rep3.skipped == [a, b] and not rep3.copied
        snaps = dst.list_snapshots()
        assert len(snaps) == 2
        sb = dst.load_snapshot(rep2.copied[b])
        assert sb.parent == rep.copied[a] and sb.label == {"c": "b"} and sb.host == "src-host"
        assert sb.time == src.load_snapshot(b).time
        for s_id, d_id in ((a, rep.copied[a]), (b, rep2.copied[b])):
            assert _contents(src, s_id) == _contents(dst, d_id)
        assert check(dst, read_data=True).ok
        # re-encrypted: no pack of the destination equals a pack of the source
        assert not {k for k in dst_store.blobs if k.startswith("data/")} & set(sst.blobs)
