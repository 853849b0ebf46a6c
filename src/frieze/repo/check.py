"""Repository check: structure, and optionally every byte (``read_data``, all packs or a rotating subset).

Contract: :func:`check` never changes the repository and never raises for damage it finds: every problem is
a :class:`Problem` with the object's kind and id; ``report.ok`` is False when any problem is an error.
It does raise for problems that stop it before it can look (wrong password, unreachable store).

Structure: config and key slots parse; every index file decrypts; every pack an index names exists with the
recorded size; the snapshot list chain is intact, not rolled back (given a state directory), every listed
manifest matches its list entry; every tree of every snapshot is indexed, decrypts and decodes, and every
blob it references is indexed with the right kind. ``read_data``: each selected pack hashes to its id, its
trailer authenticates, every blob decrypts, decompresses and matches its id, and the index agrees with it.
Subset ``(i, m)`` selects packs whose id's first 4 bytes mod ``m`` equal ``i - 1`` (1 <= i <= m).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from frieze.core.errors import FormatError, FriezeError, IntegrityError, NotFound
from frieze.repo.appendonly import MARKER_KEY, verify_marker
from frieze.repo.config import CONFIG_KEY, RepoConfig
from frieze.repo.crypto import pack_hash
from frieze.repo.dedup import DedupIndex
from frieze.repo.index import INDEX_PREFIX, IndexFile, index_id
from frieze.repo.keys import KEYS_PREFIX, parse_slot
from frieze.repo.lock import read_locks
from frieze.repo.pack import DATA_PREFIX, pack_id_from_key, pack_key, parse_trailer
from frieze.repo.reach import Walker, walk
from frieze.repo.repository import Repository
from frieze.repo.snapshots import SNAP_PREFIX, SnapList, decode_manifest, list_key
from frieze.repo.types import BlobKind, IndexEntry


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" | "warning"
    kind: str  # config, key, index, pack, snaplist, snapshot, tree, blob, lock, appendonly
    id: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "kind": self.kind, "id": self.id, "message": self.message}


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def error(self, kind: str, oid: str, msg: str) -> None:
        self.problems.append(Problem("error", kind, oid, msg))

    def warn(self, kind: str, oid: str, msg: str) -> None:
        self.problems.append(Problem("warning", kind, oid, msg))

    def ids(self) -> set[str]:
        return {p.id for p in self.problems}

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "counts": self.counts, "problems": [p.to_dict() for p in self.problems]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def parse_subset(text: str) -> tuple[int, int]:
    """``"i/m"`` → (i, m) with 1 <= i <= m."""
    try:
        a, b = text.split("/")
        i, m = int(a), int(b)
    except ValueError:
        raise FormatError(f"bad subset {text!r}: expected i/m such as 1/7") from None
    if not 1 <= i <= m:
        raise FormatError(f"bad subset {text!r}: need 1 <= i <= m")
    return i, m


def in_subset(pack_id: bytes, subset: tuple[int, int] | None) -> bool:
    if subset is None:
        return True
    i, m = subset
    return int.from_bytes(pack_id[:4], "big") % m == i - 1


def check(repo: Repository, *, read_data: bool = False, subset: tuple[int, int] | None = None,
          walker: Walker | None = None, threads: int = 2,
          progress: Callable[[str, int, int], None] | None = None) -> CheckReport:
    rep = CheckReport()
    st = repo.store
    # -- config and key slots
    try:
        RepoConfig.decode(repo.ring, st.get(CONFIG_KEY))
    except FriezeError as e:
        rep.error("config", CONFIG_KEY, e.message)
    for b in st.list(KEYS_PREFIX):
        try:
            parse_slot(st.get(b.key), b.key)
        except FriezeError as e:
            rep.error("key", b.key, e.message)
    for lk in read_locks(st, repo.ring):
        if not lk.readable:
            rep.warn("lock", lk.key, "lock object does not authenticate (damaged or foreign)")
    bad_marker = verify_marker(st, repo.ring, repo.id)
    if bad_marker is not None:
        rep.error("appendonly", MARKER_KEY, f"{bad_marker} (the repository stays append-only)")
    # -- packs present
    present: dict[bytes, int] = {}
    for b in st.list(DATA_PREFIX):
        pid = pack_id_from_key(b.key)
        if pid is None or pack_key(pid) != b.key:
            rep.warn("pack", b.key, "unexpected object in data/")
            continue
        present[pid] = b.size
    # -- index files → a fresh index (never trust what is cached in memory), skipping superseded files as
    # readers do
    idx = DedupIndex()
    index_of_pack: dict[bytes, str] = {}
    n_index = 0
    files: list[tuple[str, IndexFile]] = []
    for b in st.list(INDEX_PREFIX):
        n_index += 1
        try:
            files.append((b.key, IndexFile.decode(repo.ring, b.key, st.get(b.key))))
        except FriezeError as e:
            rep.error("index", b.key, e.message)
    index_ids = {index_id(b.key) for b in st.list(INDEX_PREFIX)}
    superseded = {sid: key for key, f in files for sid in f.supersedes}
    for key, f in files:
        by = superseded.get(index_id(key))
        gone = [p.pack_id for p in f.packs if p.pack_id not in present]
        if by is not None:
            if gone:  # prune deletes packs only after every index naming them: this file came back
                rep.error("index", key, f"index file superseded by {by} is present again and names "
                          f"{len(gone)} deleted pack(s) (first {pack_key(gone[0])}): an older index put back "
                          f"(readers ignore it)")
            else:
                rep.warn("index", key, f"index file is superseded by {by} and ignored (an interrupted prune, or "
                         f"an older index put back); prune deletes it")
            continue
        if gone:
            rep.error("index", key, f"index file names {len(gone)} missing pack(s) (first {pack_key(gone[0])}): "
                      f"an older index put back, or packs deleted")
        for p in f.packs:
            idx.add_pack(p.pack_id, p.size, p.entries)
            index_of_pack.setdefault(p.pack_id, key)
    idx.compact()
    # -- packs against the index
    for pid, size in zip(idx.pack_ids, idx.pack_sizes, strict=True):
        key = pack_key(pid)
        if pid not in present:
            rep.error("pack", key, f"pack is missing (named by {index_of_pack.get(pid)})")
        elif present[pid] != size:
            rep.error("pack", key, f"pack has {present[pid]} bytes, the index says {size} (truncated or replaced)")
    indexed = set(idx.pack_ids)
    for pid in present:
        if pid not in indexed:
            rep.warn("pack", pack_key(pid), "pack is in no index (an interrupted backup; prune removes it)")
    # -- snapshot list and manifests
    cat = repo.catalog
    seqs = cat.seqs()
    listed: list[dict[str, Any]] = []
    current_seq = 0
    cur = SnapList(0, None, "")
    try:
        cur = cat.current()
        listed, current_seq = cur.snapshots, cur.seq
    except FriezeError as e:
        obj = e.details.get("object")
        rep.error("snaplist", obj if isinstance(obj, str) else (list_key(seqs[-1]) if seqs else "snaplist/"),
                  e.message)
        for s in reversed(seqs):  # fall back to the newest readable one to keep checking snapshots
            try:
                cur = cat.load(s)
                listed, current_seq = cur.snapshots, cur.seq
                break
            except FriezeError:
                continue
    if cur.indexes is not None and seqs and current_seq == seqs[-1]:  # index files the newest list says exist
        for iid in sorted(set(cur.indexes) - index_ids):
            rep.error("index", INDEX_PREFIX + iid, f"index file named by {list_key(current_seq)} is missing")
    if seqs:
        floor = cur.history_from if current_seq == seqs[-1] else seqs[0]
        for s in seqs:
            if s < floor:
                rep.warn("snaplist", list_key(s), f"entry below the retained-history floor {floor} (an "
                         f"interrupted trim, or an older entry put back); prune deletes it")
        for gap in sorted(set(range(floor, seqs[-1] + 1)) - set(seqs)):
            rep.error("snaplist", list_key(gap), "snapshot list entry is missing inside the chain (history gap)")
    prev_hash: str | None = None
    prev_seq: int | None = None
    for s in seqs:
        try:
            sl = cat.load(s)
        except FriezeError as e:
            if s != (seqs[-1] if seqs else None):
                rep.error("snaplist", list_key(s), e.message)
            prev_hash, prev_seq = None, None
            continue
        if prev_seq is not None and prev_seq == s - 1 and prev_hash is not None and sl.prev != prev_hash:
            rep.error("snaplist", list_key(s), f"does not chain to {list_key(prev_seq)} (history replaced)")
        prev_hash, prev_seq = sl.hash, s
    roots: list[tuple[str, bytes]] = []
    listed_ids = set()
    for lent in listed:
        sid = str(lent.get("id"))
        listed_ids.add(sid)
        try:
            snap = cat.load_manifest(lent)
            roots.append((snap.id, snap.tree))
        except FriezeError as e:
            rep.error("snapshot", sid, e.message)
            try:
                roots.append((sid, bytes.fromhex(lent["tree"])))  # still check its data from the list entry
            except (KeyError, ValueError):
                pass
    for b in st.list(SNAP_PREFIX):
        sid = b.key[len(SNAP_PREFIX):]
        if sid in listed_ids:
            continue
        try:
            m = decode_manifest(repo.ring, sid, st.get(b.key))
        except FriezeError as e:
            rep.warn("snapshot", sid, f"unlisted manifest does not authenticate: {e.message}")
            continue
        if m.seq > current_seq:
            rep.warn("snapshot", sid, f"manifest (sequence {m.seq}) is newer than the snapshot list "
                     f"(sequence {current_seq}) and not in it: a commit interrupted before its commit point, "
                     f"or a rolled-back snapshot list")
    # -- trees and referenced blobs
    def read_tree(tid: bytes) -> bytes:
        ent = idx.lookup(tid)
        if ent is None:
            raise NotFound(f"tree {tid.hex()} is not indexed")
        if ent.kind != BlobKind.TREE:
            raise IntegrityError(f"blob {tid.hex()} is indexed as {ent.kind.name.lower()}, not tree")
        return repo.read_entry(ent)

    reach = walk(roots, read_tree, walker)
    for tid, sid, err in reach.errors:
        rep.error("tree", tid.hex(), f"{err.message} (snapshot {sid})")
    for did, tid in reach.data.items():
        ent = idx.lookup(did)
        if ent is None:
            rep.error("blob", did.hex(), f"data blob referenced by tree {tid.hex()} is not indexed")
        elif ent.kind != BlobKind.DATA:
            rep.error("blob", did.hex(), f"blob referenced as data by tree {tid.hex()} is indexed as "
                      f"{ent.kind.name.lower()}")
    # -- read data
    n_read = 0
    if read_data:
        by_pack: dict[bytes, list[IndexEntry]] = {}
        for ent in idx.entries():
            by_pack.setdefault(ent.pack_id, []).append(ent)
        chosen = sorted(p for p in present if in_subset(p, subset))

        def one(pid: bytes) -> list[Problem]:
            return _read_pack(repo, pid, by_pack.get(pid, []))

        with ThreadPoolExecutor(max(1, threads)) as ex:
            for done, probs in enumerate(ex.map(one, chosen), 1):
                rep.problems.extend(probs)
                n_read += 1
                if progress is not None:
                    progress("read-data", done, len(chosen))
    rep.counts = {"index_files": n_index, "packs": len(present), "indexed_blobs": len(idx),
                  "snapshots": len(listed), "trees": len(reach.trees), "data_blobs": len(reach.data),
                  "packs_read": n_read}
    return rep


def _read_pack(repo: Repository, pid: bytes, entries: list[IndexEntry]) -> list[Problem]:
    key = pack_key(pid)
    out: list[Problem] = []
    try:
        data = repo.store.get(key)
    except FriezeError as exc:
        return [Problem("error", "pack", key, exc.message)]
    if pack_hash(data) != pid:
        out.append(Problem("error", "pack", key, "pack content does not hash to its id (damaged or swapped)"))
    try:
        trailer = parse_trailer(repo.ring, data, key)
    except FriezeError as exc:
        out.append(Problem("error", "pack", key, exc.message))
        trailer = []
    seen = set()
    for bid, kind, flags, off, ln, raw in trailer:
        seen.add((bid, off))
        e = IndexEntry(bid, pid, off, ln, raw, BlobKind(kind), flags)
        try:
            repo.read_entry(e, bytes(data[off:off + ln]))
        except FriezeError as err:
            out.append(Problem("error", "blob", bid.hex(), err.message))
    if trailer:
        for e in entries:
            if (e.blob_id, e.offset) not in seen:
                out.append(Problem("error", "blob", e.blob_id.hex(),
                                   f"index places it at offset {e.offset} of pack {pid.hex()}, the pack does not"))
    else:
        for e in entries:  # no trailer: verify each indexed blob on its own
            try:
                repo.read_entry(e, bytes(data[e.offset:e.offset + e.length]))
            except FriezeError as err:
                out.append(Problem("error", "blob", e.blob_id.hex(), err.message))
    return out
