"""Helpers for the repository-format tests (no tests here).

``DictStore`` is a tiny in-test blob store for damage tests (``force`` bypasses write-once); everything
else uses the real stores: ``memory_store()`` (MemoryBlobStore) and ``local_store()`` (LocalBlobStore). A
missing store module is an import error here, never a skip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from frieze.core.errors import AlreadyExists, Forbidden, NotFound
from frieze.repo.blobstore.base import BlobInfo, Capabilities, check_key
from frieze.repo.blobstore.local import LocalBlobStore
from frieze.repo.blobstore.memory import MemoryBlobStore
from frieze.repo.types import KdfParams, RepoParams

PW = "correct horse battery staple"


def cheap_params(**kw: Any) -> RepoParams:
    """Small packs and cheap KDF parameters (tests only)."""
    base: dict[str, Any] = {"kdf": KdfParams.cheap_for_tests(), "pack_size": 256 * 1024,
                            "cdc_min": 4096, "cdc_avg": 16384, "cdc_max": 65536}
    base.update(kw)
    return RepoParams(**base)


class DictStore:
    """Write-once dict store, copying on put (a unit-test double of the blob store port)."""

    def __init__(self, append_only: bool = False) -> None:
        self.capabilities = Capabilities(name="dict", persistent=False)
        self.append_only = append_only
        self.blobs: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        check_key(key)
        with self._lock:
            if key in self.blobs:
                raise AlreadyExists(f"blob {key} exists", key=key)
            self.blobs[key] = (bytes(data), time.time())

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            if key not in self.blobs:
                raise NotFound(f"blob {key} not found", key=key)
            d = self.blobs[key][0]
        return d[offset:] if length is None else d[offset:offset + length]

    def stat(self, key: str) -> BlobInfo | None:
        with self._lock:
            v = self.blobs.get(key)
        return None if v is None else BlobInfo(key, len(v[0]), v[1])

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        with self._lock:
            items = [(k, v) for k, v in self.blobs.items() if k.startswith(prefix)]
        for k, v in items:
            yield BlobInfo(k, len(v[0]), v[1])

    def delete(self, key: str) -> None:
        if self.append_only:
            raise Forbidden(f"store is append-only: delete of {key} refused", key=key)
        with self._lock:
            self.blobs.pop(key, None)

    def close(self) -> None:
        pass

    # test helpers: bypass write-once to simulate damage
    def force(self, key: str, data: bytes) -> None:
        with self._lock:
            self.blobs[key] = (data, time.time())


def memory_store(append_only: bool = False) -> MemoryBlobStore:
    """The real in-memory store."""
    return MemoryBlobStore(append_only=append_only)


def local_store(root: Path, append_only: bool = False) -> LocalBlobStore:
    """The real local directory store (temp file, fsync, link, directory fsync)."""
    return LocalBlobStore(root, append_only=append_only)


def simple_tree(repo: Any, w: Any, data_ids: list[bytes], subtrees: list[bytes] | None = None) -> bytes:
    """Build a real tree blob (B's format) listing ``data_ids`` as one file's chunks; return its id."""
    from frieze.repo import tree as T
    from frieze.repo.types import BlobKind

    nodes = []
    sizes = []
    for i, bid in enumerate(data_ids):
        sizes.append(len(repo.read_blob(bid)) if repo.has_blob(bid) else 1)
        nodes.append(T.Node(name=f"f{i:05d}".encode(), type=T.NodeType.FILE, size=sizes[-1],
                            extents=[T.Extent(id=bid, length=sizes[-1])]))
    for j, sid in enumerate(subtrees or []):
        nodes.append(T.Node(name=f"d{j:05d}".encode(), type=T.NodeType.DIR, subtree=sid))
    blob = T.encode_tree(nodes)
    tid: bytes = repo.chunk_id(blob)
    w.add_blob(tid, blob, kind=BlobKind.TREE)
    return tid
