"""Helpers for the repository-format tests (no tests here).

``DictStore`` is a tiny in-test blob store used only where the real stores are not needed; the real
memory and local stores are used when present (``stores()``).
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from frieze.core.errors import AlreadyExists, Forbidden, NotFound
from frieze.repo.blobstore.base import BlobInfo, Capabilities, check_key
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


def memory_store(append_only: bool = False) -> Any:
    try:
        mod = importlib.import_module("frieze.repo.blobstore.memory")
        return mod.MemoryBlobStore(append_only=append_only)
    except (ImportError, AttributeError, TypeError):
        return DictStore(append_only=append_only)


def local_store(root: Path, append_only: bool = False) -> Any | None:
    try:
        mod = importlib.import_module("frieze.repo.blobstore.local")
        return mod.LocalBlobStore(root, append_only=append_only)
    except (ImportError, AttributeError, TypeError):
        return None


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


class DirStore:
    """A minimal directory store for tests that need persistence before/without the real local store:
    temp file + fsync + link (create-if-absent) + directory fsync."""

    def __init__(self, root: Path, append_only: bool = False) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.capabilities = Capabilities(name="testdir")
        self.append_only = append_only

    def _p(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        import os
        import tempfile

        p = self._p(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, p)
            except FileExistsError:
                raise AlreadyExists(f"blob {key} exists", key=key) from None
        finally:
            os.unlink(tmp)
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            with open(self._p(key), "rb") as f:
                f.seek(offset)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError:
            raise NotFound(f"blob {key} not found", key=key) from None

    def stat(self, key: str) -> BlobInfo | None:
        try:
            s = self._p(key).stat()
        except FileNotFoundError:
            return None
        return BlobInfo(key, s.st_size, s.st_mtime)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        import os

        for dirpath, _dirs, files in os.walk(self.root):
            for fn in files:
                if fn.startswith(".tmp-"):
                    continue
                full = Path(dirpath) / fn
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        s = full.stat()
                    except FileNotFoundError:
                        continue
                    yield BlobInfo(key, s.st_size, s.st_mtime)

    def delete(self, key: str) -> None:
        if self.append_only:
            raise Forbidden(f"store is append-only: delete of {key} refused", key=key)
        try:
            self._p(key).unlink()
        except FileNotFoundError:
            pass

    def close(self) -> None:
        pass


def dir_store(root: Path, append_only: bool = False) -> Any:
    """The real local store when present, else DirStore."""
    return local_store(root, append_only) or DirStore(root, append_only)
