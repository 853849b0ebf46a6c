"""Leases: fencing on a monotonic clock; a writer paused past its lease is refused at commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.repo.test_format_support import PW, DictStore, cheap_params, local_store, simple_tree

from frieze.core.errors import Busy, LeaseExpired
from frieze.repo.check import check
from frieze.repo.lock import EXCLUSIVE, WRITER, Lease
from frieze.repo.prune import PruneOptions, forget, prune
from frieze.repo.repository import Repository
from frieze.repo.snapshots import LIST_PREFIX, SNAP_PREFIX


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_lease_fencing_fake_clock() -> None:
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params())
    mono, wall = FakeClock(), FakeClock()
    lease = Lease(st, repo.ring, WRITER, "h", 10.0, auto_renew=False, clock=mono, wall=wall).acquire()
    mono.t += 9
    wall.t += 9
    lease.renew()  # in time: renewed, counting restarts
    mono.t += 9.5
    wall.t += 9.5
    lease.ensure_valid("x")
    mono.t += 1  # the monotonic clock says expired (wall did not move: a stalled wall clock does not help)
    with pytest.raises(LeaseExpired, match="expired before commit"):
        lease.ensure_valid("commit")
    with pytest.raises(LeaseExpired):
        lease.renew()  # a lost lease is never revived
    lease.release()
    # a wall-clock jump forward also fails closed
    lease2 = Lease(st, repo.ring, WRITER, "h", 10.0, auto_renew=False, clock=mono, wall=wall).acquire()
    wall.t += 11
    assert not lease2.valid()
    lease2.release()


def test_writer_expired_is_refused_at_commit_nothing_published() -> None:
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params())
    d = os.urandom(1000)
    w = repo.writer(host="h", lease_s=0.4)
    w.lease._stop.set()  # simulate a process whose renewal cannot run (paused)
    w.add_blob(repo.chunk_id(d), d)
    tid = simple_tree(repo, w, [repo.chunk_id(d)])
    time.sleep(0.6)
    with pytest.raises(LeaseExpired):
        w.commit(tree=tid, paths=["/"], host="h", tags=[], label=None, parent=None, stats={})
    w.abort()
    assert not [k for k in st.blobs if k.startswith((SNAP_PREFIX, LIST_PREFIX))]


def test_writer_and_exclusive_exclude_each_other() -> None:
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params(), lease_skew_s=0)
    # writers share; prune is refused while they hold leases
    with repo.writer(host="w1"), repo.writer(host="w2"), pytest.raises(Busy, match="writer lease"):
        prune(repo, PruneOptions())
    with Lease(st, repo.ring, EXCLUSIVE, "prune", 30.0), pytest.raises(Busy, match="exclusive"):
        repo.writer(host="w3")
    with repo.writer(host="w4"):
        pass
    assert not [k for k in st.blobs if k.startswith("locks/")]  # released leases leave nothing behind


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from frieze.core.errors import LeaseExpired
    from frieze.repo.repository import Repository
    from tests.repo.test_format_support import local_store, simple_tree
    root = sys.argv[1]
    pw = sys.stdin.readline().strip()
    repo = Repository.open(local_store(Path(root)), pw, lease_skew_s=0)
    shared = [bytes.fromhex(h) for h in sys.argv[2].split(",")]
    with repo.writer(host="paused", lease_s=4.0) as w:
        ids = list(shared)
        for i in range(12):
            d = bytes([i]) * 3000 + root.encode()
            ids.append(repo.chunk_id(d))
            w.add_blob(ids[-1], d)
        assert all(w.has(s) for s in shared)  # dedup against the snapshot prune is about to remove
        tid = simple_tree(repo, w, ids)
        print("READY", flush=True)
        sys.stdin.readline()
        try:
            sid = w.commit(tree=tid, paths=["/"], host="paused", tags=[], label=None, parent=None, stats={})
            print("COMMITTED", sid, flush=True)
        except LeaseExpired as e:
            print("REFUSED", e.code, flush=True)
""")


@pytest.mark.timeout(120)
def test_writer_paused_past_lease_during_prune(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    repo = Repository.init(local_store(root), PW, params=cheap_params(pack_size=8 * 1024), lease_skew_s=0)
    old_blobs = [os.urandom(3000) for _ in range(4)]
    keep_blobs = [os.urandom(3000) for _ in range(4)]
    sids = []
    for blobs in (old_blobs, keep_blobs):
        with repo.writer(host="h") as w:
            ids = [repo.chunk_id(b) for b in blobs]
            for i, b in zip(ids, blobs, strict=True):
                w.add_blob(i, b)
            t = simple_tree(repo, w, ids)
            sids.append(w.commit(tree=t, paths=["/"], host="h", tags=[], label=None, parent=None, stats={}))
    shared = ",".join(repo.chunk_id(b).hex() for b in old_blobs)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd() / "src"), str(Path.cwd())])
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(root), shared], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(PW + "\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "READY", p.stderr.read() if p.stderr else ""
        os.kill(p.pid, signal.SIGSTOP)
        with pytest.raises(Busy):
            prune(repo, PruneOptions(delete_margin_s=0, unindexed_min_age_s=0))  # lease still live
        time.sleep(4.3)  # the paused writer's lease runs out (4 s: prune above sees it live on a loaded machine too)
        forget(repo, ids=[sids[0]])
        rep = prune(repo, PruneOptions(delete_margin_s=0, unindexed_min_age_s=0))
        assert rep.packs_deleted > 0  # the blobs the paused writer deduplicated against are gone
        os.kill(p.pid, signal.SIGCONT)
        p.stdin.write("GO\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
            p.wait()
    refused = "REFUSED lease_expired" in out
    r = Repository.open(local_store(root), PW)
    snaps = [s.id for s in r.list_snapshots()]
    c = check(r, read_data=True)
    print(f"RESULT lease-paused-writer-during-prune refused={refused} snapshots={len(snaps)} "
          f"check_ok={c.ok} packs_deleted_by_prune={rep.packs_deleted}")
    assert refused, out + err
    assert snaps == [sids[1]]
    assert c.ok, c.to_json()
    assert [r.read_blob(r.chunk_id(b)) for b in keep_blobs] == keep_blobs
