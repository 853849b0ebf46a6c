"""forget (drop snapshots from the authenticated list) and prune (two-phase garbage collection).

Contracts (docs/design/repository-format.md sections 6, 7, 10):

- Both refuse an append-only repository with :class:`Forbidden` before changing anything, and hold an
  exclusive lease (``Busy`` while any writer lease is live), checked (fenced) before every destructive step.
- forget: the new ``snaplist`` entry without the forgotten snapshots is its commit point; manifests are
  deleted after it.
- prune never deletes on incomplete information: a damaged index file, an unreadable tree or a live blob that
  no index lists aborts it (``IntegrityError``) before anything is removed.
- Order: repack → new index (superseding every index read) → a snapshot-list entry naming the new index set →
  delete old index files → garbage record →
  delete packs whose garbage record is older than ``delete_margin_s`` and unindexed packs older than
  ``unindexed_min_age_s``. A kill at any point leaves every listed snapshot restorable; the next prune
  completes. ``on_step`` (tests) is called with the name of each step as it completes.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from frieze.core.clock import iso, now, parse_iso
from frieze.core.errors import Forbidden, FriezeError, IntegrityError, NotFound, UsageError
from frieze.core.retention import Decision, RetentionPolicy, SnapshotRef, apply_policy
from frieze.repo.crypto import MAGIC_GARBAGE, open_object, seal_object
from frieze.repo.dedup import DedupIndex
from frieze.repo.index import INDEX_PREFIX, IndexFile, PackRecord, index_id
from frieze.repo.lock import EXCLUSIVE, Lease, read_locks
from frieze.repo.pack import DATA_PREFIX, PackWriter, pack_id_from_key, pack_key
from frieze.repo.reach import Walker, walk
from frieze.repo.repository import Repository
from frieze.repo.snapshots import LIST_PREFIX, SNAP_PREFIX, list_key, manifest_key
from frieze.repo.types import BlobKind, IndexEntry

GARBAGE_PREFIX = "garbage/"
Step = Callable[[str], None]


def _refuse_append_only(repo: Repository, what: str) -> None:
    if repo.append_only:
        raise Forbidden(f"repository is append-only: {what} refused (nothing was changed)", operation=what)


@dataclass
class ForgetReport:
    decisions: list[Decision] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "removed": self.removed,
                "decisions": [{"id": d.id, "keep": d.keep, "reasons": d.reasons} for d in self.decisions]}


def forget(repo: Repository, *, ids: list[str] | None = None, policy: RetentionPolicy | None = None,
           when: datetime | None = None, dry_run: bool = False, host: str = "forget", lease_s: float = 300.0,
           select: Callable[[dict[str, Any]], bool] | None = None, on_step: Step | None = None) -> ForgetReport:
    """Remove snapshots by id/prefix, or those ``policy`` does not keep (grouped by host + paths).

    ``select`` (given a list entry: id, time, host, paths, tags) limits the policy to the snapshots it accepts;
    the others are kept (reason ``"not selected"``)."""
    _refuse_append_only(repo, "forget")
    if not ids and policy is None:
        raise UsageError("forget needs snapshot ids or a retention policy")
    rep = ForgetReport(dry_run=dry_run)
    sl = repo.catalog.current()
    if ids:
        rep.removed = sorted({repo.catalog.find(sl, i)["id"] for i in ids})
        rep.decisions = [Decision(e["id"], e["id"] not in rep.removed,
                                  ["named"] if e["id"] in rep.removed else ["not named"]) for e in sl.snapshots]
    else:
        assert policy is not None
        chosen = [e for e in sl.snapshots if select is None or select(e)]
        refs = [SnapshotRef(e["id"], parse_iso(e["time"]), (e["host"], tuple(e["paths"])), tuple(e["tags"]))
                for e in chosen]
        rep.decisions = apply_policy(refs, policy, when or now())
        picked = {e["id"] for e in chosen}
        rep.decisions += [Decision(e["id"], True, ["not selected"]) for e in sl.snapshots if e["id"] not in picked]
        rep.removed = sorted(d.id for d in rep.decisions if not d.keep)
    if dry_run or not rep.removed:
        return rep
    gone = set(rep.removed)
    with Lease(repo.store, repo.ring, EXCLUSIVE, host, lease_s, skew_s=repo.lease_skew_s) as lease:
        repo.catalog.commit(lambda cur: [e for e in cur.snapshots if e["id"] not in gone],
                            before_put=lambda: lease.ensure_valid("forget's snapshot list commit"))
        if on_step:
            on_step("forget_list_committed")
        for sid in rep.removed:
            lease.ensure_valid("deleting a forgotten manifest")
            repo.store.delete(manifest_key(sid))
    return rep


@dataclass
class PruneOptions:
    delete_margin_s: float = 3600.0
    unindexed_min_age_s: float = 6 * 3600.0
    repack_threshold: float = 0.10
    keep_lists: int = 16
    lease_s: float = 300.0
    dry_run: bool = False


@dataclass
class PruneReport:
    live_blobs: int = 0
    packs_before: int = 0
    packs_kept: int = 0
    packs_repacked: int = 0
    packs_dropped: int = 0
    blobs_repacked: int = 0
    packs_deleted: int = 0
    unindexed_deleted: int = 0
    bytes_deleted: int = 0
    index_files_replaced: int = 0
    garbage_pending: int = 0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _fresh_index(repo: Repository) -> tuple[DedupIndex, list[str]]:
    """Every index file (all are superseded by prune's new one), and an index of those no other supersedes."""
    idx = DedupIndex()
    files: list[tuple[str, IndexFile]] = []
    for b in repo.store.list(INDEX_PREFIX):
        try:
            f = IndexFile.decode(repo.ring, b.key, repo.store.get(b.key))
        except FriezeError as e:
            raise IntegrityError(f"prune refused: index file {b.key} cannot be read ({e.message}); "
                                 f"run check and repair it first (nothing was deleted)", object=b.key) from None
        files.append((b.key, f))
    superseded = {s for _, f in files for s in f.supersedes}
    for key, f in files:
        if index_id(key) in superseded:
            continue  # left over by an interrupted prune (or put back): its successor lists every live blob
        for p in f.packs:
            idx.add_pack(p.pack_id, p.size, p.entries)
    idx.compact()
    return idx, [k for k, _ in files]


def prune(repo: Repository, opts: PruneOptions | None = None, *, walker: Walker | None = None,
          host: str = "prune", on_step: Step | None = None) -> PruneReport:
    o = opts or PruneOptions()
    _refuse_append_only(repo, "prune")
    rep = PruneReport(dry_run=o.dry_run)
    step = on_step or (lambda _s: None)
    st = repo.store
    with Lease(st, repo.ring, EXCLUSIVE, host, o.lease_s, skew_s=repo.lease_skew_s) as lease:
        # 1. mark
        idx, old_index_keys = _fresh_index(repo)
        sl = repo.catalog.current()
        roots = [(e["id"], bytes.fromhex(e["tree"])) for e in sl.snapshots]

        def read_tree(tid: bytes) -> bytes:
            e = idx.lookup(tid)
            if e is None or e.kind != BlobKind.TREE:
                raise NotFound(f"tree {tid.hex()} is not indexed")
            return repo.read_entry(e)

        reach = walk(roots, read_tree, walker)
        if reach.errors:
            tid, sid, err = reach.errors[0]
            raise IntegrityError(f"prune refused: tree {tid.hex()} of snapshot {sid} cannot be read "
                                 f"({err.message}); nothing was deleted", tree=tid.hex(), snapshot=sid)
        live: set[bytes] = set(reach.trees) | set(reach.data)
        missing = [b for b in live if not idx.has(b)]
        if missing:
            raise IntegrityError(f"prune refused: {len(missing)} live blob(s) are in no index (first: "
                                 f"{missing[0].hex()}); nothing was deleted", blob=missing[0].hex())
        rep.live_blobs = len(live)
        step("marked")
        # 2. classify packs
        by_pack: dict[bytes, list[IndexEntry]] = {}
        for e in idx.entries():
            by_pack.setdefault(e.pack_id, []).append(e)
        rep.packs_before = len(by_pack)
        keep: list[bytes] = []
        repack: list[bytes] = []
        drop: list[bytes] = []
        for pid, ents in by_pack.items():
            live_bytes = sum(e.length for e in ents if e.blob_id in live)
            total = sum(e.length for e in ents) or 1
            if live_bytes == 0:
                drop.append(pid)
            elif (total - live_bytes) / total >= o.repack_threshold:
                repack.append(pid)
            else:
                keep.append(pid)
        kept_set = set(keep)
        covered = {e.blob_id for pid in keep for e in by_pack[pid]}
        to_copy: dict[bytes, IndexEntry] = {}
        for pid in repack:
            for e in by_pack[pid]:
                if e.blob_id in live and e.blob_id not in covered and e.blob_id not in to_copy:
                    to_copy[e.blob_id] = e
        rep.packs_kept, rep.packs_repacked, rep.packs_dropped = len(keep), len(repack), len(drop)
        rep.blobs_repacked = len(to_copy)
        if o.dry_run:
            return rep
        # 3. repack (verify every copied blob, then copy its box verbatim: it is bound to id+kind, not pack)
        new_packs: list[PackRecord] = []
        if to_copy:
            lease.ensure_valid("repacking")
            pw = PackWriter(st, repo.ring, repo.config.pack_size, new_packs.append)
            try:
                for e in to_copy.values():
                    box = st.get(pack_key(e.pack_id), e.offset, e.length)
                    repo.read_entry(e, box)
                    pw.add(e.blob_id, int(e.kind), e.flags, e.raw_length, b"", box)
                pw.flush()
            finally:
                pw.close()
            step("repacked")
        # 4. new index superseding every index read
        records = [PackRecord(pid, idx.pack_size(pid) or 0,
                              [(e.blob_id, int(e.kind), e.flags, e.offset, e.length, e.raw_length)
                               for e in by_pack[pid]]) for pid in keep]
        records += new_packs
        lease.ensure_valid("writing the new index")
        supersedes = [k[len(INDEX_PREFIX):] for k in old_index_keys]
        new_key = repo.write_index(records, supersedes=supersedes) if records or old_index_keys else None
        step("index_written")
        list_seq = sl.seq
        if new_key is not None:
            # record the new index set in the authenticated list before the old files go (check names a
            # missing index file from this set)
            old_ids = {index_id(k) for k in old_index_keys}
            now_set = ({index_id(k) for k in repo.index_keys()} - old_ids) | {index_id(new_key)}
            list_seq = repo.catalog.commit(
                lambda cur: list(cur.snapshots),
                before_put=lambda: lease.ensure_valid("recording the new index set in the snapshot list"),
                indexes=lambda cur: sorted(now_set)).seq
            step("index_listed")
        for k in old_index_keys:
            lease.ensure_valid("deleting a superseded index file")
            if k != new_key:
                st.delete(k)
            step("old_index_deleted")
        rep.index_files_replaced = len(old_index_keys)
        # 5. garbage record for the packs that left the index
        gone = [pid for pid in repack + drop if pid not in kept_set]
        if gone:
            gkey = GARBAGE_PREFIX + secrets.token_hex(16)
            body = json.dumps({"time": iso(now()), "packs": [p.hex() for p in gone]}).encode()
            st.put(gkey, seal_object(repo.ring, MAGIC_GARBAGE, gkey, body))
            step("garbage_recorded")
        # 6. phase two: delete what has been garbage for longer than the margin
        current = {r.pack_id for r in records}
        wall = time.time()
        for b in list(st.list(GARBAGE_PREFIX)):
            try:
                g = json.loads(open_object(repo.ring, MAGIC_GARBAGE, b.key, st.get(b.key)))
                gtime = parse_iso(g["time"]).timestamp()
                packs = [bytes.fromhex(p) for p in g["packs"]]
            except (FriezeError, ValueError, KeyError, TypeError):
                continue  # unreadable record: leave it (check reports packs as unindexed)
            if wall - gtime < o.delete_margin_s:
                rep.garbage_pending += len(packs)
                continue
            for pid in packs:
                if pid in current:
                    continue
                lease.ensure_valid("deleting a garbage pack")
                info = st.stat(pack_key(pid))
                st.delete(pack_key(pid))
                if info is not None:
                    rep.packs_deleted += 1
                    rep.bytes_deleted += info.size
                step("pack_deleted")
            st.delete(b.key)
        # unindexed packs (interrupted backups, interrupted prunes) older than their margin
        for b in list(st.list(DATA_PREFIX)):
            upid = pack_id_from_key(b.key)
            if upid is None or upid in current or upid in by_pack:
                continue
            if wall - b.mtime < o.unindexed_min_age_s:
                continue
            lease.ensure_valid("deleting an unindexed pack")
            st.delete(b.key)
            rep.unindexed_deleted += 1
            rep.bytes_deleted += b.size
            step("pack_deleted")
        # 7. housekeeping: orphan manifests, old list entries, expired locks
        listed = {e["id"] for e in sl.snapshots}
        for b in list(st.list(SNAP_PREFIX)):
            sid = b.key[len(SNAP_PREFIX):]
            if sid not in listed and wall - b.mtime >= o.unindexed_min_age_s:
                if repo.catalog.seqs() and repo.catalog.seqs()[-1] != list_seq:
                    break  # someone committed meanwhile (cannot happen under the lease; be safe)
                st.delete(b.key)
        seqs = repo.catalog.seqs()
        if o.keep_lists > 0 and len(seqs) > o.keep_lists:
            # raise the retained-history floor in an authenticated entry first, then delete below it
            lease.ensure_valid("trimming the snapshot list history")
            floor_list = repo.catalog.commit(lambda cur: list(cur.snapshots),
                                             history_from=lambda new_seq: new_seq - o.keep_lists + 1)
            for s in repo.catalog.seqs():
                if s < floor_list.history_from:
                    st.delete(list_key(s))
        for lk in read_locks(st, repo.ring):
            if lk.lease != lease.id and lk.readable and not lk.live(wall, repo.lease_skew_s):
                st.delete(lk.key)
        step("done")
    repo.reload_index()
    return rep


__all__ = ["LIST_PREFIX", "ForgetReport", "PruneOptions", "PruneReport", "forget", "prune"]
