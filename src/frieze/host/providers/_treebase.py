"""The common part of providers whose image is a directory tree written file by file (reflink, copy).

``snapshot`` builds the image in ``<root>/.tmp-<snap_id>-<random>``, makes its contents immutable, renames
it to ``<root>/<snap_id>`` (atomic: an image that exists under its id is complete) and then makes the top
directory immutable too. A snapshot id that already exists is returned as it is (idempotent). Leftover
``.tmp-*`` directories of a crashed attempt are removed by the next ``snapshot`` or ``delete`` of that id.
The image is not atomic across files: the caller must hold the application quiesced for the whole call
(``capabilities.needs_freeze_throughout``). Never hold an **fsfreeze** of the volume's file system while
these providers run: they write the image into that same file system and would block on it.
"""

from __future__ import annotations

import os
import secrets
import stat
from typing import ClassVar

from frieze.core.errors import AlreadyExists, NotFound, NotSupported, UsageError
from frieze.host.providers._fs import check_snap_id, not_supported, require_dir
from frieze.host.providers._layout import make_immutable, make_mutable, snapshot_root
from frieze.host.providers._tree import FileCopier, copy_tree, remove_tree
from frieze.host.providers.base import ChangedRanges, ProviderCapabilities, SnapshotRef


class TreeProvider:
    """Base class; subclasses set ``name``, ``capabilities``, ``copier`` and may override ``why_unsupported``."""

    name: str = ""
    capabilities: ProviderCapabilities = ProviderCapabilities(name="")
    copier: ClassVar[FileCopier]

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
        try:
            copy_tree(vol, tmp, type(self).copier)
            make_immutable(tmp, include_top=False)
            os.rename(tmp, ref.path)
        except BaseException:
            make_mutable(tmp)
            remove_tree(tmp)
            raise
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
