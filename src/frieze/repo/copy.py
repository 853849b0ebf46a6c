"""Copy snapshots to another repository, re-encrypting under its keys and deduplicating against it.

Contract:

- Every blob is read from the source through ``read_blob`` (decrypted and verified) and written into the
  destination through a writer (compressed and encrypted under the destination's keys). Nothing unverified
  is copied; a damaged source blob aborts that snapshot's copy with the source's IntegrityError, and the
  destination commits nothing for it.
- Same dedup domain (the destination was initialised with ``copy_id_keys_from=source``): blob ids are equal,
  blobs the destination already has are not even read. Otherwise ids are recomputed under the destination's
  key and trees are rewritten (``frieze.repo.tree``), so both repositories stay self-consistent.
- A snapshot already copied (its manifest's ``stats.copied_from`` names the source snapshot) is skipped.
  Time, host, paths, tags and label are kept; ``parent`` is mapped when the parent was copied too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from frieze.repo.repository import Repository, RepoWriter
from frieze.repo.types import BlobKind


@dataclass
class CopyReport:
    copied: dict[str, str] = field(default_factory=dict)  # source id -> destination id
    skipped: list[str] = field(default_factory=list)
    blobs_new: int = 0
    blobs_reused: int = 0
    bytes_read: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _origin(src: Repository, sid: str) -> str:
    return f"{src.id}/{sid}"


class _Copier:
    def __init__(self, src: Repository, dst: Repository, w: RepoWriter, rep: CopyReport) -> None:
        self.src, self.dst, self.w, self.rep = src, dst, w, rep
        self.same = src.same_dedup_domain(dst)
        self.map: dict[bytes, bytes] = {}

    def data(self, bid: bytes) -> bytes:
        got = self.map.get(bid)
        if got is not None:
            return got
        if self.same and self.w.has(bid):
            self.rep.blobs_reused += 1
            self.map[bid] = bid
            return bid
        data = self.src.read_blob(bid)
        self.rep.bytes_read += len(data)
        nid = bid if self.same else self.dst.chunk_id(data)
        if self.w.add_blob(nid, data, kind=BlobKind.DATA):
            self.rep.blobs_new += 1
        else:
            self.rep.blobs_reused += 1
        self.map[bid] = nid
        return nid

    def tree(self, tid: bytes) -> bytes:
        got = self.map.get(tid)
        if got is not None:
            return got
        from frieze.repo import tree as T

        # Trees are always walked: a tree blob the destination has may be a dead entry whose children
        # prune has removed, so only per-blob presence counts.
        blob = self.src.read_blob(tid)
        self.rep.bytes_read += len(blob)
        nodes = T.decode_tree(blob, tid)
        for n in nodes:
            if n.subtree is not None:
                n.subtree = self.tree(n.subtree)
            if n.extents:
                n.extents = [T.Extent(None if e.id is None else self.data(e.id), e.length) for e in n.extents]
        out = blob if self.same else T.encode_tree(nodes)
        nid = tid if self.same else self.dst.chunk_id(out)
        if self.w.add_blob(nid, out, kind=BlobKind.TREE):
            self.rep.blobs_new += 1
        self.map[tid] = nid
        return nid


def copy_snapshots(src: Repository, dst: Repository, refs: list[str] | None = None, *, host: str = "copy",
                   lease_s: float = 300.0) -> CopyReport:
    """Copy the snapshots ``refs`` (ids, prefixes, ``latest``; default: all) from ``src`` into ``dst``."""
    rep = CopyReport()
    infos = src.list_snapshots()
    wanted = [src.load_snapshot(r).id for r in refs] if refs else [i.id for i in infos]
    order = {i.id: i.time for i in infos}
    wanted = sorted(set(wanted), key=lambda s: (order.get(s), s))
    done: dict[str, str] = {}
    for info in dst.list_snapshots():
        snap = dst.load_snapshot(info.id)
        o = snap.stats.get("copied_from") if isinstance(snap.stats, dict) else None
        if isinstance(o, str):
            done[o] = snap.id
    with dst.writer(host=host, lease_s=lease_s) as w:
        cp = _Copier(src, dst, w, rep)
        for sid in wanted:
            if _origin(src, sid) in done:
                rep.skipped.append(sid)
                continue
            s = src.load_snapshot(sid)
            root = cp.tree(s.tree)
            parent = done.get(_origin(src, s.parent)) if s.parent else None
            stats = dict(s.stats)
            stats["copied_from"] = _origin(src, sid)
            nid = w.commit(tree=root, paths=s.paths, host=s.host, tags=s.tags, label=s.label, parent=parent,
                           stats=stats, time=s.time)
            done[_origin(src, sid)] = nid
            rep.copied[sid] = nid
    return rep
