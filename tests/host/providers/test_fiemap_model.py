"""``diff_extents`` against a byte-level model (unit test of the logic; the real-file-system proof is in
test_conformance.py): whatever two extent maps say, every byte whose content differs is reported."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from frieze.host.providers._fiemap import ALIGN, Extent, diff_extents

KINDS = ["data", "data", "data", "zero", "opaque"]


@st.composite
def extent_map(draw: st.DrawFn, size: int) -> list[Extent]:
    out: list[Extent] = []
    pos = 0
    while pos < size:
        gap = draw(st.integers(0, 3)) * ALIGN
        ln = draw(st.integers(1, 4)) * ALIGN
        lo = pos + gap
        if lo >= size:
            break
        kind = draw(st.sampled_from(KINDS))
        phys = draw(st.integers(0, 6)) * ALIGN  # small space: overlaps and sharing are common
        out.append((lo, lo + ln, phys, kind))
        pos = lo + ln
    return out


def content(exts: list[Extent], size: int, tag: str) -> list[object]:
    """What each 512-byte piece reads as: physical address for data, 0 for holes/unwritten, unique if opaque."""
    out: list[object] = []
    for x in range(0, size, 512):
        v: object = 0
        for lo, hi, ph, kind in exts:
            if lo <= x < hi:
                v = ("p", ph + (x - lo)) if kind == "data" else (0 if kind == "zero" else (tag, x))
        out.append(v)
    return out


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_differing_byte_is_reported(data: st.DataObject) -> None:
    old_size = data.draw(st.integers(0, 12)) * 1024 + data.draw(st.integers(0, 1)) * 512
    new_size = data.draw(st.integers(0, 12)) * 1024 + data.draw(st.integers(0, 1)) * 512
    old = data.draw(extent_map(old_size))
    new = data.draw(extent_map(new_size))
    ranges = diff_extents(old, old_size, new, new_size)
    co, cn = content(old, old_size, "old"), content(new, new_size, "new")
    for i, v in enumerate(cn):
        x = i * 512
        differs = i >= len(co) or co[i] != v
        if differs:
            assert any(a <= x < a + n for a, n in ranges), (x, old, new, ranges)
    for a, n in ranges:
        assert n > 0 and a % ALIGN == 0 and a + n <= new_size


def test_identical_maps_report_nothing() -> None:
    m: list[Extent] = [(0, 8192, 4096, "data"), (12288, 16384, 40960, "data")]
    assert diff_extents(m, 16384, m, 16384) == []
