"""Snapshot manifests and the authenticated snapshot list.

Contracts (docs/design/repository-format.md sections 6 and 9):

- A manifest ``snapshots/<id>`` is sealed with AD = header + key, so it cannot be forged or swapped.
- The snapshot list is the chain ``snaplist/<seq>`` (write-once, created with create-if-absent, so two
  commits can never both take the same sequence number). The newest entry is authoritative; it carries the
  BLAKE3 of the previous entry and of every listed manifest.
- With a ``state_dir``, the highest sequence number and its hash are remembered per repository; a lower one
  later (an older list put back, newer entries deleted) raises :class:`IntegrityError` "rolled back".
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from frieze.core.clock import iso, now, parse_iso
from frieze.core.errors import AlreadyExists, IntegrityError, NotFound, UsageError
from frieze.repo.blobstore.base import BlobStore
from frieze.repo.crypto import MAGIC_SNAPLIST, MAGIC_SNAPSHOT, KeyRing, object_hash, open_object, seal_object
from frieze.repo.types import Snapshot, SnapshotInfo

SNAP_PREFIX = "snapshots/"
LIST_PREFIX = "snaplist/"


def manifest_key(snap_id: str) -> str:
    return SNAP_PREFIX + snap_id


def list_key(seq: int) -> str:
    return f"{LIST_PREFIX}{seq:016d}"


def encode_manifest(ring: KeyRing, snap: Snapshot, extra: dict[str, Any] | None = None) -> bytes:
    d = snap.to_dict()
    d.update(extra or {})
    return seal_object(ring, MAGIC_SNAPSHOT, manifest_key(snap.id), json.dumps(d, sort_keys=True).encode())


def decode_manifest(ring: KeyRing, snap_id: str, data: bytes) -> Snapshot:
    key = manifest_key(snap_id)
    d = json.loads(open_object(ring, MAGIC_SNAPSHOT, key, data))
    try:
        s = Snapshot(id=str(d["id"]), seq=int(d["seq"]), time=parse_iso(d["time"]), host=str(d["host"]),
                     paths=list(d["paths"]), tags=list(d["tags"]), parent=d.get("parent"),
                     tree=bytes.fromhex(d["tree"]), label=d.get("label"), stats=dict(d.get("stats") or {}))
    except (KeyError, ValueError, TypeError) as e:
        raise IntegrityError(f"{key}: malformed manifest ({e})", object=key) from None
    if s.id != snap_id:
        raise IntegrityError(f"{key}: manifest names snapshot {s.id}, not {snap_id}", object=key)
    return s


@dataclass
class SnapList:
    """One decrypted ``snaplist/<seq>`` entry (seq 0 = the empty list before the first commit)."""

    seq: int
    prev: str | None
    time: str
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    hash: str | None = None  # BLAKE3 of the object's bytes
    #: The oldest sequence number still kept (prune raises it before deleting older entries); every entry
    #: from here to ``seq`` must exist.
    history_from: int = 1
    #: The index files (32-hex ids) that existed when this entry was committed and must still exist
    #: (``check`` names a missing one); None in lists written before this field existed (not checked).
    indexes: list[str] | None = None

    def infos(self) -> list[SnapshotInfo]:
        out = [SnapshotInfo(id=e["id"], seq=int(e["seq"]), time=parse_iso(e["time"]), host=e["host"],
                            paths=list(e["paths"]), tags=list(e["tags"]), tree=bytes.fromhex(e["tree"]))
               for e in self.snapshots]
        out.sort(key=lambda i: (i.time, i.id))
        return out

    def body(self) -> bytes:
        d: dict[str, Any] = {"seq": self.seq, "prev": self.prev, "time": self.time, "snapshots": self.snapshots,
                             "history_from": self.history_from}
        if self.indexes is not None:
            d["indexes"] = self.indexes
        return json.dumps(d, sort_keys=True).encode()


def list_entry(snap: Snapshot, manifest_bytes: bytes) -> dict[str, Any]:
    return {"id": snap.id, "seq": snap.seq, "time": iso(snap.time), "host": snap.host, "paths": list(snap.paths),
            "tags": list(snap.tags), "tree": snap.tree.hex(), "manifest": object_hash(manifest_bytes)}


def default_state_dir() -> Path:
    """Where a client remembers what it has seen (``$XDG_STATE_HOME/frieze`` or ``~/.local/state/frieze``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "frieze"


class RollbackDetected(IntegrityError):
    """The snapshot list is older than one this client has already seen."""

    code = "integrity.rollback"


class SnapshotCatalog:
    """Reads and commits the snapshot list; remembers the newest sequence seen in ``state_dir``."""

    def __init__(self, store: BlobStore, ring: KeyRing, repo_id: str, state_dir: Path | None) -> None:
        self.store = store
        self.ring = ring
        self.repo_id = repo_id
        self.state_dir = state_dir

    # -- state ----------------------------------------------------------------------------------------------
    def _state_path(self) -> Path | None:
        return None if self.state_dir is None else self.state_dir / f"{self.repo_id}.snaplist.json"

    def remembered(self) -> tuple[int, str | None]:
        p = self._state_path()
        if p is None or not p.exists():
            return 0, None
        try:
            d = json.loads(p.read_text())
            return int(d["seq"]), d.get("hash")
        except (ValueError, KeyError, OSError):
            return 0, None

    def remember(self, sl: SnapList) -> None:
        p = self._state_path()
        if p is None:
            return
        seq, h = self.remembered()
        if sl.seq < seq or (sl.seq == seq and sl.hash == h):
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".snaplist-")
        with os.fdopen(fd, "w") as f:
            json.dump({"seq": sl.seq, "hash": sl.hash}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    # -- reading --------------------------------------------------------------------------------------------
    def seqs(self) -> list[int]:
        out = []
        for b in self.store.list(LIST_PREFIX):
            name = b.key[len(LIST_PREFIX):]
            if name.isdigit():
                out.append(int(name))
        return sorted(out)

    def load(self, seq: int) -> SnapList:
        key = list_key(seq)
        data = self.store.get(key)
        d = json.loads(open_object(self.ring, MAGIC_SNAPLIST, key, data))
        try:
            sl = SnapList(seq=int(d["seq"]), prev=d.get("prev"), time=str(d["time"]),
                          snapshots=list(d["snapshots"]), hash=object_hash(data),
                          history_from=int(d.get("history_from", 1)),
                          indexes=None if d.get("indexes") is None else [str(x) for x in d["indexes"]])
        except (KeyError, ValueError, TypeError) as e:
            raise IntegrityError(f"{key}: malformed snapshot list ({e})", object=key) from None
        if sl.seq != seq:
            raise IntegrityError(f"{key}: says sequence {sl.seq}", object=key)
        return sl

    def current(self) -> SnapList:
        """The newest list, checked against the remembered state (rollback detection)."""
        seqs = self.seqs()
        sl = self.load(seqs[-1]) if seqs else SnapList(0, None, iso(now()))
        rseq, rhash = self.remembered()
        if sl.seq < rseq:
            raise RollbackDetected(f"snapshot list rolled back: {list_key(rseq)}, seen by this client, is gone; "
                                   f"the repository's newest is sequence {sl.seq}",
                                   object=list_key(rseq), seen=rseq, found=sl.seq)
        if sl.seq == rseq and rhash is not None and sl.hash != rhash:
            raise RollbackDetected(f"snapshot list {list_key(sl.seq)} differs from the one this client saw",
                                   object=list_key(sl.seq))
        if rseq and sl.seq > rseq and rhash is not None and (sl.seq - rseq) <= 64:
            self._verify_chain(rseq, rhash, sl)
        self.remember(sl)
        return sl

    def _verify_chain(self, from_seq: int, from_hash: str, to: SnapList) -> None:
        cur = to
        while cur.seq > from_seq + 1:
            try:
                cur = self.load(cur.seq - 1)
            except NotFound:
                return  # pruned history: nothing more to compare
        if cur.prev != from_hash:
            raise RollbackDetected(f"snapshot list {list_key(cur.seq)} does not chain to the "
                                   f"{list_key(from_seq)} this client saw (history replaced)",
                                   object=list_key(cur.seq))

    def find(self, sl: SnapList, ref: str) -> dict[str, Any]:
        """Resolve ``latest``, a full id or a unique prefix in ``sl``; NotFound/UsageError naming it."""
        if ref == "latest":
            if not sl.snapshots:
                raise NotFound("no snapshots in the repository (asked for 'latest')", object="latest")
            return max(sl.snapshots, key=lambda e: (e["time"], e["id"]))
        hits = [e for e in sl.snapshots if e["id"].startswith(ref)] if ref else []
        if not hits:
            raise NotFound(f"snapshot {ref!r} not found", object=ref)
        if len(hits) > 1:
            raise UsageError(f"snapshot prefix {ref!r} is ambiguous ({len(hits)} matches)", object=ref)
        return hits[0]

    def load_manifest(self, entry: dict[str, Any]) -> Snapshot:
        key = manifest_key(entry["id"])
        try:
            data = self.store.get(key)
        except NotFound:
            raise IntegrityError(f"{key}: listed snapshot's manifest is missing", object=key) from None
        if object_hash(data) != entry["manifest"]:
            raise IntegrityError(f"{key}: manifest does not match the snapshot list (swapped or replaced)",
                                 object=key)
        snap = decode_manifest(self.ring, entry["id"], data)
        if snap.seq != int(entry["seq"]) or snap.tree.hex() != entry["tree"]:
            raise IntegrityError(f"{key}: manifest disagrees with the snapshot list", object=key)
        return snap

    # -- writing --------------------------------------------------------------------------------------------
    def commit(self, mutate: Callable[[SnapList], list[dict[str, Any]]],
               before_put: Callable[[], None] | None = None, attempts: int = 1000,
               history_from: Callable[[int], int] | None = None,
               indexes: Callable[[SnapList], list[str] | None] | None = None) -> SnapList:
        """Create ``snaplist/<seq+1>`` = ``mutate(current)``; on a lost race, reload and retry.

        ``history_from(new_seq)`` may raise the retained-history floor (prune); it never goes down.
        ``indexes(current)`` gives the new entry's index-file set (default: the current entry's)."""
        for _ in range(attempts):
            cur = self.current()
            new = SnapList(cur.seq + 1, cur.hash, iso(now()), mutate(cur), history_from=cur.history_from,
                           indexes=indexes(cur) if indexes is not None else cur.indexes)
            if history_from is not None:
                new.history_from = max(cur.history_from, min(history_from(new.seq), new.seq))
            key = list_key(new.seq)
            data = seal_object(self.ring, MAGIC_SNAPLIST, key, new.body())
            if before_put is not None:
                before_put()
            try:
                self.store.put(key, data)
            except AlreadyExists:
                continue
            caps = getattr(self.store, "capabilities", None)
            if caps is not None and not getattr(caps, "atomic_create", True):
                # a store without atomic create-if-absent: read back to learn whether our entry won
                try:
                    if self.store.get(key) != data:
                        continue
                except NotFound:
                    continue
            new.hash = object_hash(data)
            self.remember(new)
            return new
        raise IntegrityError("could not commit the snapshot list: too many concurrent commits")


def new_snapshot(snap_id: str, seq: int, when: datetime, host: str, paths: list[str], tags: list[str],
                 parent: str | None, tree: bytes, label: Any, stats: dict[str, Any]) -> Snapshot:
    return Snapshot(id=snap_id, seq=seq, time=when, host=host, paths=list(paths), tags=list(tags), parent=parent,
                    tree=tree, label=label, stats=dict(stats))
