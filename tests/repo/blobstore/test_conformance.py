"""The blob store contract (:mod:`frieze.repo.blobstore.base`), run against every implementation.

``store_factory`` (conftest) is parametrized over local (a temp dir), memory, s3 (a real moto server on a
free port, with a small multipart threshold) and faulty(memory) without faults. Each call of the factory
opens a new store object on the same backing storage.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frieze.core.errors import AlreadyExists, Forbidden, NotFound, UsageError
from frieze.repo.blobstore.base import BlobInfo, BlobStore, Capabilities

Factory = Callable[..., BlobStore]

BAD_KEYS = ["", "/a", "a/", "a//b", "..", "../x", "a/../b", "a/./b", ".", "a b", "a\\b", "ä", "a~b", "a?b",
            "a\nb", "x" * 1025, "a/" + "y" * 1023, "y" * 256, "a/" + "y" * 256]
GOOD_KEYS = ["a", "config", "data/ab/0123456789abcdef", "keys/slot-1.json", "A.b_c-d", "x" * 255,
             "/".join(["z" * 255] * 4), "..a", "a.."]


def _keys(store: BlobStore, prefix: str = "") -> list[str]:
    return sorted(b.key for b in store.list(prefix))


def test_shape(store_factory: Factory) -> None:
    s = store_factory()
    assert isinstance(s, BlobStore)
    assert isinstance(s.capabilities, Capabilities)
    assert s.append_only is False
    assert store_factory(append_only=True).append_only is True


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_refused_everywhere(store_factory: Factory, key: str) -> None:
    s = store_factory()
    for call in (lambda: s.put(key, b"x"), lambda: s.get(key), lambda: s.stat(key), lambda: s.delete(key)):
        with pytest.raises(UsageError) as ei:
            call()
        assert not isinstance(ei.value, NotFound | AlreadyExists)
    assert _keys(s) == []


def test_good_keys_roundtrip(store_factory: Factory) -> None:
    s = store_factory()
    for i, k in enumerate(GOOD_KEYS):
        s.put(k, f"blob {i}".encode())
    for i, k in enumerate(GOOD_KEYS):
        assert s.get(k) == f"blob {i}".encode()
    assert _keys(s) == sorted(GOOD_KEYS)


def test_put_get_buffer_types_and_empty(store_factory: Factory) -> None:
    s = store_factory()
    buf = bytearray(b"from a bytearray")
    s.put("b/bytes", b"plain bytes")
    s.put("b/bytearray", buf)
    s.put("b/view", memoryview(b"..a memoryview slice..")[2:-2])
    s.put("b/empty", b"")
    buf[:] = b"X" * len(buf)  # the store must have copied what it needed
    assert s.get("b/bytes") == b"plain bytes"
    assert s.get("b/bytearray") == b"from a bytearray"
    assert s.get("b/view") == b"a memoryview slice"
    assert s.get("b/empty") == b""
    info = s.stat("b/empty")
    assert info is not None and info.size == 0
    assert isinstance(s.get("b/bytes"), bytes)


def test_range_get(store_factory: Factory) -> None:
    s = store_factory()
    data = bytes(range(256)) * 4
    s.put("r", data)
    assert s.get("r", 0) == data
    assert s.get("r", 10) == data[10:]
    assert s.get("r", 10, 20) == data[10:30]
    assert s.get("r", 0, 1) == data[:1]
    assert s.get("r", 1023, 1) == data[1023:]
    assert s.get("r", 1000, 100) == data[1000:]  # past the end: truncated
    assert s.get("r", 5, 0) == b""
    assert s.get("r", 1024) == b""
    assert s.get("r", 5000, 10) == b""
    with pytest.raises(UsageError):
        s.get("r", -1, 5)
    with pytest.raises(UsageError):
        s.get("r", 0, -5)


def test_missing_key_not_found(store_factory: Factory) -> None:
    s = store_factory()
    s.put("present", b"x")
    with pytest.raises(NotFound):
        s.get("absent")
    with pytest.raises(NotFound):
        s.get("absent", 3, 4)
    with pytest.raises(NotFound):
        s.get("present/child")
    with pytest.raises(NotFound):
        s.get("dir/absent", 0, 0)
    assert s.stat("absent") is None
    assert s.stat("dir/absent") is None


def test_put_existing_refused_old_bytes_kept(store_factory: Factory) -> None:
    s = store_factory()
    s.put("k/one", b"original")
    for new in (b"different and longer bytes", b"", b"original", b"o"):
        with pytest.raises(AlreadyExists):
            s.put("k/one", new)
        assert s.get("k/one") == b"original"
    # another opener is refused as well
    with pytest.raises(AlreadyExists):
        store_factory().put("k/one", b"other")
    assert store_factory().get("k/one") == b"original"
    info = s.stat("k/one")
    assert info is not None and info.size == len(b"original")


def test_concurrent_creates_exactly_one_wins(store_factory: Factory) -> None:
    stores = [store_factory() for _ in range(2)]
    n = 8
    for round_ in range(3):
        key = f"race/{round_}"
        barrier = threading.Barrier(n)
        results: list[str | None] = [None] * n

        def worker(i: int, key: str = key, barrier: threading.Barrier = barrier,
                   results: list[str | None] = results) -> None:
            payload = f"writer {i} ".encode() * (1000 + i)
            barrier.wait()
            try:
                stores[i % 2].put(key, payload)
                results[i] = "ok"
            except AlreadyExists:
                results[i] = "exists"
            except Exception as e:  # pragma: no cover - reported by the assertion below
                results[i] = repr(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results.count("ok") == 1, results
        assert results.count("exists") == n - 1, results
        winner = results.index("ok")
        assert stores[0].get(key) == f"writer {winner} ".encode() * (1000 + winner)
        print(f"RESULT conformance-race round={round_} writers={n} winners=1 winner={winner}")


def test_stat_list_delete(store_factory: Factory) -> None:
    s = store_factory()
    blobs = {"data/aa/1": b"1", "data/aa/2": b"22", "data/ab/3": b"333", "index/1": b"4444", "config": b"c",
             "datax": b"dx"}
    for k, v in blobs.items():
        s.put(k, v)
    assert _keys(s) == sorted(blobs)
    assert _keys(s, "data/") == ["data/aa/1", "data/aa/2", "data/ab/3"]
    assert _keys(s, "data") == ["data/aa/1", "data/aa/2", "data/ab/3", "datax"]
    assert _keys(s, "data/a") == ["data/aa/1", "data/aa/2", "data/ab/3"]
    assert _keys(s, "data/aa/") == ["data/aa/1", "data/aa/2"]
    assert _keys(s, "data/aa/2") == ["data/aa/2"]
    assert _keys(s, "nothing") == []
    assert _keys(s, "nothing/") == []
    assert _keys(s, "data//") == [] and _keys(s, "data//aa") == [] and _keys(s, "./data") == []
    assert _keys(s, "../") == [] and _keys(s, "data/./aa") == []
    for info in s.list():
        assert isinstance(info, BlobInfo)
        assert info.size == len(blobs[info.key])
        assert info.mtime > 0
    st = s.stat("index/1")
    assert st is not None and st.key == "index/1" and st.size == 4
    s.delete("data/aa/1")
    s.delete("data/aa/1")  # idempotent
    s.delete("never/was")
    assert s.stat("data/aa/1") is None
    with pytest.raises(NotFound):
        s.get("data/aa/1")
    assert "data/aa/1" not in _keys(s)
    assert _keys(store_factory(), "data/aa/") == ["data/aa/2"]
    # a deleted key can be created again
    s.put("data/aa/1", b"again")
    assert s.get("data/aa/1") == b"again"


def test_read_after_write_across_openers(store_factory: Factory) -> None:
    w = store_factory()
    r = store_factory()
    for i in range(20):
        k = f"raw/{i:03d}"
        w.put(k, os.urandom(100 + i))
        st = r.stat(k)
        assert st is not None and st.size == 100 + i
        assert len(r.get(k)) == 100 + i
        assert k in _keys(r, "raw/")
    w.delete("raw/005")
    assert r.stat("raw/005") is None
    assert "raw/005" not in _keys(r)


def test_append_only_refuses_delete(store_factory: Factory) -> None:
    store_factory().put("keep/me", b"precious")
    ao = store_factory(append_only=True)
    with pytest.raises(Forbidden):
        ao.delete("keep/me")
    with pytest.raises(Forbidden):
        ao.delete("never/existed")
    assert ao.get("keep/me") == b"precious"
    ao.put("keep/new", b"adding is fine")
    with pytest.raises(AlreadyExists):
        ao.put("keep/me", b"overwrite attempt")
    assert store_factory().get("keep/me") == b"precious"
    assert _keys(ao, "keep/") == ["keep/me", "keep/new"]


def test_large_blob(store_factory: Factory) -> None:
    """12 MiB: more than two parts at the 5 MiB multipart threshold the S3 store runs with in this suite."""
    s = store_factory()
    data = os.urandom(1024 * 1024) * 12
    s.put("large/blob", memoryview(data))
    st = s.stat("large/blob")
    assert st is not None and st.size == len(data)
    assert s.get("large/blob") == data
    edge = 5 * 1024 * 1024
    assert s.get("large/blob", edge - 10, 20) == data[edge - 10: edge + 10]
    with pytest.raises(AlreadyExists):
        s.put("large/blob", data[:100])
    assert s.get("large/blob", 0, 100) == data[:100]
    assert s.get("large/blob", len(data) - 5) == data[-5:]


def test_close_idempotent(store_factory: Factory) -> None:
    s = store_factory()
    s.close()
    s.close()


_DIRS = st.sampled_from(["a", "b", "ab", "a.b"])
_LEAVES = st.sampled_from(["a.x", "b.x", "ab.x", "x"])
_KEYS = st.builds(lambda ds, leaf: "/".join([*ds, leaf]), st.lists(_DIRS, max_size=3), _LEAVES)
_PREFIXES = st.text(alphabet="ab./x", max_size=7)


def test_list_prefix_matches_a_model(store_factory: Factory) -> None:
    """list(prefix) returns exactly the keys that start with prefix (string semantics, not path semantics),
    for random key sets and prefixes; each example lives under its own namespace in one store."""
    s = store_factory()
    counter = iter(range(10**6))

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(keys=st.sets(_KEYS, max_size=8), prefixes=st.lists(_PREFIXES, min_size=1, max_size=6))
    def check(keys: set[str], prefixes: list[str]) -> None:
        ns = f"ns{next(counter)}"
        for k in keys:
            s.put(f"{ns}/{k}", k.encode())
        for p in ["", *prefixes]:
            got = _keys(s, f"{ns}/{p}")
            want = sorted(f"{ns}/{k}" for k in keys if k.startswith(p))
            assert got == want, (p, keys)

    check()
