"""Chunking: where a file's bytes are cut into blobs.

Two ways, chosen per file by the caller (backup), never guessed from content:

- **Content-defined chunking** (ordinary files): FastCDC-2020 from ``pyfastcdc`` (pinned exactly at
  :data:`PYFASTCDC_VERSION`, because its boundaries *are* the dedup format), with the gear table keyed by the
  repository's secret ``chunker_seed`` (so chunk sizes do not fingerprint known files) and min/avg/max from
  the repository config. ``tests/repo/test_data_chunking.py`` holds golden vectors: a fixed input and seed
  must give exactly the recorded boundaries, so any change of chunker is caught.
- **Fixed blocks aligned to the engine's pages** (database and volume files): block ``i`` covers
  ``[i*B, min((i+1)*B, size))`` where ``B`` is a whole number of pages. A changed page changes only the
  block that holds it; a shifted file is not expected (databases rewrite pages in place).

:func:`fixed_block_spec_for` maps a snapshot-relative path to a :class:`FixedBlocks` spec through
glob patterns (``**`` any depth, ``*`` within one component, ``?`` one character).
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import pyfastcdc

from frieze.core.errors import InternalError, UsageError
from frieze.repo.directio import DIRECT_ALIGN as STREAM_ALIGN  # the stream buffer is filled with O_DIRECT

#: The exact chunker version whose boundaries this module's golden vectors pin.
PYFASTCDC_VERSION = "0.3.1"


def check_chunker_version() -> None:
    """Raise InternalError if the installed chunker is not the pinned one (its cuts define dedup)."""
    if pyfastcdc.__version__ != PYFASTCDC_VERSION:
        raise InternalError(f"pyfastcdc {pyfastcdc.__version__} installed, but the repository format pins "
                            f"{PYFASTCDC_VERSION}: chunk boundaries would change")


class Readinto(Protocol):
    def readinto(self, b: memoryview) -> int: ...


@dataclass(frozen=True)
class CdcParams:
    """Content-defined chunking parameters (the real mean chunk size is about ``avg + min``)."""

    min_size: int
    avg_size: int
    max_size: int
    seed: int

    def validate(self) -> None:
        if not (64 <= self.min_size <= self.avg_size <= self.max_size):
            raise UsageError(f"bad CDC sizes min={self.min_size} avg={self.avg_size} max={self.max_size}")


class CdcChunker:
    """FastCDC over a stream. One instance per thread (the underlying object is not thread-safe)."""

    def __init__(self, params: CdcParams) -> None:
        check_chunker_version()
        params.validate()
        self.params = params
        self._cdc = pyfastcdc.FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size,
                                      seed=params.seed & ((1 << 64) - 1))
        self._buf: mmap.mmap | None = None

    def cut_stream(self, stream: Readinto) -> Iterator[memoryview]:
        """Yield consecutive chunks of ``stream``. Each view is valid only until the next one is yielded
        (the chunker reuses one buffer across calls): copy it if it must outlive the iteration step.

        Same cut points as ``pyfastcdc``'s own ``cut_stream`` (a cut at ``s`` depends only on
        ``[s, s + max_size)``, so a chunk is final once that much is buffered or the stream ended), but
        without allocating a fresh ``2 * max_size`` buffer per call.
        """
        max_size = self.params.max_size
        if self._buf is None:
            # page-aligned (an anonymous mmap) and a whole number of STREAM_ALIGN: O_DIRECT reads may fill it;
            # room for a tail moved up to STREAM_ALIGN - 1 bytes in, whatever max_size is
            self._buf = mmap.mmap(-1, -(-4 * max_size // STREAM_ALIGN) * STREAM_ALIGN + STREAM_ALIGN)
        buf = self._buf
        mv = memoryview(buf)
        start = end = 0
        eof = False
        while True:
            if not eof and end - start < max_size:
                if start:
                    # keep the unconsumed tail so that it ends on an aligned offset: the next read starts there
                    rem = end - start
                    to = -rem % STREAM_ALIGN
                    if to != start:
                        mv[to: to + rem] = mv[start:end]
                    start, end = to, to + rem
                while end < len(buf):
                    n = stream.readinto(mv[end:])
                    if n <= 0:
                        eof = True
                        break
                    end += n
            if start >= end:
                return
            pos = start
            for c in self._cdc.cut_buf(mv[start:end]):
                cs = start + c.offset
                if not eof and end - cs < max_size:
                    break  # not enough lookahead for a final cut: refill first
                yield mv[cs: cs + c.length]
                pos = cs + c.length
            start = pos

    def cut_buf(self, buf: bytes | bytearray | memoryview) -> list[tuple[int, int]]:
        """The ``(offset, length)`` of each chunk of a whole buffer."""
        return [(c.offset, c.length) for c in self._cdc.cut_buf(buf)]


@dataclass(frozen=True)
class FixedBlocks:
    """Fixed-size blocks made of whole pages of ``page_size`` bytes."""

    page_size: int
    block_size: int

    def __post_init__(self) -> None:
        if self.page_size <= 0 or self.block_size <= 0 or self.block_size % self.page_size:
            raise UsageError(f"fixed block size {self.block_size} is not a whole number of "
                             f"{self.page_size}-byte pages")

    def blocks(self, size: int) -> Iterator[tuple[int, int]]:
        """``(offset, length)`` of every block of a file of ``size`` bytes."""
        off = 0
        while off < size:
            n = min(self.block_size, size - off)
            yield off, n
            off += n

    def touched(self, ranges: list[tuple[int, int]], size: int) -> set[int]:
        """Indices of the blocks of a ``size``-byte file that the ``(offset, length)`` ranges touch."""
        out: set[int] = set()
        nblocks = (size + self.block_size - 1) // self.block_size
        for off, ln in ranges:
            if off < 0 or ln < 0:
                raise UsageError(f"bad changed range ({off}, {ln})")
            if ln == 0 or off >= size:
                continue
            first = off // self.block_size
            last = min((off + ln - 1) // self.block_size, nblocks - 1)
            out.update(range(first, last + 1))
        return out


@lru_cache(maxsize=256)
def _glob_re(pattern: str) -> re.Pattern[str]:
    i, out = 0, []
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def glob_match(pattern: str, path: str) -> bool:
    """Match a ``/``-separated relative path: ``**`` any depth, ``*`` within a component, ``?`` one char."""
    return _glob_re(pattern).match(path) is not None


def fixed_block_spec_for(path: str, globs: Mapping[str, int | FixedBlocks] | None,
                         default_block_size: int) -> FixedBlocks | None:
    """The first glob (in mapping order) that matches ``path`` decides. An ``int`` value is a page size:
    blocks are then ``default_block_size`` rounded down to whole pages (at least one page)."""
    if not globs:
        return None
    for pattern, spec in globs.items():
        if glob_match(pattern, path):
            if isinstance(spec, FixedBlocks):
                return spec
            pages = max(1, default_block_size // spec)
            return FixedBlocks(page_size=spec, block_size=pages * spec)
    return None


#: PostgreSQL data directory relations (8 KiB pages) in 16 KiB blocks, relative to the data directory.
#: Measured (docs/design/repository-files-and-trees.md): with 1 % of pages changed at random, 16 KiB blocks
#: store ~2x the changed pages, 64 KiB ~7.8x, 1 MiB ~70x; 8 KiB blocks store exactly the changed pages but
#: cost ~3x more per byte in per-chunk overhead on a full backup.
POSTGRES_BLOCKS = FixedBlocks(page_size=8192, block_size=16384)
POSTGRES_GLOBS: dict[str, int | FixedBlocks] = {"base/**": POSTGRES_BLOCKS, "global/**": POSTGRES_BLOCKS}
#: MariaDB/InnoDB tablespaces (16 KiB pages), one page per block.
INNODB_BLOCKS = FixedBlocks(page_size=16384, block_size=16384)
INNODB_GLOBS: dict[str, int | FixedBlocks] = {"**/*.ibd": INNODB_BLOCKS, "ibdata*": INNODB_BLOCKS}


def parse_fixed_blocks(specs: list[str]) -> dict[str, int | FixedBlocks]:
    """``GLOB=PAGE`` or ``GLOB=PAGE:BLOCK`` (bytes), or a preset ``postgres`` / ``innodb`` (globs relative to
    the snapshot root), as ``frieze repo backup --fixed-blocks`` takes them; UsageError naming a bad one."""
    out: dict[str, int | FixedBlocks] = {}
    for s in specs:
        if s in ("postgres", "innodb"):
            out.update(POSTGRES_GLOBS if s == "postgres" else INNODB_GLOBS)
            continue
        glob, sep, val = s.rpartition("=")
        if not sep or not glob:
            raise UsageError(f"--fixed-blocks {s!r}: use GLOB=PAGE, GLOB=PAGE:BLOCK, postgres or innodb")
        try:
            if ":" in val:
                page, block = (int(x) for x in val.split(":", 1))
                out[glob] = FixedBlocks(page_size=page, block_size=block)
            else:
                page_size = int(val)
                if page_size <= 0:
                    raise ValueError
                out[glob] = page_size
        except ValueError:
            raise UsageError(f"--fixed-blocks {s!r}: sizes must be positive integers (bytes)") from None
    return out
