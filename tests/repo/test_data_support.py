"""Helpers for the data-path tests (no tests here): a repository over a blob store, tree crafting, compares."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from frieze.core.errors import AlreadyExists, NotFound
from frieze.repo.blobstore.base import BlobInfo, Capabilities, check_key
from frieze.repo.types import KdfParams, RepoParams


class DictStore:
    """A minimal in-memory BlobStore (used only if the real memory store is not importable)."""

    capabilities = Capabilities(name="dict", persistent=False)
    append_only = False

    def __init__(self) -> None:
        self.d: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        check_key(key)
        with self.lock:
            if key in self.d:
                raise AlreadyExists(f"blob {key} exists", key=key)
            self.d[key] = bytes(data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with self.lock:
            if key not in self.d:
                raise NotFound(f"blob {key} missing", key=key)
            b = self.d[key]
        return b[offset:] if length is None else b[offset:offset + length]

    def stat(self, key: str) -> BlobInfo | None:
        with self.lock:
            b = self.d.get(key)
        return None if b is None else BlobInfo(key, len(b), 0.0)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        with self.lock:
            items = [(k, len(v)) for k, v in self.d.items() if k.startswith(prefix)]
        for k, n in items:
            yield BlobInfo(k, n, 0.0)

    def delete(self, key: str) -> None:
        with self.lock:
            self.d.pop(key, None)

    def close(self) -> None:
        pass


def make_store() -> Any:
    try:
        from frieze.repo.blobstore.memory import MemoryBlobStore
    except ImportError:
        return DictStore()
    return MemoryBlobStore()


SMALL_CDC = RepoParams(cdc_min=16 * 1024, cdc_avg=64 * 1024, cdc_max=256 * 1024, page_size=8192,
                       block_size=64 * 1024, kdf=KdfParams.cheap_for_tests())


def make_repo(tmp_path: Path | None = None, params: RepoParams = SMALL_CDC) -> Any:
    from frieze.repo.repository import Repository

    return Repository.init(make_store(), "pw", params=params)


def tree_listing(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``root``: type, perms, size, mtime, content or link target (for comparisons)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body: Any = f.read()
                out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, body)
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                out[rel] = ("o", stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))
    return out
