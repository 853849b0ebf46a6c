"""forget + prune: nothing referenced is deleted, garbage goes after the margin, kill -9 is survivable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from tests.repo.test_format_support import PW, DictStore, cheap_params, local_store, simple_tree

from frieze.core.retention import RetentionPolicy
from frieze.repo.check import check
from frieze.repo.index import IndexFile
from frieze.repo.lock import break_stale_locks
from frieze.repo.prune import PruneOptions, forget, prune
from frieze.repo.repository import Repository

NOW_OPTS = PruneOptions(delete_margin_s=0, unindexed_min_age_s=0)


def _snap(repo: Repository, blobs: list[bytes], tag: str) -> str:
    with repo.writer(host="h") as w:
        ids = [repo.chunk_id(b) for b in blobs]
        for i, b in zip(ids, blobs, strict=True):
            w.add_blob(i, b)
        root = simple_tree(repo, w, ids)
        return w.commit(tree=root, paths=["/d"], host="h", tags=[tag], label=None, parent=None, stats={})


def _assert_restores(repo: Repository, sid: str, blobs: list[bytes]) -> None:
    snap = repo.load_snapshot(sid)
    from frieze.repo.tree import decode_tree

    nodes = decode_tree(repo.read_blob(snap.tree))
    got = [repo.read_blob(n.extents[0].id) for n in nodes if n.extents and n.extents[0].id]
    assert got == blobs


def test_forget_and_prune_two_phase() -> None:
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params(pack_size=32 * 1024), lease_skew_s=0)
    shared = [os.urandom(5000) for _ in range(5)]
    sets = [shared + [os.urandom(5000) for _ in range(10)] for _ in range(3)]
    sids = [_snap(repo, s, f"t{i}") for i, s in enumerate(sets)]
    packs_before = {k for k in st.blobs if k.startswith("data/")}
    rep = forget(repo, ids=[sids[0]])
    assert rep.removed == [sids[0]]
    assert [s.id for s in repo.list_snapshots()] == sids[1:]
    # phase one: default margin keeps the garbage packs, only the index changes
    r1 = prune(repo, PruneOptions(unindexed_min_age_s=0))
    assert r1.packs_deleted == 0 and r1.garbage_pending > 0
    assert packs_before <= {k for k in st.blobs if k.startswith("data/")}
    for sid, blobs in zip(sids[1:], sets[1:], strict=True):
        _assert_restores(repo, sid, blobs)
    # phase two: past the margin, the garbage is deleted
    r2 = prune(repo, NOW_OPTS)
    assert r2.packs_deleted > 0 and r2.bytes_deleted > 0
    repo2 = Repository.open(st, PW)
    for sid, blobs in zip(sids[1:], sets[1:], strict=True):
        _assert_restores(repo2, sid, blobs)
    assert not any(repo2.has_blob(repo2.chunk_id(b)) for b in sets[0][5:])
    rep_c = check(repo2, read_data=True)
    assert rep_c.ok and not [p for p in rep_c.problems if p.kind == "pack"], rep_c.to_json()


def test_forget_by_policy() -> None:
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params(), lease_skew_s=0)
    sids = [_snap(repo, [os.urandom(100)], "x") for _ in range(4)]
    rep = forget(repo, policy=RetentionPolicy(last=2), dry_run=True)
    assert rep.removed == sorted(sids[:2]) and len(repo.list_snapshots()) == 4
    rep = forget(repo, policy=RetentionPolicy(last=2))
    assert [s.id for s in repo.list_snapshots()] == sids[2:]
    assert forget(repo, policy=RetentionPolicy(within=timedelta(days=1))).removed == []


def test_prune_refuses_when_live_blob_unindexed() -> None:
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params(), lease_skew_s=0)
    _snap(repo, [os.urandom(1000) for _ in range(3)], "a")
    for k in [k for k in st.blobs if k.startswith("index/")]:
        del st.blobs[k]
    before = set(st.blobs)
    with pytest.raises(Exception, match="prune refused"):
        prune(repo, NOW_OPTS)
    assert set(st.blobs) >= before - {k for k in before if k.startswith("locks/")}


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from tests.repo.test_format_support import local_store
    from frieze.repo.prune import PruneOptions, prune
    from frieze.repo.repository import Repository
    root, pw, at, nth = sys.argv[1], sys.stdin.readline().strip(), sys.argv[2], int(sys.argv[3])
    repo = Repository.open(local_store(Path(root)), pw, lease_skew_s=0)
    seen = {}
    def step(name):
        seen[name] = seen.get(name, 0) + 1
        if name == at and seen[name] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    prune(repo, PruneOptions(delete_margin_s=0, unindexed_min_age_s=0, repack_threshold=0.05), on_step=step)
    print("COMPLETED")
""")


@pytest.mark.timeout(300)
def test_kill9_during_prune(tmp_path: Path) -> None:
    rng = random.Random(7)
    points = [("marked", 1), ("repacked", 1), ("index_written", 1), ("old_index_deleted", 1),
              ("old_index_deleted", 2), ("garbage_recorded", 1), ("pack_deleted", 1), ("pack_deleted", 3),
              ("done", 1)]
    kills = 0
    for round_, (at, nth) in enumerate(points):
        root = tmp_path / f"r{round_}"
        store = local_store(root)
        repo = Repository.init(store, PW, params=cheap_params(pack_size=24 * 1024), lease_skew_s=0)
        shared = [rng.randbytes(4000) for _ in range(6)]
        sets = [shared + [rng.randbytes(4000) for _ in range(8)] for _ in range(4)]
        sids = [_snap(repo, s, str(i)) for i, s in enumerate(sets)]
        forget(repo, ids=[sids[0], sids[2]])
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd() / "src"), str(Path.cwd())])
        p = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(root), at, str(nth)], input=PW + "\n",
                           capture_output=True, text=True, env=env, timeout=120)
        killed = p.returncode == -signal.SIGKILL
        assert killed or "COMPLETED" in p.stdout, p.stderr
        kills += killed
        # every kept snapshot restores after the kill, and the next prune completes
        r = Repository.open(local_store(root), PW, lease_skew_s=0)
        broken = break_stale_locks(r.store, r.ring)
        assert bool(broken) == killed  # a killed prune's lease is broken as stale (its process is gone)
        for i in (1, 3):
            _assert_restores(r, sids[i], sets[i])
        rep = prune(r, NOW_OPTS)
        r = Repository.open(local_store(root), PW)
        for i in (1, 3):
            _assert_restores(r, sids[i], sets[i])
        c = check(r, read_data=True)
        assert c.ok, c.to_json()
        assert not any(p.kind == "pack" for p in c.problems), c.to_json()
        print(f"RESULT prune-kill9 point={at}#{nth} killed={killed} next_prune_ok=True "
              f"deleted_after={rep.packs_deleted + rep.unindexed_deleted} check_ok={c.ok}")
    assert kills >= len(points) - 2
    print(f"RESULT prune-kill9-summary kills={kills} scenarios={len(points)} kept_snapshots_restored=all")


def test_prune_trims_list_history_and_old_index_put_back_is_detected() -> None:
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params(pack_size=8 * 1024), lease_skew_s=0)
    sets = [[os.urandom(3000) for _ in range(3)] for _ in range(20)]
    sids = [_snap(repo, s, str(i)) for i, s in enumerate(sets)]
    old_index = {k: v for k, v in st.blobs.items() if k.startswith("index/")}
    forget(repo, ids=sids[:10])
    rep = prune(repo, PruneOptions(delete_margin_s=0, unindexed_min_age_s=0, keep_lists=5))
    assert rep.packs_deleted > 0
    seqs = repo.catalog.seqs()
    assert len(seqs) == 5 and repo.catalog.current().history_from == seqs[0]
    c = check(repo, read_data=True)
    assert c.ok, c.to_json()
    for sid, blobs in zip(sids[10:], sets[10:], strict=True):
        _assert_restores(repo, sid, blobs)
    # an older index put back names packs prune deleted: check reports that index by key (readers ignore a
    # superseded index, so every kept snapshot still restores)
    dropped = {k: v for k, v in old_index.items()
               if any(p.pack_id not in repo.dedup.pack_ids
                      for p in IndexFile.decode(repo.ring, k, v[0]).packs)}
    k, v = next(iter(dropped.items()))
    st.blobs[k] = v
    c = check(repo)
    assert not c.ok and k in {p.id for p in c.errors() if p.kind == "index"}, c.to_json()
    r2 = Repository.open(st, PW)
    for sid, blobs in zip(sids[10:], sets[10:], strict=True):
        _assert_restores(r2, sid, blobs)
    # deleting the oldest retained list entry is a detected gap, not mistaken for trimming
    del st.blobs[f"snaplist/{seqs[0]:016d}"]
    st.blobs.pop(k)
    c = check(repo)
    assert f"snaplist/{seqs[0]:016d}" in c.ids()


@pytest.mark.heavy
@pytest.mark.timeout(1800)
def test_kill9_during_prune_random_heavy(tmp_path: Path) -> None:
    """Opt-in: 40 random kill points (step and occurrence) over random repository shapes."""
    rng = random.Random(11)
    steps = ["marked", "repacked", "index_written", "old_index_deleted", "garbage_recorded", "pack_deleted"]
    kills = 0
    for round_ in range(40):
        root = tmp_path / f"h{round_}"
        repo = Repository.init(local_store(root), PW, params=cheap_params(pack_size=rng.choice([8, 24, 64]) * 1024),
                               lease_skew_s=0)
        shared = [rng.randbytes(3000) for _ in range(rng.randrange(1, 6))]
        sets = [shared + [rng.randbytes(3000) for _ in range(rng.randrange(2, 10))] for _ in range(5)]
        sids = [_snap(repo, s, str(i)) for i, s in enumerate(sets)]
        gone = rng.sample(range(5), rng.randrange(1, 4))
        forget(repo, ids=[sids[i] for i in gone])
        at, nth = rng.choice(steps), rng.randrange(1, 4)
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd() / "src"), str(Path.cwd())])
        p = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(root), at, str(nth)], input=PW + "\n",
                           capture_output=True, text=True, env=env, timeout=120)
        killed = p.returncode == -signal.SIGKILL
        assert killed or "COMPLETED" in p.stdout, p.stderr
        kills += killed
        r = Repository.open(local_store(root), PW, lease_skew_s=0)
        break_stale_locks(r.store, r.ring)
        kept = [i for i in range(5) if i not in gone]
        for i in kept:
            _assert_restores(r, sids[i], sets[i])
        prune(r, NOW_OPTS)
        r = Repository.open(local_store(root), PW)
        for i in kept:
            _assert_restores(r, sids[i], sets[i])
        c = check(r, read_data=True)
        assert c.ok and not any(p.kind == "pack" for p in c.problems), c.to_json()
    print(f"RESULT prune-kill9-heavy scenarios=40 kills={kills} kept_snapshots_restored=all")


def test_forget_policy_with_selection() -> None:
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params(), lease_skew_s=0)
    a = [_snap(repo, [os.urandom(100)], "a") for _ in range(3)]
    b = [_snap(repo, [os.urandom(100)], "b") for _ in range(3)]
    rep = forget(repo, policy=RetentionPolicy(last=1), select=lambda e: "a" in e["tags"])
    assert rep.removed == sorted(a[:2])
    assert {d.id for d in rep.decisions if d.reasons == ["not selected"]} == set(b)
    assert [s.id for s in repo.list_snapshots()] == [a[2], *b]
