"""Process memory tuning for the data path (glibc only; a no-op elsewhere).

Backup and restore allocate many short-lived buffers of up to tens of MiB (pack spans read, blobs
decompressed and decrypted). With glibc's defaults those above the dynamic mmap threshold are mapped and
unmapped each time and the heap top is trimmed after frees, so every new buffer faults in fresh pages: a 3.6 GB
restore took about 220 000-310 000 minor faults and most of its system time on this 2-core VM. Keeping freed
memory (mmap threshold 32 MiB, no trim below 1 GiB, 64 MiB top pad) brings that to about 50 000 and cut the
restore's system time by a sixth to two fifths in side-by-side runs (docs/design/repository-files-and-trees.md).
The price is a process that keeps what it once needed (bounded by the pipeline's own buffer limits) until it
exits; call it only in processes that run the data path. ``FRIEZE_MALLOC_TUNE=0`` turns it off (for A/B runs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's maximum for 64-bit
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20

_done: bool | None = None


def tune_malloc() -> bool:
    """Apply the settings once per process; True if glibc accepted them."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux") or os.environ.get("FRIEZE_MALLOC_TUNE", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl has no mallopt tuning of this kind)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = all(mallopt(k, v) == 1 for k, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                 (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    return _done


#: The cyclic garbage collector's first-generation threshold in a data-path process (CPython's default: 700).
GC_GEN0_THRESHOLD = 50_000

_gc_done = False


def tune_gc() -> bool:
    """Fewer cyclic-GC passes in a process that runs the data path; True if applied (once per process).

    A backup allocates millions of short-lived objects (stat results, nodes, futures, tree dicts) and almost
    no reference cycles, yet with the default thresholds the collector ran every 700 allocations and
    re-scanned the long-lived ones (modules, the parent snapshot's trees): about 1 s of a 12 s first backup
    on this VM, on the walking thread. Everything alive at start-up is moved out of the collector's reach
    (``gc.freeze``) and the first generation is collected every :data:`GC_GEN0_THRESHOLD` allocations.
    Cycles are still collected. ``FRIEZE_GC_TUNE=0`` turns it off (for A/B runs)."""
    global _gc_done
    if _gc_done or os.environ.get("FRIEZE_GC_TUNE", "1") == "0":
        return False
    import gc

    gc.freeze()
    _t0, t1, t2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, t1, t2)
    _gc_done = True
    return True
