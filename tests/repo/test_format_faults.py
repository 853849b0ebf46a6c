"""Faults: random damage to every kind of object is detected by check with the object's id; a full store
gives a clear NoSpace, changes no existing object, and the next run succeeds."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from tests.repo.test_format_support import PW, DictStore, cheap_params, simple_tree

from frieze.core.errors import FriezeError, NoSpace
from frieze.repo.check import check
from frieze.repo.pack import parse_trailer
from frieze.repo.repository import Repository

EXPECT: dict[str, list[bytes]] = {}


def _restore_all(st: DictStore, tmp: Path) -> tuple[int, int]:
    """Restore every snapshot's bytes; return (restored byte-exact, failed closed). Wrong bytes fail the test."""
    from frieze.repo.tree import decode_tree

    try:
        r = Repository.open(st, PW, state_dir=tmp)
        snaps = {s.id for s in r.list_snapshots()}
    except FriezeError:
        return 0, len(EXPECT)
    ok = closed = 0
    for sid, expect in EXPECT.items():
        try:
            if sid not in snaps:
                raise FriezeError(f"snapshot {sid} not listed")
            got: list[bytes] = []
            stack = [r.load_snapshot(sid).tree]
            while stack:
                for n in decode_tree(r.read_blob(stack.pop())):
                    if n.subtree:
                        stack.append(n.subtree)
                    got += [r.read_blob(e.id) for e in n.extents if e.id]
        except FriezeError:
            closed += 1
            continue
        assert sorted(got) == sorted(expect), f"snapshot {sid} restored WRONG bytes"
        ok += 1
    return ok, closed


def _build(tmp: Path) -> tuple[DictStore, Repository]:
    st = DictStore()
    repo = Repository.init(st, PW, params=cheap_params(pack_size=12 * 1024), state_dir=tmp)
    repo = Repository.open(st, PW, state_dir=tmp)
    rng = random.Random(3)
    shared = [rng.randbytes(3000) for _ in range(3)]
    for _ in range(4):
        blobs = shared + [rng.randbytes(3000) for _ in range(5)]
        with repo.writer(host="h") as w:
            ids = [repo.chunk_id(b) for b in blobs]
            for i, b in zip(ids, blobs, strict=True):
                w.add_blob(i, b)
            sub = simple_tree(repo, w, ids[:3])
            w.flush()
            root = simple_tree(repo, w, ids[3:], [sub])
            EXPECT[w.commit(tree=root, paths=["/"], host="h", tags=[], label=None, parent=None, stats={})] = blobs
    return st, repo


def _related_ids(repo: Repository, st: DictStore, key: str) -> set[str]:
    """Ids a report may use for damage to ``key``: the key, and for a pack every blob id in it."""
    out = {key, key.rsplit("/", 1)[-1]}
    if key.startswith("data/"):
        for e in parse_trailer(repo.ring, st.blobs[key][0], key):
            out.add(e[0].hex())
    if key.startswith("index/"):
        out |= {e.blob_id.hex() for e in repo.dedup.entries()} | {k for k in st.blobs if k.startswith("data/")}
    if key.startswith("snapshots/"):
        out.add(key[len("snapshots/"):])
    return out


@pytest.mark.parametrize(("seed", "rounds"), [(1, 50), (2, 50),
                                              pytest.param(3, 200, marks=pytest.mark.heavy)])
def test_random_damage_detected_with_ids(tmp_path: Path, seed: int, rounds: int) -> None:
    EXPECT.clear()
    st, repo = _build(tmp_path)
    assert check(repo, read_data=True).ok
    restored_total = closed_total = 0
    pristine = dict(st.blobs)
    keys = sorted(k for k in pristine if not k.startswith(("keys/", "locks/")))
    rng = random.Random(seed)
    kinds = ["bitflip", "truncate", "delete", "swap", "zero"]
    n = 0
    detected = 0
    for _ in range(rounds):
        st.blobs = dict(pristine)
        key = rng.choice(keys)
        kind = rng.choice(kinds)
        data = pristine[key][0]
        if kind == "bitflip":
            b = bytearray(data)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            st.force(key, bytes(b))
        elif kind == "truncate":
            st.force(key, data[: rng.randrange(len(data))])
        elif kind == "zero":
            st.force(key, bytes(len(data)))
        elif kind == "delete":
            del st.blobs[key]
        else:
            same = [k for k in keys if k != key and k.split("/")[0] == key.split("/")[0]]
            if not same:
                continue
            st.force(key, pristine[rng.choice(same)][0])
        n += 1
        rep = check(repo, read_data=True)
        st_view = DictStore()
        st_view.blobs = pristine
        related = _related_ids(repo, st_view, key)
        hit = [p for p in rep.errors() if p.id in related or any(r in p.message for r in related)]
        assert not rep.ok, f"{kind} of {key} not detected"
        assert hit, f"{kind} of {key} detected without naming it: {rep.to_json()}"
        detected += 1
        ok, closed = _restore_all(st, tmp_path)  # fail closed or byte-exact, never wrong bytes
        restored_total += ok
        closed_total += closed
    print(f"RESULT damage-detect seed={seed} injected={n} detected={detected} named={detected} "
          f"restores_exact={restored_total} restores_failed_closed={closed_total} wrong_bytes=0")
    assert detected == n


class FullStore(DictStore):
    """Fails every put with NoSpace once ``budget`` bytes have been written."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        if len(data) > self.budget:
            raise NoSpace(f"no space left on device writing {key} (ENOSPC)", key=key)
        super().put(key, data)
        self.budget -= len(data)


def test_full_store_clear_error_nothing_changed_then_succeeds() -> None:
    st = FullStore(10**9)
    repo = Repository.init(st, PW, params=cheap_params(pack_size=16 * 1024))
    first = [os.urandom(4000) for _ in range(4)]
    with repo.writer(host="h") as w:
        for b in first:
            w.add_blob(repo.chunk_id(b), b)
        t = simple_tree(repo, w, [repo.chunk_id(b) for b in first])
        s1 = w.commit(tree=t, paths=["/"], host="h", tags=[], label=None, parent=None, stats={})
    before = {k: v[0] for k, v in st.blobs.items() if not k.startswith("locks/")}
    st.budget = 30_000
    big = [os.urandom(8000) for _ in range(12)]
    with pytest.raises(FriezeError) as ei, repo.writer(host="h") as w:
        for b in big:
            w.add_blob(repo.chunk_id(b), b)
        t = simple_tree(repo, w, [repo.chunk_id(b) for b in big])
        w.commit(tree=t, paths=["/"], host="h", tags=[], label=None, parent=None, stats={})
    assert isinstance(ei.value, NoSpace) and "ENOSPC" in str(ei.value) and ei.value.exit_code != 0
    after = {k: v[0] for k, v in st.blobs.items() if not k.startswith("locks/")}
    assert all(after[k] == v for k, v in before.items())  # no pre-existing object changed
    assert [s.id for s in repo.list_snapshots()] == [s1]
    st.budget = 10**9  # space freed
    r2 = Repository.open(st, PW)
    with r2.writer(host="h") as w:
        for b in big:
            w.add_blob(r2.chunk_id(b), b)
        t = simple_tree(r2, w, [r2.chunk_id(b) for b in big])
        w.commit(tree=t, paths=["/"], host="h", tags=[], label=None, parent=None, stats={})
    assert len(r2.list_snapshots()) == 2
    assert all(r2.read_blob(r2.chunk_id(b)) == b for b in big)
    assert check(r2, read_data=True).ok


@pytest.mark.root
@pytest.mark.timeout(300)
def test_real_full_filesystem_enospc(tmp_path: Path) -> None:
    """A repository on a small real ext4 that fills up: NoSpace naming ENOSPC, nothing pre-existing changed,
    the next run succeeds once space is freed."""
    import hashlib

    from tests.repo.test_format_support import local_store
    from tests.support.loopfs import loop_fs_or_skip

    with loop_fs_or_skip("ext4", 64) as fs:
        root = fs.mount / "repo"
        store = local_store(root)
        repo = Repository.init(store, PW, params=cheap_params(pack_size=1 << 20, cdc_max=1 << 20))
        rng = random.Random(5)

        def backup(r: Repository, blobs: list[bytes]) -> str:
            with r.writer(host="h") as w:
                ids = [r.chunk_id(b) for b in blobs]
                for i, b in zip(ids, blobs, strict=True):
                    w.add_blob(i, b)
                t = simple_tree(r, w, ids)
                return w.commit(tree=t, paths=["/"], host="h", tags=[], label=None, parent=None, stats={})

        first = [rng.randbytes(256 * 1024) for _ in range(8)]
        s1 = backup(repo, first)

        def digest() -> dict[str, str]:
            return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                    for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}

        before = {k: v for k, v in digest().items() if not k.startswith("locks/")}
        st = os.statvfs(fs.mount)
        free = st.f_bavail * st.f_frsize
        filler = fs.mount / "filler"
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - 6 * 1024 * 1024))
            f.flush()
            os.fsync(f.fileno())
        second = [rng.randbytes(256 * 1024) for _ in range(60)]  # 15 MiB, more than is free
        with pytest.raises(NoSpace) as ei:
            backup(Repository.open(local_store(root), PW), second)
        msg = str(ei.value)
        assert "ENOSPC" in msg or "space" in msg.lower(), msg
        assert ei.value.exit_code != 0
        after = digest()
        assert all(after.get(k) == v for k, v in before.items()), "a pre-existing object changed"
        r = Repository.open(local_store(root), PW)
        assert [s.id for s in r.list_snapshots()] == [s1]
        filler.unlink()
        s2 = backup(Repository.open(local_store(root), PW), second)
        r = Repository.open(local_store(root), PW)
        assert [s.id for s in r.list_snapshots()] == [s1, s2]
        c = check(r, read_data=True)
        assert c.ok, c.to_json()
        print(f"RESULT repo-enospc-real error={type(ei.value).__name__} preexisting_unchanged=True "
              f"next_run_ok=True check_ok={c.ok}")
