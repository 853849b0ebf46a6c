"""Helpers for the data-path tests (no tests here): a repository over a blob store, tree crafting, compares."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from frieze.repo.blobstore.memory import MemoryBlobStore
from frieze.repo.tree import parse_tree_objects, subtree_id
from frieze.repo.types import KdfParams, RepoParams


def make_store() -> MemoryBlobStore:
    """The real in-memory store (a missing module fails the import, never silently swaps in a double)."""
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


def same_but_atime(repo: Any, a: bytes, b: bytes) -> bool:
    """Trees ``a`` and ``b`` hold the same entries and subtrees, their records equal but for access times."""
    ta, tb = parse_tree_objects(repo.read_blob(a)), parse_tree_objects(repo.read_blob(b))
    if set(ta) != set(tb):
        return False
    for name, oa in ta.items():
        ob = tb[name]
        if {**oa, "at": 0, "st": 0} != {**ob, "at": 0, "st": 0}:
            return False
        if "st" in oa and not same_but_atime(repo, subtree_id(oa), subtree_id(ob)):
            return False
    return True
