"""frieze.core.memtune: with the tuning, big transient buffers reuse memory instead of faulting in fresh pages
each time (measured in a child process with getrusage's minor faults)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import os, resource, sys
from frieze.core.memtune import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc() is True and tune_malloc() is True
src = os.urandom(1 << 20)
def work():
    for _ in range(100):
        b = bytearray(src * 6)          # a 6 MiB buffer, as a decompressed pack span
        b[::4096] = b"x" * len(b[::4096])  # touch every page
        del b
work()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
work()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuning_stops_refaulting_big_buffers() -> None:
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    plain, tuned = faults("plain"), faults("tuned")
    # untuned: every 6 MiB buffer is a fresh mapping (~1500 faults each, x100); tuned: the pages are reused
    assert plain > 50_000, plain
    assert tuned < plain / 10, (plain, tuned)


GC_CHILD = """
import gc, sys
from frieze.core import memtune
before = gc.get_threshold()
assert memtune.tune_gc() is (sys.argv[1] == "on")
assert memtune.tune_gc() is False  # once per process
after = gc.get_threshold()
print(before[0], after[0], gc.get_freeze_count() > 0)
"""


@pytest.mark.parametrize("mode", ["on", "off"])
def test_gc_tuning_raises_the_first_generation_threshold_once(mode: str) -> None:
    env = {**__import__("os").environ, "FRIEZE_GC_TUNE": "1" if mode == "on" else "0"}
    out = subprocess.run([sys.executable, "-c", GC_CHILD, mode], capture_output=True, text=True, check=True, env=env)
    before, after, frozen = out.stdout.split()
    if mode == "on":
        assert (int(before), int(after), frozen) == (700, 50_000, "True")
    else:
        assert (int(before), int(after), frozen) == (700, 700, "False")
