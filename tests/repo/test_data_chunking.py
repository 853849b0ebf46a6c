"""Chunking: golden vectors pin the CDC boundaries (they define dedup); fixed blocks and globs."""

from __future__ import annotations

import io

import blake3
import pyfastcdc
import pytest

from frieze.core.errors import UsageError
from frieze.repo.chunking import (
    PYFASTCDC_VERSION,
    CdcChunker,
    CdcParams,
    FixedBlocks,
    fixed_block_spec_for,
    glob_match,
)

SEED = 0x5EED5EED5EED5EED
RANDOM_1M = blake3.blake3(b"frieze golden vector v1").digest(length=1 << 20)

# Boundaries (chunk start offsets after 0) recorded with pyfastcdc 0.3.1, min/avg/max 4/16/64 KiB.
GOLDEN_SEED0 = [18269, 30770, 59239, 96260, 113012, 132098, 151457, 180341, 197677, 213366, 245500, 263043,
                269182, 284228, 301757, 308889, 325931, 343050, 369914, 388868, 405514, 428245, 448038, 470151,
                506560, 515205, 543433, 569287, 590250, 622135, 646194, 681386, 701195, 752300, 769680, 788017,
                802480, 816160, 827710, 834458, 847953, 878560, 909550, 919319, 941392, 974898, 982840, 1005371,
                1030208]
GOLDEN_SEEDED = [6062, 19412, 24808, 80557, 100123, 133570, 139423, 162705, 190937, 204241, 211851, 243753,
                 260467, 288321, 327179, 354045, 364868, 384677, 405939, 411381, 448371, 481571, 511773, 530004,
                 564236, 585457, 610236, 638064, 660128, 680799, 693343, 710945, 717332, 723181, 729068, 739475,
                 757341, 762964, 816294, 833958, 859192, 878493, 887092, 897296, 917451, 941207, 958766, 981803,
                 1024640, 1029424]


def test_pinned_version() -> None:
    assert pyfastcdc.__version__ == PYFASTCDC_VERSION == "0.3.1"


@pytest.mark.parametrize(("seed", "golden"), [(0, GOLDEN_SEED0), (SEED, GOLDEN_SEEDED)])
def test_golden_boundaries(seed: int, golden: list[int]) -> None:
    c = CdcChunker(CdcParams(4096, 16384, 65536, seed))
    assert [o for o, _ in c.cut_buf(RANDOM_1M)][1:] == golden
    # The streaming path (what backup uses) cuts at exactly the same places.
    offs, pos = [], 0
    for view in c.cut_stream(io.BytesIO(RANDOM_1M)):
        offs.append(pos)
        pos += len(view)
    assert pos == len(RANDOM_1M)
    assert offs[1:] == golden


class _Trickle:
    """A stream that returns at most ``step`` bytes per readinto (exercises refills and compaction)."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readinto(self, b: memoryview) -> int:
        n = min(len(b), self.step, len(self.data) - self.pos)
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


@pytest.mark.parametrize(("step", "sizes"), [(1000, (4096, 16384, 65536)), (65536, (4096, 16384, 65536)),
                                             (1 << 20, (4096, 16384, 65536)), (4096, (4096, 16384, 65536)),
                                             (777, (256, 512, 1024)), (1 << 20, (256, 512, 1024))])
def test_stream_equals_buffer_over_many_refills(step: int, sizes: tuple[int, int, int]) -> None:
    """Refills of any size (4 KiB ones as O_DIRECT makes them), and a maximum far below the buffer's 4 KiB
    alignment (the moved tail still fits)."""
    data = blake3.blake3(b"stream").digest(length=5 << 20) + b"\x00" * 300_000 + RANDOM_1M[:12345]
    c = CdcChunker(CdcParams(*sizes, SEED))
    want = c.cut_buf(data)
    got, pos = [], 0
    for view in c.cut_stream(_Trickle(data, step)):
        assert bytes(view) == data[pos:pos + len(view)]
        got.append((pos, len(view)))
        pos += len(view)
    assert got == want
    assert list(c.cut_stream(_Trickle(b"", step))) == []
    assert [bytes(v) for v in c.cut_stream(_Trickle(b"abc", step))] == [b"abc"]


def test_periodic_text_cuts_at_max() -> None:
    text = (b"The quick brown fox jumps over the lazy dog. " * 30000)[: 1 << 20]
    c = CdcChunker(CdcParams(4096, 16384, 65536, SEED))
    assert [o for o, _ in c.cut_buf(text)][1:] == list(range(65536, 1 << 20, 65536))


def test_seed_changes_boundaries_and_insert_resynchronises() -> None:
    c = CdcChunker(CdcParams(4096, 16384, 65536, SEED))
    a = {RANDOM_1M[o:o + n] for o, n in c.cut_buf(RANDOM_1M)}
    shifted = RANDOM_1M[:500_000] + b"x" * 37 + RANDOM_1M[500_000:]
    b = {shifted[o:o + n] for o, n in c.cut_buf(shifted)}
    assert len(b - a) <= 2  # the chunk holding the insertion (and at most one neighbour) is new


def test_fixed_blocks_and_touched() -> None:
    fb = FixedBlocks(page_size=8192, block_size=65536)
    assert list(fb.blocks(65536 * 2 + 100)) == [(0, 65536), (65536, 65536), (131072, 100)]
    assert fb.touched([(0, 1), (65535, 2), (131072 + 99, 1000)], 65536 * 2 + 100) == {0, 1, 2}
    assert fb.touched([(10**9, 5)], 100) == set()
    with pytest.raises(UsageError):
        FixedBlocks(page_size=8192, block_size=10000)
    with pytest.raises(UsageError):
        fb.touched([(-1, 5)], 100)


@pytest.mark.parametrize(("pattern", "path", "ok"), [
    ("base/**", "base/1/1259", True),
    ("base/**", "base", False),
    ("base/**", "xbase/1", False),
    ("**/*.ibd", "db/t.ibd", True),
    ("**/*.ibd", "t.ibd", True),
    ("*.ibd", "db/t.ibd", False),
    ("ibdata?", "ibdata1", True),
    ("pg/base/**", "pg/base/1/2", True),
])
def test_glob(pattern: str, path: str, ok: bool) -> None:
    assert glob_match(pattern, path) is ok


def test_spec_for() -> None:
    spec = fixed_block_spec_for("base/1/1259", {"base/**": 8192}, 65536)
    assert spec == FixedBlocks(8192, 65536)
    assert fixed_block_spec_for("other", {"base/**": 8192}, 65536) is None
    assert fixed_block_spec_for("x.ibd", {"*.ibd": 16384}, 8192) == FixedBlocks(16384, 16384)
