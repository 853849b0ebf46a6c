"""Changed byte ranges between two images of a file, from their extent maps (``FS_IOC_FIEMAP``).

Two images (reflink clones of one file at two times, or one file in two btrfs snapshots) share a physical
extent exactly where the data was not rewritten in between: a write to a shared extent is copied on write
to a new place. So a byte range is *unchanged* when, in both images, it maps to the same physical address
(same logical-to-physical offset) through a plain extent, or when it reads as zeros in both (a hole or an
unwritten/preallocated extent). Everything else in ``[0, new size)`` is reported as changed. Extents whose
physical address does not identify their data (flags UNKNOWN, DELALLOC, ENCODED (compressed),
DATA_INLINE, NOT_ALIGNED, DATA_TAIL) never count as shared: the result is a superset, never a subset.
Ranges are rounded out to 4 KiB and merged.
"""

from __future__ import annotations

import fcntl
import os
import struct

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
_HDR = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, fm_reserved
_EXT = struct.Struct("=QQQQQIIII")  # fe_logical, fe_physical, fe_length, reserved64[2], fe_flags, reserved[3]
FE_LAST = 0x1
FE_UNWRITTEN = 0x800
_FE_OPAQUE = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400  # unknown, delalloc, encoded, encrypted, ...
_BATCH = 256
ALIGN = 4096

#: (logical start, logical end, physical start, kind) with kind "data", "zero" or "opaque"
Extent = tuple[int, int, int, str]


def extents(fd: int) -> list[Extent]:
    """The file's extents in logical order (holes are simply absent)."""
    out: list[Extent] = []
    start = 0
    while True:
        buf = bytearray(_HDR.size + _BATCH * _EXT.size)
        _HDR.pack_into(buf, 0, start, 0xFFFFFFFFFFFFFFFF - start, FIEMAP_FLAG_SYNC, 0, _BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        mapped = _HDR.unpack_from(buf, 0)[3]
        if mapped == 0:
            return out
        last = False
        for i in range(mapped):
            lo, ph, ln, _r1, _r2, fl, _a, _b, _c = _EXT.unpack_from(buf, _HDR.size + i * _EXT.size)
            kind = "opaque" if fl & _FE_OPAQUE else ("zero" if fl & FE_UNWRITTEN else "data")
            out.append((lo, lo + ln, ph, kind))
            start = lo + ln
            last = last or bool(fl & FE_LAST)
        if last:
            return out


def diff_extents(old: list[Extent], old_size: int, new: list[Extent], new_size: int) -> list[tuple[int, int]]:
    """Byte ranges ``(offset, length)`` of the new image that may differ from the old one."""
    # physical address of byte x in an extent (lo, hi, ph): ph + (x - lo); the original extent start is
    # kept so that a clipped extent still maps correctly.
    def cover(exts: list[Extent], size: int) -> list[tuple[int, int, int, str]]:
        segs: list[tuple[int, int, int, str]] = []
        pos = 0
        for lo, hi, ph, kind in exts:
            a, b = max(lo, pos), min(hi, size)
            if a >= size:
                break
            if a > pos:
                segs.append((pos, a, 0, "zero"))
            if b > a:
                segs.append((a, b, ph + (a - lo), kind))  # physical of byte a
                pos = b
        if pos < size:
            segs.append((pos, size, 0, "zero"))
        return segs

    o, n = cover(old, old_size), cover(new, new_size)
    changed: list[tuple[int, int]] = []
    i = 0
    for a, b, ph, kind in n:
        x = a
        while x < b:
            while i < len(o) and o[i][1] <= x:
                i += 1
            if i >= len(o):  # past the old end
                changed.append((x, b))
                break
            oa, ob, oph, okind = o[i]
            end = min(b, ob)
            same = (kind == "zero" and okind == "zero") or (
                kind == "data" and okind == "data" and ph + (x - a) == oph + (x - oa))
            if not same:
                changed.append((x, end))
            x = end
    if new_size < old_size and new_size % ALIGN:
        changed.append((new_size - new_size % ALIGN, new_size))  # the block the new end cuts through
    return _merge_aligned(changed, new_size)


def _merge_aligned(ranges: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        a, b = a - a % ALIGN, min(size, -(-b // ALIGN) * ALIGN)
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return [(a, b - a) for a, b in out if b > a]


def file_changed_ranges(old_path: str, new_path: str) -> list[tuple[int, int]]:
    """Changed ranges of ``new_path`` relative to ``old_path`` (regular files, opened O_NOFOLLOW)."""
    fo = os.open(old_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fn = os.open(new_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            return diff_extents(extents(fo), os.fstat(fo).st_size, extents(fn), os.fstat(fn).st_size)
        finally:
            os.close(fn)
    finally:
        os.close(fo)
