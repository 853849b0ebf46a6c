"""The snapshot provider port.

A provider makes point-in-time images of a volume (a directory on a mounted file system): btrfs
subvolume snapshots, reflink clones (XFS/btrfs), a plain copy (only under a freeze), or a helper that
asks another node to snapshot a shared volume.

Contract (every implementation must pass ``tests/host/providers/test_conformance.py``):

- ``supports(path)`` says, without changing anything (and without writing, so it is safe on a frozen
  file system), whether this provider can snapshot that path (file system type, subvolume, reflink
  support); a path that does not exist is simply False. ``snapshot`` on an unsupported path raises
  :class:`frieze.core.errors.NotSupported` naming the path and its file system, before anything changes;
  on a path that does not exist, :class:`frieze.core.errors.NotFound`.
- ``snapshot`` returns when the image exists and is immutable (read-only subvolume, or ``chattr +i``
  files); it is idempotent on ``snap_id`` (an existing image is returned untouched). Images live on the
  volume's own file system under a ``.frieze-snapshots`` directory (beside the volume, or inside it when
  the volume is a mount's root). Providers that write the image into the volume's file system (btrfs,
  reflink, copy) must never run under an fsfreeze of that file system; ``needs_freeze_throughout`` means
  the caller must hold the *application* quiesced for the whole call.
- ``delete`` is idempotent; a ref whose ``path`` is not exactly where the provider keeps that ``snap_id``
  of that ``volume`` is refused (UsageError), so a forged ref cannot delete anything else.
- ``list`` returns the volume's images of this provider, sorted by ``snap_id``.
- ``changed_ranges(old, new)`` returns, per relative path of each regular file in ``new``, the byte
  ranges that may differ from ``old`` (a superset is allowed, a subset never): ``[]`` means unchanged,
  ``None`` means "read it all" (a new file). Files of ``old`` missing from ``new`` are absent.
  Only providers with ``capabilities.changed_ranges`` implement it; the others raise NotSupported.
- ``prepare(volume, snap_id)`` may be called before the freeze for the snapshot ``snap_id`` about to be taken;
  it never changes what ``snapshot`` produces, only how long it takes (copy: a pre-copy, so that the copy under
  the freeze writes only the blocks that changed). It returns ``{"prepared": bool, "files", "ms"}``
  (``prepared`` False: nothing to do, as for instant providers). ``unprepare`` removes an unused preparation
  (idempotent); ``delete`` does too.
- ``clone`` makes a writable copy of a snapshot at the new path ``dest`` (only with
  ``capabilities.writable_clone``; AlreadyExists if ``dest`` exists).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

#: path relative to the snapshot root -> list of (offset, length), or None for "whole file"
ChangedRanges = dict[str, list[tuple[int, int]] | None]


@dataclass(frozen=True)
class ProviderCapabilities:
    name: str
    writable_clone: bool = False
    changed_ranges: bool = False
    #: The snapshot is only consistent if the caller holds a freeze for its whole duration (copy).
    needs_freeze_throughout: bool = False
    instant: bool = True


@dataclass(frozen=True)
class SnapshotRef:
    provider: str
    volume: str  # the volume's root path
    snap_id: str
    path: str  # where the read-only image can be read


@runtime_checkable
class SnapshotProvider(Protocol):
    name: str
    capabilities: ProviderCapabilities

    def supports(self, volume: str) -> bool: ...
    def prepare(self, volume: str, snap_id: str) -> dict[str, Any]: ...
    def unprepare(self, volume: str, snap_id: str) -> bool: ...
    def snapshot(self, volume: str, snap_id: str) -> SnapshotRef: ...
    def delete(self, ref: SnapshotRef) -> None: ...
    def list(self, volume: str) -> list[SnapshotRef]: ...
    def changed_ranges(self, old: SnapshotRef, new: SnapshotRef) -> ChangedRanges: ...
    def clone(self, ref: SnapshotRef, dest: str) -> str: ...
