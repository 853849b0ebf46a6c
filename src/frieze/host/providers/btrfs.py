"""BtrfsProvider: read-only btrfs snapshots of a subvolume, through the ``btrfs`` CLI (btrfs-progs).

- The volume must be the root of a btrfs subvolume (inode 256 on btrfs); anything else is NotSupported,
  checked before anything changes.
- ``snapshot`` runs ``btrfs subvolume snapshot -r <volume> <root>/<snap_id>``: atomic and instant
  (one transaction), so it needs no freeze to be crash-consistent; the application quiesce makes it
  application-consistent. Never under an fsfreeze of this file system (the snapshot would block on it).
  An existing ``<snap_id>`` that is a read-only subvolume is returned as it is (idempotent).
- ``delete``: ``btrfs subvolume delete`` (``--commit-after``); a missing snapshot is a no-op.
- ``clone``: a writable snapshot of the snapshot at ``dest`` (same file system).
- ``changed_ranges``: extent maps (FIEMAP) of each file in both snapshots; a file whose inode, size,
  ctime and mtime are equal in both (btrfs snapshots keep them), with a ctime more than 2 s older than the
  old snapshot (ctime is coarse: see ``CTIME_MARGIN_NS``), was not written and is ``[]`` at once. The time
  a snapshot was taken is kept in a sidecar ``.meta-<snap_id>.json`` beside it (not in the image).
  Not ``btrfs subvolume find-new``: it lists new file extent items only, so on a file system with the
  ``no-holes`` feature (the default since btrfs-progs 5.15) a punched hole or a truncation is not
  reported, which would make the result a subset.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from typing import Any

from frieze.core.errors import AlreadyExists, NotFound, StorageError, UsageError
from frieze.host.providers._fs import check_snap_id, fs_type, not_supported, require_dir
from frieze.host.providers._layout import snapshot_root
from frieze.host.providers.base import ChangedRanges, ProviderCapabilities, SnapshotRef
from frieze.host.providers.reflink import tree_changed_ranges

BTRFS_FIRST_FREE_OBJECTID = 256  # the inode number of every subvolume's root directory


def _is_subvolume(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return st.st_ino == BTRFS_FIRST_FREE_OBJECTID and os.path.isdir(path) and fs_type(path) == "btrfs"


def _btrfs(*args: str, timeout: float = 120) -> str:
    try:
        r = subprocess.run(["btrfs", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise StorageError("the btrfs command (btrfs-progs) is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise StorageError(f"btrfs {' '.join(args[:2])} timed out after {timeout} s", argv=list(args)) from e
    if r.returncode != 0:
        raise StorageError(f"btrfs {' '.join(args)} failed: {r.stderr.strip()}", argv=list(args))
    return r.stdout


def _meta_path(ref: SnapshotRef) -> str:
    return os.path.join(os.path.dirname(ref.path), f".meta-{ref.snap_id}.json")


def _write_meta(ref: SnapshotRef, data: dict[str, Any]) -> None:
    """A sidecar beside the snapshot (never inside the image): when it was taken."""
    tmp = _meta_path(ref) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, _meta_path(ref))


def _read_meta(ref: SnapshotRef) -> dict[str, Any]:
    try:
        with open(_meta_path(ref), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _is_readonly(path: str) -> bool:
    return _btrfs("property", "get", "-ts", path, "ro").strip() == "ro=true"


class BtrfsProvider:
    name: str = "btrfs"
    capabilities: ProviderCapabilities = ProviderCapabilities(
        name="btrfs", writable_clone=True, changed_ranges=True, needs_freeze_throughout=False, instant=True)

    def _why(self, vol: str) -> str | None:
        fstype = fs_type(vol)
        if fstype != "btrfs":
            return f"{fstype} is not btrfs"
        if os.lstat(vol).st_ino != BTRFS_FIRST_FREE_OBJECTID:
            return "it is not a btrfs subvolume (btrfs subvolume create)"
        return None

    def supports(self, volume: str) -> bool:
        try:
            vol = require_dir(volume, self.name)
        except UsageError:
            return False
        return self._why(vol) is None

    def _ref(self, vol: str, snap_id: str) -> SnapshotRef:
        return SnapshotRef(provider=self.name, volume=vol, snap_id=snap_id,
                           path=os.path.join(snapshot_root(vol, self.name), snap_id))

    def snapshot(self, volume: str, snap_id: str) -> SnapshotRef:
        vol = require_dir(volume, self.name)
        why = self._why(vol)
        if why is not None:
            raise not_supported(self.name, vol, why)
        check_snap_id(snap_id, self.name)
        ref = self._ref(vol, snap_id)
        if os.path.lexists(ref.path):
            if _is_subvolume(ref.path) and _is_readonly(ref.path):
                return ref
            raise AlreadyExists(f"btrfs: {ref.path!r} exists and is not a read-only snapshot", path=ref.path)
        os.makedirs(os.path.dirname(ref.path), mode=0o700, exist_ok=True)
        _write_meta(ref, {"taken_before_ns": time.time_ns()})
        _btrfs("subvolume", "snapshot", "-r", vol, ref.path)
        return ref

    def prepare(self, volume: str, snap_id: str) -> dict[str, Any]:
        """Nothing to prepare: a btrfs snapshot is instant (the input is still checked)."""
        vol = require_dir(volume, self.name)
        why = self._why(vol)
        if why is not None:
            raise not_supported(self.name, vol, why)
        check_snap_id(snap_id, self.name)
        return {"prepared": False, "files": 0, "ms": 0.0}

    def unprepare(self, volume: str, snap_id: str) -> bool:
        del volume
        check_snap_id(snap_id, self.name)
        return False

    def _own(self, ref: SnapshotRef) -> None:
        if ref.provider != self.name:
            raise UsageError(f"btrfs: snapshot {ref.snap_id!r} belongs to the {ref.provider} provider",
                             snap_id=ref.snap_id, provider=ref.provider)
        check_snap_id(ref.snap_id, self.name)
        # exactly where this provider keeps that id of that volume (even if the volume is gone)
        if not ref.volume or os.path.realpath(ref.path) != self._ref(os.path.realpath(ref.volume), ref.snap_id).path:
            raise UsageError(f"btrfs: snapshot path {ref.path!r} is not where {ref.snap_id!r} of "
                             f"{ref.volume!r} lives", snap_id=ref.snap_id, path=ref.path)

    def delete(self, ref: SnapshotRef) -> None:
        self._own(ref)
        if not os.path.lexists(ref.path):
            return
        if not _is_subvolume(ref.path):
            raise UsageError(f"btrfs: {ref.path!r} is not a btrfs snapshot; not deleting it", path=ref.path)
        _btrfs("subvolume", "delete", "--commit-after", ref.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_meta_path(ref))

    def list(self, volume: str) -> list[SnapshotRef]:
        vol = require_dir(volume, self.name)
        root = snapshot_root(vol, self.name)
        if not os.path.isdir(root):
            return []
        out = []
        for n in sorted(os.listdir(root)):
            if n.startswith(".") or not _is_subvolume(os.path.join(root, n)):
                continue
            try:
                check_snap_id(n, self.name)
            except UsageError:
                continue
            out.append(self._ref(vol, n))
        return out

    def clone(self, ref: SnapshotRef, dest: str) -> str:
        self._own(ref)
        if not _is_subvolume(ref.path):
            raise NotFound(f"btrfs: snapshot {ref.snap_id!r} of {ref.volume!r} does not exist",
                           snap_id=ref.snap_id, volume=ref.volume)
        if os.path.lexists(dest):
            raise AlreadyExists(f"btrfs: clone destination {dest!r} already exists", dest=dest)
        parent = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(parent):
            raise NotFound(f"btrfs: the parent directory of clone destination {dest!r} does not exist", dest=dest)
        if fs_type(parent) != "btrfs":
            raise not_supported(self.name, parent, "a writable clone must be on the snapshot's btrfs")
        _btrfs("subvolume", "snapshot", ref.path, dest)
        return dest

    def changed_ranges(self, old: SnapshotRef, new: SnapshotRef) -> ChangedRanges:
        """Every regular file of ``new``: ``[]`` unchanged, its changed ranges, or None (new file)."""
        for r in (old, new):
            self._own(r)
        before = _read_meta(old).get("taken_before_ns")
        return tree_changed_ranges(self.name, old, new,
                                   same_inodes_before_ns=before if isinstance(before, int) else None)
