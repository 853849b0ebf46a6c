"""The fault-injecting wrapper does what its docstring says (the repository's fault tests rely on it)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from frieze.core.errors import NoSpace, NotFound, StorageError, TransientStorageError
from frieze.repo.blobstore.faulty import FaultyBlobStore, Rule
from frieze.repo.blobstore.local import LocalBlobStore
from frieze.repo.blobstore.memory import MemoryBlobStore

REPO = Path(__file__).resolve().parents[3]


def test_fail_nth_put_before_touching_inner() -> None:
    inner = MemoryBlobStore()
    fs = FaultyBlobStore(inner).fail("put", nth=3)
    fs.put("a", b"1")
    fs.put("b", b"2")
    with pytest.raises(TransientStorageError, match="'c'"):
        fs.put("c", b"3")
    assert inner.stat("c") is None  # nothing half-written
    fs.put("c", b"3")  # fires once only
    fs.put("d", b"4")
    assert sorted(b.key for b in inner.list()) == ["a", "b", "c", "d"]
    assert fs.fired == [("raise:put#1", "put", "c")]


def test_fail_with_error_class_prefix_and_unbounded() -> None:
    fs = FaultyBlobStore(MemoryBlobStore())
    fs.put("index/1", b"i")
    fs.put("data/1", b"d")
    fs.fail("get", key_prefix="index/", error=StorageError, times=None)
    for _ in range(3):
        with pytest.raises(StorageError) as ei:
            fs.get("index/1")
        assert type(ei.value) is StorageError
    assert fs.get("data/1") == b"d"
    fs.clear()
    assert fs.get("index/1") == b"i"
    inst = NotFound("custom")
    fs.add(Rule("stat", "raise", error=inst))
    with pytest.raises(NotFound, match="custom"):
        fs.stat("data/1")


def test_no_space_after_budget_then_recovers_when_cleared() -> None:
    inner = MemoryBlobStore()
    fs = FaultyBlobStore(inner).no_space_after(250)
    fs.put("a", b"x" * 100)
    fs.put("b", b"x" * 100)
    with pytest.raises(NoSpace, match="ENOSPC"):
        fs.put("c", b"x" * 100)
    assert inner.stat("c") is None
    fs.put("small", b"x" * 50)  # still fits the budget
    fs.clear()
    fs.put("c", b"x" * 100)
    assert fs.bytes_written == 350


def test_corrupt_and_truncate_reads_leave_stored_bytes_alone() -> None:
    inner = MemoryBlobStore()
    fs = FaultyBlobStore(inner)
    data = bytes(range(200))
    fs.put("data/x", data)
    fs.put("other", data)
    fs.corrupt_reads("data/", flip=3, times=1)
    bad = fs.get("data/x")
    assert len(bad) == len(data) and bad != data
    assert sum(bin(a ^ b).count("1") for a, b in zip(bad, data, strict=True)) == 3
    assert fs.get("data/x") == data  # times=1
    assert fs.get("other") == data
    fs.truncate_reads("other", keep=10)
    assert fs.get("other") == data[:10]
    assert fs.get("other", 5, 100) == data[5:15]
    assert inner.get("other") == data


def test_delay() -> None:
    fs = FaultyBlobStore(MemoryBlobStore()).delay("put", 1.0, nth=2, times=1)
    t = time.monotonic()
    fs.put("a", b"")
    assert time.monotonic() - t < 0.9  # not delayed (a wide margin: a loaded machine stalls a put for 100s of ms)
    t = time.monotonic()
    fs.put("b", b"")
    assert time.monotonic() - t >= 1.0


def test_calls_are_recorded_and_list_faults() -> None:
    fs = FaultyBlobStore(MemoryBlobStore())
    fs.put("a", b"1")
    list(fs.list("a"))
    fs.delete("a")
    assert fs.calls == [("put", "a"), ("list", "a"), ("delete", "a")]
    fs.fail("list")
    with pytest.raises(TransientStorageError):
        fs.list("")


KILL_CHILD = r"""
import sys
from frieze.repo.blobstore.local import LocalBlobStore
from frieze.repo.blobstore.faulty import FaultyBlobStore
root, point, how = sys.argv[1], sys.argv[2], sys.argv[3]
fs = FaultyBlobStore(LocalBlobStore(root)).kill_at(point, nth=3, how=how)
for i in range(10):
    fs.put(f"k/{i}", b"blob %d" % i * 1000)
    print(i, flush=True)
"""


@pytest.mark.parametrize(("point", "how"), [("before_put", "sigkill"), ("after_put", "sigkill"),
                                            ("after_put", "exit")])
def test_kill_at_named_point(tmp_path: Path, point: str, how: str) -> None:
    r = subprocess.run([sys.executable, "-c", KILL_CHILD, str(tmp_path), point, how], capture_output=True,
                       timeout=60, cwd=REPO, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
                       check=False)
    assert r.returncode == (-signal.SIGKILL if how == "sigkill" else 137), r.stderr
    assert r.stdout.split() == [b"0", b"1"]  # the third put never returned
    s = LocalBlobStore(tmp_path)
    keys = sorted(b.key for b in s.list())
    if point == "before_put":
        assert keys == ["k/0", "k/1"]
    else:
        assert keys == ["k/0", "k/1", "k/2"]
        assert s.get("k/2") == b"blob 2" * 1000
    print(f"RESULT faulty-kill point={point} how={how} rc={r.returncode} blobs={len(keys)}")
