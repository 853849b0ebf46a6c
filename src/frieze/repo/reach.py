"""Reachability: walk snapshot trees to the set of live blobs (used by check, prune and copy).

The tree format belongs to ``frieze.repo.tree`` (its ``referenced_blobs``); it is imported lazily so this
layer works (and can be tested with another walker) before or without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from frieze.core.errors import FriezeError, NotSupported

Walker = Callable[[bytes], tuple[list[bytes], list[bytes]]]
ReadTree = Callable[[bytes], bytes]


def default_walker() -> Walker:
    try:
        from frieze.repo.tree import referenced_blobs
    except ImportError as e:  # pragma: no cover - tree.py ships with the data path
        raise NotSupported(f"cannot walk snapshot trees: frieze.repo.tree is unavailable ({e})") from None
    return referenced_blobs


@dataclass
class Reach:
    trees: dict[bytes, str] = field(default_factory=dict)  # tree id -> first snapshot that reaches it
    data: dict[bytes, bytes] = field(default_factory=dict)  # data id -> first tree that references it
    errors: list[tuple[bytes, str, FriezeError]] = field(default_factory=list)  # (tree id, snapshot, error)


def walk(roots: Iterable[tuple[str, bytes]], read_tree: ReadTree, walker: Walker | None = None,
         on_tree: Callable[[bytes], None] | None = None) -> Reach:
    """Breadth-first over every tree reachable from ``roots`` = (snapshot id, root tree id).

    A tree that cannot be read or decoded is recorded in ``errors`` (its subtrees are then unknown)."""
    w = walker or default_walker()
    r = Reach()
    queue: list[tuple[bytes, str]] = []
    for sid, root in roots:
        if root not in r.trees:
            r.trees[root] = sid
            queue.append((root, sid))
    while queue:
        tid, sid = queue.pop()
        try:
            blob = read_tree(tid)
            subs, datas = w(blob)
        except FriezeError as e:
            r.errors.append((tid, sid, e))
            continue
        if on_tree is not None:
            on_tree(tid)
        for s in subs:
            if s not in r.trees:
                r.trees[s] = sid
                queue.append((s, sid))
        for d in datas:
            r.data.setdefault(d, tid)
    return r
