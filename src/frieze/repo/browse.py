"""ls: list the entries of a snapshot path, as JSON-friendly records."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from frieze.core.errors import NotFound
from frieze.repo.dataport import RepoLike
from frieze.repo.tree import Node, NodeType, decode_tree


def _text(b: bytes | None) -> str | None:
    return None if b is None else os.fsdecode(b)


def _iso_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Entry:
    """One listed entry: its snapshot path (``/``-separated) and node."""

    path: str
    node: Node

    def to_dict(self) -> dict[str, Any]:
        n = self.node
        d: dict[str, Any] = {
            "path": self.path, "name": _text(n.name), "type": n.type.value, "mode": f"{n.mode:04o}",
            "uid": n.uid, "gid": n.gid, "user": n.user, "group": n.group, "size": n.size,
            "mtime": _iso_ns(n.mtime_ns),
        }
        if n.type is NodeType.SYMLINK:
            d["target"] = _text(n.target)
        if n.type is NodeType.HARDLINK:
            d["link"] = _text(n.link)
        if n.type is NodeType.DIR and n.subtree is not None:
            d["tree"] = n.subtree.hex()
        if n.type is NodeType.FILE:
            d["chunks"] = sum(1 for e in n.extents if e.id is not None)
            d["sparse_bytes"] = sum(e.length for e in n.extents if e.id is None)
            if n.block_size:
                d["block_size"] = n.block_size
        if n.xattrs:
            d["xattrs"] = [_text(k) for k, _ in n.xattrs]
        return d


def read_tree(repo: RepoLike, tree_id: bytes) -> list[Node]:
    return decode_tree(repo.read_blob(tree_id), tree_id)


def resolve(repo: RepoLike, root: bytes, path: str) -> tuple[Node | None, bytes | None]:
    """``(node, tree id)`` at snapshot ``path``: for the root, ``(None, root)``; NotFound if absent."""
    parts = [p for p in os.fsencode(path).split(b"/") if p not in (b"", b".")]
    tree: bytes | None = root
    node: Node | None = None
    for i, part in enumerate(parts):
        if tree is None:
            raise NotFound(f"{b'/'.join(parts[:i]).decode(errors='replace')} is not a directory", path=path)
        found = {n.name: n for n in read_tree(repo, tree)}.get(part)
        if found is None:
            raise NotFound(f"path {path!r} is not in the snapshot", path=path)
        node = found
        tree = node.subtree if node.type is NodeType.DIR else None
    return node, tree


def ls(repo: RepoLike, snapshot: str, path: str = "", *, recursive: bool = False) -> Iterator[Entry]:
    """The entries at ``path`` of ``snapshot`` (id, prefix or "latest"): a directory's children (all
    descendants, depth first, with ``recursive``), or the single entry when ``path`` is not a directory."""
    snap = repo.load_snapshot(snapshot)
    node, tree = resolve(repo, snap.tree, path)
    base = "/".join(p for p in path.split("/") if p not in ("", "."))
    if tree is None:
        assert node is not None
        yield Entry(base, node)
        return
    yield from _walk(repo, tree, base, recursive)


def _walk(repo: RepoLike, tree: bytes, base: str, recursive: bool) -> Iterator[Entry]:
    for n in read_tree(repo, tree):
        p = f"{base}/{os.fsdecode(n.name)}" if base else os.fsdecode(n.name)
        yield Entry(p, n)
        if recursive and n.type is NodeType.DIR and n.subtree is not None:
            yield from _walk(repo, n.subtree, p, True)
