"""File system facts shared by the providers: which mount holds a path and its type, read-only.

Nothing here changes anything. The mount is found from ``/proc/self/mountinfo`` by the longest mount point
that is a prefix of the path's real path (``st_dev`` is no help on btrfs, where every subvolume has its own
anonymous device number).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from frieze.core.errors import NotFound, NotSupported, UsageError

_ESC = re.compile(r"\\([0-7]{3})")


def _unescape(s: str) -> str:
    return _ESC.sub(lambda m: chr(int(m.group(1), 8)), s)


@dataclass(frozen=True)
class MountInfo:
    mount_point: str
    fstype: str
    source: str
    root: str  # the path inside the file system that is mounted here (btrfs: the subvolume)
    options: str


def mounts() -> list[MountInfo]:
    """Every mount this process sees, in /proc/self/mountinfo order."""
    out: list[MountInfo] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            lf, rf = left.split(), right.split()
            if len(lf) < 6 or len(rf) < 2:
                continue
            out.append(MountInfo(mount_point=_unescape(lf[4]), fstype=rf[0], source=_unescape(rf[1]),
                                 root=_unescape(lf[3]), options=lf[5]))
    return out


def mount_of(path: str) -> MountInfo:
    """The mount that holds ``path`` (which must exist)."""
    real = os.path.realpath(path)
    best: MountInfo | None = None
    for m in mounts():
        mp = m.mount_point
        under = real == mp or real.startswith(mp.rstrip("/") + "/")
        if under and (best is None or len(mp) >= len(best.mount_point)):
            best = m  # later entries over-mount earlier ones at the same point
    if best is None:  # pragma: no cover - "/" is always mounted
        raise NotFound(f"no mount holds {path!r}", path=path)
    return best


def fs_type(path: str) -> str:
    """The file system type of the mount holding ``path`` (``xfs``, ``btrfs``, ``ext4``, ``tmpfs``...)."""
    return mount_of(path).fstype


def require_dir(volume: str, provider: str) -> str:
    """The volume's real path; NotFound if it does not exist, UsageError if it is not a directory."""
    if not isinstance(volume, str) or not volume:
        raise UsageError(f"{provider}: a volume path is required", provider=provider)
    if not os.path.exists(volume):
        raise NotFound(f"{provider}: volume {volume!r} does not exist", volume=volume, provider=provider)
    if not os.path.isdir(volume):
        raise UsageError(f"{provider}: volume {volume!r} is not a directory", volume=volume, provider=provider)
    return os.path.realpath(volume)


def not_supported(provider: str, volume: str, why: str) -> NotSupported:
    """The NotSupported error every provider raises, naming the volume and its file system."""
    try:
        fstype = fs_type(volume)
    except (OSError, NotFound):
        fstype = "unknown"
    return NotSupported(f"the {provider} provider cannot snapshot {volume!r} on {fstype}: {why}",
                        provider=provider, volume=volume, fstype=fstype)


_SNAP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def check_snap_id(snap_id: str, provider: str) -> str:
    """Snapshot ids become directory names: letters, digits, ``._:-``, at most 128, no leading dot."""
    if not isinstance(snap_id, str) or not _SNAP_ID.match(snap_id):
        raise UsageError(f"{provider}: invalid snapshot id {snap_id!r} (letters, digits, '._:-', max 128)",
                         snap_id=str(snap_id), provider=provider)
    return snap_id
