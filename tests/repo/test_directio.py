"""The O_DIRECT buffer pool: bounded, reused, and a failed allocation does not use up its slot."""

from __future__ import annotations

import ctypes
import mmap
import threading

import pytest

from frieze.repo import directio
from frieze.repo.directio import DirectBuffers


def test_buffers_are_page_aligned_reused_and_bounded() -> None:
    pool = DirectBuffers(1 << 16, 2)
    a, b = pool.get(), pool.get()
    assert len(a) == 1 << 16 and a is not b
    assert ctypes.addressof(ctypes.c_char.from_buffer(a)) % mmap.PAGESIZE == 0  # O_DIRECT needs aligned memory
    got: list[mmap.mmap] = []
    t = threading.Thread(target=lambda: got.append(pool.get()))
    t.start()
    t.join(0.2)
    assert t.is_alive() and not got  # a third waits: at most two exist
    pool.put(a)
    t.join(5)
    assert got == [a]  # the one given back is reused, not a new one


def test_a_failed_allocation_gives_its_slot_back(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = DirectBuffers(1 << 16, 1)
    real = mmap.mmap
    calls = {"n": 0}

    def failing_once(*a: object, **k: object) -> mmap.mmap:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(12, "Cannot allocate memory")
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(directio.mmap, "mmap", failing_once)
    with pytest.raises(OSError, match="allocate"):
        pool.get()
    done: list[mmap.mmap] = []
    t = threading.Thread(target=lambda: done.append(pool.get()))
    t.start()
    t.join(5)
    assert done and not t.is_alive(), "the only slot was lost to the failed allocation"


def test_write_alignment_is_whole_pages_and_blocks() -> None:
    base = max(4096, mmap.PAGESIZE)
    assert directio.write_alignment(4096) == base
    assert directio.write_alignment(65536) == max(65536, base)
    for nonsense in (0, -1, 3000, 3 << 20):  # not a power of two, or beyond 1 MiB: 4 KiB (or the page)
        assert directio.write_alignment(nonsense) == base
