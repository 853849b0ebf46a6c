"""Append-only: backups (and copies) are accepted; forget, prune, key removal and every other delete are
refused and change nothing. The mode is either asked for by the opener (``store.append_only``) or persisted in
the repository (the ``appendonly`` marker), which binds every later client, including one that did not ask."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tests.repo.test_format_support import PW, cheap_params, memory_store, simple_tree

from frieze.core.errors import Forbidden
from frieze.core.retention import RetentionPolicy
from frieze.repo.appendonly import MARKER_KEY, clear_append_only
from frieze.repo.blobstore.local import LocalBlobStore
from frieze.repo.check import check
from frieze.repo.lock import remove_all_locks
from frieze.repo.prune import PruneOptions, forget, prune
from frieze.repo.repository import Repository
from frieze.repo.types import KdfParams


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


def _snap(repo: Repository) -> str:
    d = os.urandom(2000)
    with repo.writer(host="h") as w:
        w.add_blob(repo.chunk_id(d), d)
        t = simple_tree(repo, w, [repo.chunk_id(d)])
        return str(w.commit(tree=t, paths=["/"], host="h", tags=[], label=None, parent=None, stats={}))


def _contents(st: Any) -> dict[str, bytes]:
    return {b.key: st.get(b.key) for b in st.list("")}


def _refused_everything(repo: Repository, raw: Any, sids: list[str]) -> None:
    """Every deleting operation is refused with Forbidden and the store is byte for byte unchanged."""
    slot = repo.add_key("second", KdfParams.cheap_for_tests())  # adding a slot is an addition: allowed
    repo.writer(host="h").close()  # its lock object stays: releasing a lease deletes nothing either
    assert any(k.startswith("locks/") for k in _contents(raw))
    before = _contents(raw)
    attempts = [
        lambda: forget(repo, ids=[sids[0]]),
        lambda: forget(repo, policy=RetentionPolicy(last=1)),
        lambda: prune(repo, PruneOptions(delete_margin_s=0, unindexed_min_age_s=0)),
        lambda: repo.remove_key(slot),
        lambda: repo.change_password("new", KdfParams.cheap_for_tests()),
        lambda: repo.store.delete(next(iter(k for k in before if k.startswith("data/")))),
        lambda: remove_all_locks(repo.store),
    ]
    for attempt in attempts:
        with pytest.raises(Forbidden, match="append-only"):
            attempt()
        assert _contents(raw) == before
    assert [s.id for s in Repository.open(raw, PW).list_snapshots()] == sids


def test_marker_from_init_binds_a_writer_that_did_not_ask(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    Repository.init(LocalBlobStore(root), PW, params=cheap_params(), append_only=True)
    assert (root / MARKER_KEY).is_file()
    raw = LocalBlobStore(root)  # a later client opens the store without asking for append-only
    assert not raw.append_only
    repo = Repository.open(raw, PW)
    assert repo.append_only and repo.append_only_marker
    sids = [_snap(repo), _snap(Repository.open(LocalBlobStore(root), PW))]  # adding is allowed
    locks_left = [b.key for b in raw.list("locks/")]
    assert locks_left, "releasing a lease deletes nothing in an append-only repository"
    _refused_everything(Repository.open(LocalBlobStore(root), PW), raw, sids)
    assert check(Repository.open(LocalBlobStore(root), PW), read_data=True).ok


def test_switching_an_existing_repository_then_an_operator_switches_back(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    repo = Repository.init(LocalBlobStore(root), PW, params=cheap_params(), lease_skew_s=0)
    sids = [_snap(repo), _snap(repo)]
    assert not repo.append_only
    repo.make_append_only()
    assert repo.append_only
    other = Repository.open(LocalBlobStore(root), PW, lease_skew_s=0)
    _refused_everything(other, LocalBlobStore(root), sids)
    # switching back is an operator action on a store opened with delete rights, never a side effect
    with pytest.raises(Forbidden):
        clear_append_only(LocalBlobStore(root, append_only=True))
    assert clear_append_only(LocalBlobStore(root))
    remove_all_locks(LocalBlobStore(root))  # lock objects the append-only period kept (operator override)
    r = Repository.open(LocalBlobStore(root), PW, lease_skew_s=0)
    assert not r.append_only
    forget(r, ids=[sids[0]])
    prune(r, PruneOptions(delete_margin_s=0, unindexed_min_age_s=0))
    assert [s.id for s in r.list_snapshots()] == [sids[1]]


def test_a_damaged_or_foreign_marker_still_binds_and_check_reports_it(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    Repository.init(LocalBlobStore(root), PW, params=cheap_params())
    (root / MARKER_KEY).write_bytes(b"FZAO\x01\x00\x00\x00 not a sealed box")
    repo = Repository.open(LocalBlobStore(root), PW)
    assert repo.append_only
    with pytest.raises(Forbidden, match="append-only"):
        prune(repo, PruneOptions(delete_margin_s=0, unindexed_min_age_s=0))
    rep = check(repo)
    assert not rep.ok and MARKER_KEY in {p.id for p in rep.errors() if p.kind == "appendonly"}, rep.to_json()
