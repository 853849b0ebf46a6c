"""diff: what changed between two snapshots, fast: equal subtree ids are skipped without reading them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from frieze.repo.browse import read_tree
from frieze.repo.dataport import RepoLike
from frieze.repo.tree import Node, NodeType


@dataclass(frozen=True)
class Change:
    """``kind`` is "added", "removed" or "modified"; ``reasons`` say what differs for "modified"."""

    path: str
    kind: str
    type: str
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "type": self.type, "reasons": list(self.reasons)}


@dataclass
class DiffResult:
    changes: list[Change] = field(default_factory=list)
    trees_read: int = 0
    trees_skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` record."""
        return {"counts": self.counts(), "changes": [c.to_dict() for c in self.changes],
                "trees_read": self.trees_read, "trees_skipped": self.trees_skipped}

    def counts(self) -> dict[str, int]:
        out = {"added": 0, "removed": 0, "modified": 0}
        for c in self.changes:
            out[c.kind] += 1
        return out


def _reasons(a: Node, b: Node) -> list[str]:
    r: list[str] = []
    if a.type is not b.type:
        return ["type"]
    if a.type is NodeType.FILE:
        if a.size != b.size:
            r.append("size")
        if a.extents != b.extents:
            r.append("content")
    if a.mode != b.mode:
        r.append("mode")
    if (a.uid, a.gid) != (b.uid, b.gid):
        r.append("owner")
    if a.mtime_ns != b.mtime_ns:
        r.append("mtime")
    if a.xattrs != b.xattrs:
        r.append("xattrs")
    if a.target != b.target:
        r.append("target")
    if a.link != b.link:
        r.append("link")
    if a.rdev != b.rdev:
        r.append("device")
    return r


class _Differ:
    def __init__(self, repo: RepoLike) -> None:
        self.repo = repo
        self.res = DiffResult()

    def nodes(self, tree: bytes | None) -> dict[bytes, Node]:
        if tree is None:
            return {}
        self.res.trees_read += 1
        return {n.name: n for n in read_tree(self.repo, tree)}

    def all_below(self, node: Node, path: str, kind: str) -> Iterator[Change]:
        yield Change(path, kind, node.type.value)
        if node.type is NodeType.DIR:
            for n in self.nodes(node.subtree).values():
                yield from self.all_below(n, f"{path}/{os.fsdecode(n.name)}", kind)

    def tree(self, ta: bytes | None, tb: bytes | None, base: str) -> None:
        if ta is not None and ta == tb:
            self.res.trees_skipped += 1
            return
        a, b = self.nodes(ta), self.nodes(tb)
        for name in sorted(set(a) | set(b)):
            p = f"{base}/{os.fsdecode(name)}" if base else os.fsdecode(name)
            na, nb = a.get(name), b.get(name)
            if na is None and nb is not None:
                self.res.changes.extend(self.all_below(nb, p, "added"))
            elif nb is None and na is not None:
                self.res.changes.extend(self.all_below(na, p, "removed"))
            elif na is not None and nb is not None:
                if na.type is not nb.type:
                    self.res.changes.extend(self.all_below(na, p, "removed"))
                    self.res.changes.extend(self.all_below(nb, p, "added"))
                    continue
                reasons = _reasons(na, nb)
                if reasons:
                    self.res.changes.append(Change(p, "modified", nb.type.value, tuple(reasons)))
                if na.type is NodeType.DIR:
                    self.tree(na.subtree, nb.subtree, p)


def diff(repo: RepoLike, snap_a: str, snap_b: str) -> DiffResult:
    """Changes from snapshot ``snap_a`` to ``snap_b`` (ids, prefixes or "latest"), in path order per
    directory. Directories whose subtree ids are equal are not read."""
    a = repo.load_snapshot(snap_a)
    b = repo.load_snapshot(snap_b)
    d = _Differ(repo)
    d.tree(a.tree, b.tree, "")
    return d.res
