"""Faults: random damage to every kind of object (bit flip, truncation, zeroing, deletion, swapped objects, an
older index file or snapshot list put back) is named by check with the object's exact id, the snapshots that
depend on it fail closed and the others restore byte for byte; a full store gives a clear NoSpace, changes no
existing object, and the next run succeeds."""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.repo.test_format_support import PW, DictStore, cheap_params, simple_tree

from frieze.core.errors import FriezeError, NoSpace
from frieze.repo import tree as T
from frieze.repo.check import check
from frieze.repo.index import IndexFile
from frieze.repo.pack import pack_key
from frieze.repo.prune import PruneOptions, forget, prune
from frieze.repo.repository import Repository, RepoWriter
from frieze.repo.restore import restore
from frieze.repo.types import BlobKind


def _tree(repo: Repository, w: RepoWriter, files: dict[str, bytes], dirs: dict[str, bytes]) -> bytes:
    """Store a tree blob: regular files (each one data blob, mode 0644) and subdirectories (0755)."""
    nodes = [T.Node(name=n.encode(), type=T.NodeType.FILE, mode=0o644, size=len(b),
                    extents=[T.Extent(id=repo.chunk_id(b), length=len(b))]) for n, b in sorted(files.items())]
    nodes += [T.Node(name=n.encode(), type=T.NodeType.DIR, mode=0o755, subtree=t) for n, t in sorted(dirs.items())]
    blob = T.encode_tree(nodes)
    tid = repo.chunk_id(blob)
    w.add_blob(tid, blob, kind=BlobKind.TREE)
    return tid


def _reachable(repo: Repository, tree: bytes) -> set[bytes]:
    out, stack = {tree}, [tree]
    while stack:
        for n in T.decode_tree(repo.read_blob(stack.pop())):
            if n.subtree:
                out.add(n.subtree)
                stack.append(n.subtree)
            out.update(e.id for e in n.extents if e.id)
    return out


@dataclass
class History:
    """A repository with history: 4 snapshots, one forgotten and pruned (old index files and list entries
    deleted, list history trimmed), then 2 more. ``old`` is the store before the forget."""

    st: DictStore
    repo: Repository
    state: Path
    expect: dict[str, dict[str, bytes]]  # listed snapshot -> restored relative path -> bytes
    old: dict[str, tuple[bytes, float]]
    pristine: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    reach: dict[str, set[bytes]] = field(default_factory=dict)  # snapshot -> every blob it needs
    #: blob -> (pack key, index key, offset, length of its box in the pack)
    where: dict[bytes, tuple[str, str, int, int]] = field(default_factory=dict)


def _history(tmp: Path) -> History:
    st, state = DictStore(), tmp / "state"
    Repository.init(st, PW, params=cheap_params(pack_size=12 * 1024), state_dir=state, lease_skew_s=0)
    repo = Repository.open(st, PW, state_dir=state, lease_skew_s=0)
    rng = random.Random(3)
    shared = {f"s{i}": rng.randbytes(3000) for i in range(3)}
    expect: dict[str, dict[str, bytes]] = {}

    def snap() -> str:
        files = {f"f{i}": rng.randbytes(3000) for i in range(5)}
        with repo.writer(host="h") as w:
            for b in [*shared.values(), *files.values()]:
                w.add_blob(repo.chunk_id(b), b)
            sub = _tree(repo, w, shared, {})
            w.flush()  # two index files per backup
            root = _tree(repo, w, files, {"d": sub})
            sid = w.commit(tree=root, paths=["/"], host="h", tags=[], label=None, parent=None, stats={})
        expect[sid] = {**files, **{f"d/{n}": b for n, b in shared.items()}}
        return sid

    sids = [snap() for _ in range(4)]
    old = dict(st.blobs)
    forget(repo, ids=[sids[1]])
    del expect[sids[1]]
    prune(repo, PruneOptions(delete_margin_s=0, unindexed_min_age_s=0, keep_lists=3))
    for _ in range(2):
        snap()
    h = History(st, Repository.open(st, PW, state_dir=state, lease_skew_s=0), state, expect, old,
                pristine=dict(st.blobs))
    assert check(h.repo, read_data=True).ok
    assert not st.blobs.keys() & {"appendonly"} and not any(k.startswith(("garbage/", "locks/")) for k in st.blobs)
    assert any(k.startswith("index/") and k not in st.blobs for k in old), "prune deleted no index file"
    for key in (k for k in st.blobs if k.startswith("index/")):
        for p in IndexFile.decode(h.repo.ring, key, st.blobs[key][0]).packs:
            for e in p.entries:
                assert e[0] not in h.where, "a blob indexed twice would blur which snapshots a damage affects"
                h.where[e[0]] = (pack_key(p.pack_id), key, e[3], e[4])
    for sid in expect:
        h.reach[sid] = _reachable(h.repo, h.repo.load_snapshot(sid).tree)
    return h


def _object_id(key: str) -> str:
    """The id check uses for the object stored under ``key`` (manifests by snapshot id, the rest by key)."""
    return key[len("snapshots/"):] if key.startswith("snapshots/") else key


@dataclass
class Damage:
    what: str  # bitflip, truncate, zero, delete, swap, index-put-back, list-entry-put-back, list-rolled-back
    key: str  # the object damaged (or put back, or the newest list entry a rollback removed)
    affected: set[str]  # snapshots that must fail closed; every other listed one restores byte for byte
    harmless: bool = False  # nothing the current state relies on changed: check names it as a warning


def _affected(h: History, key: str, changed: tuple[int, int] | None = None) -> set[str]:
    """The snapshots whose data references the damaged part of the object under ``key`` (``changed``: the
    byte range of a pack that changed; None: all of it), computed from the pristine store. A pack's header and
    trailer are not read by restore, nor are the boxes of blobs no listed snapshot needs."""
    newest = max(k for k in h.pristine if k.startswith("snaplist/"))
    if key == "config" or key == newest:
        return set(h.expect)  # nothing opens / no list: every snapshot fails closed
    if key.startswith("snapshots/"):
        return {_object_id(key)}
    if key.startswith("index/"):
        return {sid for sid, blobs in h.reach.items() if any(h.where[b][1] == key for b in blobs)}
    if key.startswith("data/"):
        lo, hi = changed or (0, 1 << 62)

        def hit(b: bytes) -> bool:
            pk, _, off, ln = h.where[b]
            return pk == key and off < hi and lo < off + ln

        return {sid for sid, blobs in h.reach.items() if any(hit(b) for b in blobs)}
    return set()  # an older list entry: the newest one is authoritative


def _inflict(h: History, rng: random.Random) -> Damage | None:
    st, pristine = h.st, h.pristine
    st.blobs = dict(pristine)
    keys = sorted(k for k in pristine if not k.startswith("keys/"))
    lists = sorted(k for k in pristine if k.startswith("snaplist/"))
    what = rng.choices(["bitflip", "truncate", "zero", "delete", "swap", "index-put-back",
                        "list-entry-put-back", "list-rolled-back"], weights=[4, 3, 2, 3, 3, 2, 1, 2])[0]
    if what == "index-put-back":  # an index file prune deleted comes back
        key = rng.choice(sorted(k for k in h.old if k.startswith("index/") and k not in pristine))
        st.force(key, h.old[key][0])
        named = IndexFile.decode(h.repo.ring, key, h.old[key][0]).packs
        return Damage(what, key, set(), harmless=all(pack_key(p.pack_id) in pristine for p in named))
    if what == "list-entry-put-back":  # a list entry below the retained-history floor comes back
        key = rng.choice(sorted(k for k in h.old if k.startswith("snaplist/") and k not in pristine))
        st.force(key, h.old[key][0])
        return Damage(what, key, set(), harmless=True)
    if what == "list-rolled-back":  # an older snapshot list put back: newer entries gone, older ones back
        keep = rng.choice([*lists[:-1], "old"])
        for k in lists:
            if keep == "old" or k > keep:
                del st.blobs[k]
        if keep == "old":
            for k, v in h.old.items():
                if k.startswith("snaplist/"):
                    st.blobs[k] = v
        return Damage(what, lists[-1], set(h.expect))  # the client remembers the newest: every restore fails
    key = rng.choice(keys)
    data = pristine[key][0]
    changed: tuple[int, int] | None = None
    if what == "bitflip":
        b = bytearray(data)
        pos = rng.randrange(len(b))
        b[pos] ^= 1 << rng.randrange(8)
        st.force(key, bytes(b))
        changed = (pos, pos + 1)
    elif what == "truncate":
        cut = rng.randrange(len(data))
        st.force(key, data[:cut])
        changed = (cut, len(data))
    elif what == "zero":
        st.force(key, bytes(len(data)))
    elif what == "delete":
        del st.blobs[key]
    else:
        same = [k for k in keys if k != key and k.split("/")[0] == key.split("/")[0]]
        if not same:
            return None  # only one config
        other = rng.choice(same)
        st.force(key, pristine[other][0])
    return Damage(what, key, _affected(h, key, changed))


def _restore_outcome(h: History, tmp: Path) -> tuple[set[str], set[str], int]:
    """Restore every pristine snapshot with the real restore: (restored byte for byte, failed closed, snapshots
    that put a wrong byte on disk). Files a failed restore left behind must be exact too."""
    exact: set[str] = set()
    closed: set[str] = set()
    wrong = 0
    try:
        r: Repository | None = Repository.open(h.st, PW, state_dir=h.state)
    except FriezeError:
        r = None
    for sid, files in h.expect.items():
        target = tmp / sid
        try:
            if r is None:
                raise FriezeError("repository does not open")
            restore(r, sid, target, threads=1)
            ok = True
        except FriezeError:
            ok = False
        got = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()} \
            if target.exists() else {}
        bad = any(files.get(n) != b for n, b in got.items())
        wrong += bad
        if ok and got == files:
            exact.add(sid)
        elif not ok:
            closed.add(sid)
        else:
            wrong += not bad  # "succeeded" with missing or extra files
        shutil.rmtree(target, ignore_errors=True)
    return exact, closed, wrong


def _damage_rounds(tmp_path: Path, seed: int, rounds: int) -> None:
    h = _history(tmp_path)
    rng = random.Random(seed)
    kinds: Counter[str] = Counter()
    objects: Counter[str] = Counter()
    damaged = reported = named = named_warning = affected_closed = unaffected_exact = wrong = 0
    while sum(kinds.values()) < rounds:
        d = _inflict(h, rng)
        if d is None:
            continue
        kinds[d.what] += 1
        rep = check(h.repo, read_data=True)
        damaged += 1
        objects[d.key.split("/")[0]] += 1
        want = _object_id(d.key)
        sev = {p.severity for p in rep.problems if p.id == want}
        reported += not rep.ok or (bool(rep.problems) and d.harmless)
        is_named = bool(sev) if d.harmless else "error" in sev
        named += is_named
        named_warning += is_named and "error" not in sev
        assert d.harmless or not rep.ok, f"{d.what} of {d.key} not detected"
        assert is_named, f"{d.what} of {d.key}: check does not name {want}: {rep.to_json()}"
        exact, closed, bad = _restore_outcome(h, tmp_path / "out")
        wrong += bad
        assert bad == 0, f"{d.what} of {d.key}: a restore produced wrong bytes"
        assert closed == d.affected, f"{d.what} of {d.key}: failed closed {closed}, affected {d.affected}"
        assert exact == set(h.expect) - d.affected, f"{d.what} of {d.key}: unaffected snapshot did not restore"
        affected_closed += len(closed)
        unaffected_exact += len(exact)
    print(f"RESULT R-DAMAGE seed={seed} damaged={damaged} kinds={dict(sorted(kinds.items()))} "
          f"objects={dict(sorted(objects.items()))} "
          f"check_reported={reported} exact_id_named={named} of_which_warning={named_warning} "
          f"affected_failed_closed={affected_closed} unaffected_restored_exact={unaffected_exact} "
          f"wrong_bytes={wrong}")
    assert damaged == rounds == named == reported and wrong == 0


def test_random_damage_detected_with_ids(tmp_path: Path) -> None:
    """200 damaged objects in the default suite (one repository with history, restored to pristine between
    rounds): check names each damaged object by its exact id; the snapshots whose data references it fail
    closed on restore; every other snapshot restores byte for byte."""
    _damage_rounds(tmp_path, 1, 200)


@pytest.mark.heavy
def test_random_damage_detected_with_ids_heavy(tmp_path: Path) -> None:
    _damage_rounds(tmp_path, 3, 1000)


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
