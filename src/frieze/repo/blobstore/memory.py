"""An in-memory blob store: the reference implementation of the contract in :mod:`.base`, for tests.

Thread-safe (one lock around a dict). Not persistent: the data lives as long as the process, or, for a
named store (``MemoryBlobStore(name="x")``, what ``memory://x`` opens), as long as the process and shared
by every store opened with the same name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from frieze.core.errors import AlreadyExists, Forbidden, NotFound
from frieze.repo.blobstore._common import check_range
from frieze.repo.blobstore.base import BlobInfo, Capabilities, check_key


class _Space:
    """One namespace of blobs: key -> (bytes, mtime), guarded by a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.blobs: dict[str, tuple[bytes, float]] = {}


_NAMED: dict[str, _Space] = {}
_NAMED_LOCK = threading.Lock()


class MemoryBlobStore:
    """A dict of immutable ``bytes``; every method holds the lock only for the dict operation."""

    def __init__(self, *, append_only: bool = False, name: str | None = None) -> None:
        self.append_only = append_only
        self.name = name
        self.capabilities = Capabilities(name="memory", persistent=False)
        if name is None:
            self._space = _Space()
        else:
            with _NAMED_LOCK:
                self._space = _NAMED.setdefault(name, _Space())

    def __repr__(self) -> str:
        return f"MemoryBlobStore(name={self.name!r}, append_only={self.append_only})"

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        check_key(key)
        blob = bytes(data)  # a private copy: the caller may reuse its buffer
        with self._space.lock:
            if key in self._space.blobs:
                raise AlreadyExists(f"blob {key!r} already exists", key=key)
            self._space.blobs[key] = (blob, time.time())

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        check_key(key)
        check_range(key, offset, length)
        with self._space.lock:
            item = self._space.blobs.get(key)
        if item is None:
            raise NotFound(f"blob {key!r} not found", key=key)
        blob = item[0]
        if offset == 0 and length is None:
            return blob
        end = len(blob) if length is None else offset + length
        return blob[offset:end]

    def stat(self, key: str) -> BlobInfo | None:
        check_key(key)
        with self._space.lock:
            item = self._space.blobs.get(key)
        return None if item is None else BlobInfo(key, len(item[0]), item[1])

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        with self._space.lock:
            items = [(k, len(v[0]), v[1]) for k, v in self._space.blobs.items() if k.startswith(prefix)]
        for k, n, t in items:
            yield BlobInfo(k, n, t)

    def delete(self, key: str) -> None:
        check_key(key)
        if self.append_only:
            raise Forbidden(f"store is append-only: delete of blob {key!r} refused", key=key)
        with self._space.lock:
            self._space.blobs.pop(key, None)

    def close(self) -> None:
        pass

    @staticmethod
    def forget_named(name: str) -> None:
        """Drop a named namespace (tests)."""
        with _NAMED_LOCK:
            _NAMED.pop(name, None)
