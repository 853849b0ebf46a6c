"""The common part of providers whose image is a directory tree written file by file (reflink, copy).

``snapshot`` builds the image in ``<root>/.tmp-<snap_id>-<random>``, makes its contents immutable, renames
it to ``<root>/<snap_id>`` (atomic: an image that exists under its id is complete) and then makes the top
directory immutable too. A snapshot id that already exists is returned as it is (idempotent). Leftover
``.tmp-*`` directories of a crashed attempt are removed by the next ``snapshot`` or ``delete`` of that id.
The image is not atomic across files: the caller must hold the application quiesced for the whole call
(``capabilities.needs_freeze_throughout``). Never hold an **fsfreeze** of the volume's file system while
these providers run: they write the image into that same file system and would block on it.

``prepare`` (before the freeze; only providers with ``pre_copy = True``, i.e. copy): a pre-copy of the tree into
``<root>/.pre-<snap_id>`` (+ ``.pre-<snap_id>.json``, the stat record), which the ``snapshot`` under the freeze
then takes files from, comparing and patching instead of copying every byte (``_tree.PreCopy``). The image is
the same; the freeze is shorter. ``unprepare``/``delete`` remove a pre-copy that was not used; ``prepare``
also removes pre-copies of other snapshot ids older than :data:`STALE_PRE_S`.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from typing import Any, ClassVar

from frieze.core.errors import AlreadyExists, NotFound, NotSupported, UsageError
from frieze.host.providers._fs import check_snap_id, not_supported, require_dir
from frieze.host.providers._layout import make_immutable, make_mutable, snapshot_root
from frieze.host.providers._tree import FileCopier, PreCopy, copy_tree, pre_copy_tree, remove_tree
from frieze.host.providers.base import ChangedRanges, ProviderCapabilities, SnapshotRef

#: A pre-copy of another snapshot id older than this is removed by the next ``prepare`` of the volume.
STALE_PRE_S = 3600.0


class TreeProvider:
    """Base class; subclasses set ``name``, ``capabilities``, ``copier`` (and ``pre_copy``) and may override
    ``why_unsupported``."""

    name: str = ""
    capabilities: ProviderCapabilities = ProviderCapabilities(name="")
    copier: ClassVar[FileCopier]
    #: the pre-copy the last ``snapshot`` used (its counters: taken, kept, patched_bytes), for figures
    last_pre_copy: PreCopy | None = None
    #: whether ``prepare`` makes a pre-copy (worth it only when the copy itself is not O(1))
    pre_copy: ClassVar[bool] = False

    # ------------------------------------------------------------------------------------------ support
    def why_unsupported(self, volume: str) -> str | None:
        """None if this provider can snapshot the (existing) volume, else the reason. Changes nothing."""
        return None

    def supports(self, volume: str) -> bool:
        try:
            vol = require_dir(volume, self.name)
        except UsageError:
            return False
        return self.why_unsupported(vol) is None

    def _checked(self, volume: str) -> str:
        vol = require_dir(volume, self.name)
        why = self.why_unsupported(vol)
        if why is not None:
            raise not_supported(self.name, vol, why)
        return vol

    # ------------------------------------------------------------------------------------------ snapshots
    def _ref(self, vol: str, snap_id: str) -> SnapshotRef:
        return SnapshotRef(provider=self.name, volume=vol, snap_id=snap_id,
                           path=os.path.join(snapshot_root(vol, self.name), snap_id))

    def _clean_tmp(self, root: str, snap_id: str) -> None:
        if not os.path.isdir(root):
            return
        for n in os.listdir(root):
            if n.startswith(f".tmp-{snap_id}-"):
                p = os.path.join(root, n)
                make_mutable(p)
                remove_tree(p)

    @staticmethod
    def _pre_dir(root: str, snap_id: str) -> str:
        return os.path.join(root, f".pre-{snap_id}")

    def _drop_pre(self, root: str, snap_id: str) -> bool:
        p = self._pre_dir(root, snap_id)
        had = os.path.lexists(p) or os.path.lexists(PreCopy.meta_path(p))
        PreCopy(p, 0).remove()
        return had

    def prepare(self, volume: str, snap_id: str) -> dict[str, Any]:
        """Before the freeze: pre-copy the tree so that ``snapshot`` under the freeze copies only what changed.
        Idempotent (a pre-copy already there is made again); nothing to do for an existing snapshot or a
        provider without ``pre_copy``. Returns ``{"prepared": bool, "files": n, "ms": t}``."""
        vol = self._checked(volume)
        check_snap_id(snap_id, self.name)
        ref = self._ref(vol, snap_id)
        if not type(self).pre_copy or os.path.isdir(ref.path):
            return {"prepared": False, "files": 0, "ms": 0.0}
        root = os.path.dirname(ref.path)
        os.makedirs(root, mode=0o700, exist_ok=True)
        now = time.time()
        mine = {f".pre-{snap_id}", f".pre-{snap_id}.json", f".pre-{snap_id}.json.tmp"}
        for n in os.listdir(root):
            p = os.path.join(root, n)
            if n.startswith(".pre-") and n not in mine and now - os.lstat(p).st_mtime > STALE_PRE_S:
                if os.path.isdir(p) and not os.path.islink(p):
                    remove_tree(p)
                else:
                    os.unlink(p)
        self._drop_pre(root, snap_id)
        t0 = time.monotonic()
        pre_dir = self._pre_dir(root, snap_id)
        try:
            pre = pre_copy_tree(vol, pre_dir, type(self).copier)
        except BaseException:
            self._drop_pre(root, snap_id)
            raise
        return {"prepared": True, "files": len(pre.records), "ms": round((time.monotonic() - t0) * 1000, 1)}

    def unprepare(self, volume: str, snap_id: str) -> bool:
        """Remove the pre-copy for ``snap_id`` if there is one (idempotent); True if one was removed."""
        vol = os.path.realpath(volume)
        check_snap_id(snap_id, self.name)
        return self._drop_pre(os.path.dirname(self._ref(vol, snap_id).path), snap_id)

    def snapshot(self, volume: str, snap_id: str) -> SnapshotRef:
        vol = self._checked(volume)
        check_snap_id(snap_id, self.name)
        ref = self._ref(vol, snap_id)
        if os.path.isdir(ref.path):
            return ref
        root = os.path.dirname(ref.path)
        os.makedirs(root, mode=0o700, exist_ok=True)
        self._clean_tmp(root, snap_id)
        tmp = os.path.join(root, f".tmp-{snap_id}-{secrets.token_hex(4)}")
        pre = PreCopy.load(self._pre_dir(root, snap_id)) if type(self).pre_copy else None
        try:
            copy_tree(vol, tmp, type(self).copier, pre=pre)
            make_immutable(tmp, include_top=False)
            os.rename(tmp, ref.path)
        except BaseException:
            make_mutable(tmp)
            remove_tree(tmp)
            raise
        finally:
            if pre is not None:
                pre.remove()
        self.last_pre_copy = pre
        make_immutable(ref.path, include_top=True)
        return ref

    def _own(self, ref: SnapshotRef) -> None:
        if ref.provider != self.name:
            raise UsageError(f"{self.name}: snapshot {ref.snap_id!r} belongs to the {ref.provider} provider",
                             snap_id=ref.snap_id, provider=ref.provider)
        check_snap_id(ref.snap_id, self.name)
        # The path must be exactly where this provider keeps that id of that volume (even if the volume is
        # gone), so a forged ref can never make delete() remove anything else.
        if not ref.volume or os.path.realpath(ref.path) != self._ref(os.path.realpath(ref.volume), ref.snap_id).path:
            raise UsageError(f"{self.name}: snapshot path {ref.path!r} is not where {ref.snap_id!r} of "
                             f"{ref.volume!r} lives", snap_id=ref.snap_id, path=ref.path)

    def delete(self, ref: SnapshotRef) -> None:
        self._own(ref)
        root = os.path.dirname(ref.path)
        self._clean_tmp(root, ref.snap_id)
        self._drop_pre(root, ref.snap_id)
        if not os.path.lexists(ref.path):
            return
        make_mutable(ref.path)
        remove_tree(ref.path)

    def list(self, volume: str) -> list[SnapshotRef]:
        vol = require_dir(volume, self.name)
        root = snapshot_root(vol, self.name)
        if not os.path.isdir(root):
            return []
        out = []
        for n in sorted(os.listdir(root)):
            if n.startswith(".") or not os.path.isdir(os.path.join(root, n)):
                continue
            try:
                check_snap_id(n, self.name)
            except UsageError:
                continue
            out.append(self._ref(vol, n))
        return out

    # ------------------------------------------------------------------------------------------ clones
    def clone(self, ref: SnapshotRef, dest: str) -> str:
        """A writable copy of the image at the new path ``dest`` (same copier as the snapshot)."""
        self._own(ref)
        if not os.path.isdir(ref.path):
            raise NotFound(f"{self.name}: snapshot {ref.snap_id!r} of {ref.volume!r} does not exist",
                           snap_id=ref.snap_id, volume=ref.volume)
        if os.path.lexists(dest):
            raise AlreadyExists(f"{self.name}: clone destination {dest!r} already exists", dest=dest)
        parent = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(parent):
            raise NotFound(f"{self.name}: the parent directory of clone destination {dest!r} does not exist",
                           dest=dest)
        try:
            copy_tree(ref.path, dest, type(self).copier)
            for dirpath, _dirs, _files in os.walk(dest):  # a clone is writable by its owner
                st = os.lstat(dirpath)
                os.chmod(dirpath, stat.S_IMODE(st.st_mode) | 0o700)
        except BaseException:
            remove_tree(dest)
            raise
        return dest

    def changed_ranges(self, old: SnapshotRef, new: SnapshotRef) -> ChangedRanges:
        raise NotSupported(f"the {self.name} provider cannot report changed ranges", provider=self.name)
