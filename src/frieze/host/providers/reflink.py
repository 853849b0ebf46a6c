"""ReflinkProvider: the image is a reflink clone (``FICLONE``) of every file of the volume's tree.

Supported on XFS made with reflink support and on btrfs; ``supports`` reads the XFS geometry's reflink
feature bit (an XFS made without ``-m reflink=1`` looks like any other XFS); it writes nothing, so it is
safe to call on a frozen file system. Cloning costs metadata only (no data is copied), roughly 5-9k
files/s; it is not atomic across files, so the caller must hold the application quiesced throughout
(``needs_freeze_throughout=True``; never an fsfreeze of this same file system, which would block the
clone). Changed ranges between two images come from their extent maps (see ``_fiemap``): extents
still shared are unchanged.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from typing import ClassVar

from frieze.core.errors import NotFound, UsageError
from frieze.host.providers._fiemap import file_changed_ranges
from frieze.host.providers._fs import fs_type
from frieze.host.providers._tree import FileCopier, reflink_fd
from frieze.host.providers._treebase import TreeProvider
from frieze.host.providers.base import ChangedRanges, ProviderCapabilities, SnapshotRef

REFLINK_FS = ("xfs", "btrfs")
XFS_IOC_FSGEOMETRY = 0x8100587E  # _IOR('X', 126, struct xfs_fsop_geom) (256 bytes); flags at offset 92
XFS_FSOP_GEOM_FLAGS_REFLINK = 1 << 20


class ReflinkProvider(TreeProvider):
    name: str = "reflink"
    capabilities: ProviderCapabilities = ProviderCapabilities(
        name="reflink", writable_clone=True, changed_ranges=True, needs_freeze_throughout=True, instant=False)
    copier: ClassVar[FileCopier] = staticmethod(reflink_fd)

    def why_unsupported(self, volume: str) -> str | None:
        fstype = fs_type(volume)
        if fstype not in REFLINK_FS:
            return f"{fstype} has no reflinks (XFS with reflink=1 or btrfs needed)"
        return self._probe(volume)

    def _probe(self, volume: str) -> str | None:
        """XFS: the reflink feature bit of the file system geometry (read-only ioctl). btrfs always has it."""
        if fs_type(volume) != "xfs":
            return None
        fd = os.open(volume, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            buf = bytearray(256)
            fcntl.ioctl(fd, XFS_IOC_FSGEOMETRY, buf, True)
        except OSError as e:
            return f"cannot read the XFS geometry ({e.strerror})"
        finally:
            os.close(fd)
        flags = struct.unpack_from("=I", buf, 92)[0]
        if not flags & XFS_FSOP_GEOM_FLAGS_REFLINK:
            return "this XFS was made without reflink support (mkfs.xfs -m reflink=1)"
        return None

    def changed_ranges(self, old: SnapshotRef, new: SnapshotRef) -> ChangedRanges:
        """Every regular file of ``new``: ``[]`` unchanged, its changed ranges, or None (new file)."""
        return tree_changed_ranges(self.name, old, new)


#: A file's ctime must be at least this much older than the old snapshot for the metadata shortcut: ctime
#: has coarse (jiffy) granularity, so a write right after the old snapshot could leave it unchanged.
CTIME_MARGIN_NS = 2_000_000_000


def tree_changed_ranges(provider: str, old: SnapshotRef, new: SnapshotRef, *,
                        same_inodes_before_ns: int | None = None) -> ChangedRanges:
    """Walk ``new``; compare each regular file with the one at the same path in ``old`` by extent maps.

    ``same_inodes_before_ns`` (btrfs snapshots, which keep the source's inode numbers and times): the wall
    clock just before the old snapshot was taken. A file whose (inode, size, ctime, mtime) is equal in both
    images and whose ctime is more than ``CTIME_MARGIN_NS`` older than that was not written in between (any
    write after the old snapshot would have moved ctime past it) and is ``[]`` without reading its map.
    """
    for r in (old, new):
        if r.provider != provider:
            raise UsageError(f"{provider}: snapshot {r.snap_id!r} belongs to the {r.provider} provider")
        if not os.path.isdir(r.path):
            raise NotFound(f"{provider}: snapshot {r.snap_id!r} of {r.volume!r} does not exist",
                           snap_id=r.snap_id, volume=r.volume)
    if os.path.realpath(old.volume) != os.path.realpath(new.volume):
        raise UsageError(f"{provider}: snapshots {old.snap_id!r} and {new.snap_id!r} are of different volumes")
    out: ChangedRanges = {}
    for dirpath, dirnames, filenames in os.walk(new.path):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, new.path)
        for n in sorted(filenames):
            rel = n if rel_dir == "." else os.path.join(rel_dir, n)
            np, op = os.path.join(new.path, rel), os.path.join(old.path, rel)
            nst = os.lstat(np)
            if not stat.S_ISREG(nst.st_mode):
                continue
            try:
                ost = os.lstat(op)
            except FileNotFoundError:
                out[rel] = None
                continue
            if not stat.S_ISREG(ost.st_mode):
                out[rel] = None
            elif (same_inodes_before_ns is not None
                  and ost.st_ctime_ns < same_inodes_before_ns - CTIME_MARGIN_NS
                  and (ost.st_ino, ost.st_size, ost.st_ctime_ns, ost.st_mtime_ns) == (
                      nst.st_ino, nst.st_size, nst.st_ctime_ns, nst.st_mtime_ns)):
                out[rel] = []
            else:
                try:
                    out[rel] = file_changed_ranges(op, np)
                except OSError:
                    out[rel] = None  # no extent map here: read it all
    return out
