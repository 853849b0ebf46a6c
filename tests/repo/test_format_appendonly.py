"""Append-only: backups (and copies) are accepted; forget and prune are refused and change nothing."""

from __future__ import annotations

import os

import pytest
from tests.repo.test_format_support import PW, cheap_params, memory_store, simple_tree

from frieze.core.errors import Forbidden
from frieze.core.retention import RetentionPolicy
from frieze.repo.prune import PruneOptions, forget, prune
from frieze.repo.repository import Repository


def test_append_only_refuses_forget_and_prune() -> None:
    st = memory_store(append_only=True)
    repo = Repository.init(st, PW, params=cheap_params())
    assert repo.append_only
    sids = []
    for _ in range(2):
        d = os.urandom(2000)
        with repo.writer(host="h") as w:
            w.add_blob(repo.chunk_id(d), d)
            t = simple_tree(repo, w, [repo.chunk_id(d)])
            sids.append(w.commit(tree=t, paths=["/"], host="h", tags=[], label=None, parent=None, stats={}))
    before = {b.key: st.get(b.key) for b in st.list("") if not b.key.startswith("locks/")}
    with pytest.raises(Forbidden, match="append-only"):
        forget(repo, ids=[sids[0]])
    with pytest.raises(Forbidden, match="append-only"):
        forget(repo, policy=RetentionPolicy(last=1))
    with pytest.raises(Forbidden, match="append-only"):
        prune(repo, PruneOptions(delete_margin_s=0, unindexed_min_age_s=0))
    after = {b.key: st.get(b.key) for b in st.list("") if not b.key.startswith("locks/")}
    assert after == before
    assert [s.id for s in Repository.open(st, PW).list_snapshots()] == sids
