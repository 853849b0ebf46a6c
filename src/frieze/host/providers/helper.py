"""HelperProvider: a volume that another node snapshots (a shared volume: cluster file system, SAN LUN).

This node cannot make the image itself. The contract it represents:

1. The volume is **designated** to one node (:meth:`HelperProvider.designate`); without a designation the
   volume is NotSupported here.
2. ``snapshot(volume, snap_id)`` takes no image. It records, durably, that snapshot ``snap_id`` of the
   volume is to be taken by the designated node, in state ``held``: this node's writers must stay
   quiesced (this node *holds*) until the designated node has committed the image. The returned
   :class:`SnapshotRef` has ``path = "helper:<node>:<snap_id>"``, which is not a local path: nothing on
   this node can read the image.
3. The designated node reports the image with :meth:`HelperProvider.committed` (state ``committed``, with
   the path on that node); :meth:`HelperProvider.is_held` then turns false and this node may thaw.
   Within one consistency group the coordinator drives this; if the designated node never commits, the
   group's barrier times out and every member thaws (the leases bound the hold regardless).
4. ``delete`` forgets the record (the designated node deletes its own image with its own provider).
   No writable clones and no changed ranges here (NotSupported): those belong to the designated node's
   provider.

Records are JSON files under ``state_dir`` (default ``$FRIEZE_HELPER_STATE_DIR`` or
``/var/lib/frieze/helper``), written to a temp file and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

from frieze.core.errors import Conflict, NotFound, NotSupported, StorageError, UsageError
from frieze.host.providers._fs import check_snap_id, not_supported, require_dir
from frieze.host.providers.base import ChangedRanges, ProviderCapabilities, SnapshotRef

_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class HelperProvider:
    name: str = "helper"
    capabilities: ProviderCapabilities = ProviderCapabilities(
        name="helper", writable_clone=False, changed_ranges=False, needs_freeze_throughout=True, instant=False)

    def __init__(self, state_dir: str | None = None) -> None:
        self.state_dir = state_dir or os.environ.get("FRIEZE_HELPER_STATE_DIR") or "/var/lib/frieze/helper"

    # ------------------------------------------------------------------------------------------ records
    def _vol_dir(self, vol: str) -> str:
        return os.path.join(self.state_dir, hashlib.sha256(vol.encode()).hexdigest()[:32])

    def _write(self, path: str, data: dict[str, Any]) -> None:
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise StorageError(f"helper: cannot write its record {path!r}: {e.strerror}", path=path) from e

    def _read(self, path: str) -> dict[str, Any] | None:
        try:
            with open(path, encoding="utf-8") as f:
                data: dict[str, Any] = json.load(f)
                return data
        except FileNotFoundError:
            return None

    def designated_node(self, volume: str) -> str | None:
        """The node that snapshots ``volume``, or None."""
        rec = self._read(os.path.join(self._vol_dir(os.path.realpath(volume)), "designation.json"))
        return None if rec is None else str(rec["node"])

    def designate(self, volume: str, node: str) -> None:
        """Record that ``node`` takes the snapshots of the shared ``volume`` (idempotent)."""
        vol = require_dir(volume, self.name)
        if not isinstance(node, str) or not _NODE.match(node):
            raise UsageError(f"helper: invalid node name {node!r}", node=str(node))
        self._write(os.path.join(self._vol_dir(vol), "designation.json"), {"volume": vol, "node": node})

    # ------------------------------------------------------------------------------------------ the port
    def supports(self, volume: str) -> bool:
        try:
            vol = require_dir(volume, self.name)
        except UsageError:
            return False
        return self.designated_node(vol) is not None

    def _ref(self, rec: dict[str, Any]) -> SnapshotRef:
        return SnapshotRef(provider=self.name, volume=rec["volume"], snap_id=rec["snap_id"],
                           path=f"helper:{rec['node']}:{rec['snap_id']}")

    def _rec_path(self, vol: str, snap_id: str) -> str:
        return os.path.join(self._vol_dir(vol), "snaps", f"{snap_id}.json")

    def snapshot(self, volume: str, snap_id: str) -> SnapshotRef:
        vol = require_dir(volume, self.name)
        node = self.designated_node(vol)
        if node is None:
            raise not_supported(self.name, vol, "no node is designated to snapshot this shared volume")
        check_snap_id(snap_id, self.name)
        p = self._rec_path(vol, snap_id)
        rec = self._read(p)
        if rec is None:
            rec = {"volume": vol, "snap_id": snap_id, "node": node, "state": "held", "path": None}
            self._write(p, rec)
        return self._ref(rec)

    def prepare(self, volume: str, snap_id: str) -> dict[str, Any]:
        """Nothing to prepare here: the designated node makes the snapshot (the input is still checked)."""
        require_dir(volume, self.name)
        check_snap_id(snap_id, self.name)
        return {"prepared": False, "files": 0, "ms": 0.0}

    def unprepare(self, volume: str, snap_id: str) -> bool:
        del volume
        check_snap_id(snap_id, self.name)
        return False

    def _record(self, ref: SnapshotRef) -> tuple[str, dict[str, Any]]:
        if ref.provider != self.name:
            raise UsageError(f"helper: snapshot {ref.snap_id!r} belongs to the {ref.provider} provider")
        check_snap_id(ref.snap_id, self.name)
        p = self._rec_path(os.path.realpath(ref.volume), ref.snap_id)
        rec = self._read(p)
        if rec is None:
            raise NotFound(f"helper: no snapshot {ref.snap_id!r} of {ref.volume!r} is recorded",
                           snap_id=ref.snap_id, volume=ref.volume)
        return p, rec

    def committed(self, ref: SnapshotRef, *, node: str, path: str) -> None:
        """The designated ``node`` reports that its image of ``ref`` exists at ``path`` (on that node)."""
        p, rec = self._record(ref)
        if node != rec["node"]:
            raise Conflict(f"helper: snapshot {ref.snap_id!r} is to be taken by {rec['node']!r}, not {node!r}",
                           node=node, designated=rec["node"])
        if rec["state"] == "committed" and rec["path"] != path:
            raise Conflict(f"helper: snapshot {ref.snap_id!r} was already committed at {rec['path']!r}")
        rec.update(state="committed", path=path)
        self._write(p, rec)

    def is_held(self, ref: SnapshotRef) -> bool:
        """True while the designated node has not committed the image (this node must keep holding)."""
        return bool(self._record(ref)[1]["state"] == "held")

    def record(self, ref: SnapshotRef) -> dict[str, Any]:
        """The stored record: volume, snap_id, node, state (held|committed), path (on the node)."""
        return dict(self._record(ref)[1])

    def delete(self, ref: SnapshotRef) -> None:
        try:
            p, _rec = self._record(ref)
        except NotFound:
            return
        os.unlink(p)

    def list(self, volume: str) -> list[SnapshotRef]:
        vol = require_dir(volume, self.name)
        d = os.path.join(self._vol_dir(vol), "snaps")
        if not os.path.isdir(d):
            return []
        out = []
        for n in sorted(os.listdir(d)):
            if n.endswith(".json"):
                rec = self._read(os.path.join(d, n))
                if rec is not None:
                    out.append(self._ref(rec))
        return out

    def changed_ranges(self, old: SnapshotRef, new: SnapshotRef) -> ChangedRanges:
        raise NotSupported("the helper provider cannot report changed ranges (the designated node's provider can)",
                           provider=self.name)

    def clone(self, ref: SnapshotRef, dest: str) -> str:
        raise NotSupported("the helper provider cannot make writable clones (the designated node's provider can)",
                           provider=self.name)
