"""The tree node format: deterministic, bytes-safe, strict on decode."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frieze.core.errors import IntegrityError
from frieze.repo.tree import (
    HEADER,
    Extent,
    Node,
    NodeType,
    check_name,
    decode_tree,
    encode_tree,
    referenced_blobs,
)

ID1, ID2, ID3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def _sample() -> list[Node]:
    return [
        Node(name=b"f", type=NodeType.FILE, mode=0o644, uid=1000, gid=1000, user="u", group="g",
             mtime_ns=1, atime_ns=2, ctime_ns=3, size=30, inode=7, dev=9, nlink=2,
             xattrs=[(b"user.a", b"\x00\xff")], extents=[Extent(ID1, 10), Extent(None, 10), Extent(ID2, 10)]),
        Node(name=b"\xff\xfe-latin", type=NodeType.SYMLINK, target=b"../x\xff"),
        Node(name=b"d", type=NodeType.DIR, mode=0o755, subtree=ID3),
        Node(name=b"h", type=NodeType.HARDLINK, link=b"sub/f"),
        Node(name=b"p", type=NodeType.FIFO, mode=0o600),
        Node(name=b"c", type=NodeType.CHAR, rdev=0x0103),
        Node(name=b"blk", type=NodeType.FILE, size=16384, block_size=8192, page_size=8192,
             extents=[Extent(ID1, 8192), Extent(ID1, 8192)]),
    ]


def test_round_trip_and_deterministic() -> None:
    nodes = _sample()
    blob = encode_tree(nodes)
    assert blob == encode_tree(list(reversed(nodes)))
    back = decode_tree(blob)
    assert [n.name for n in back] == sorted(n.name for n in nodes)
    assert {n.name: n for n in back} == {n.name: n for n in nodes}
    assert blob.startswith(HEADER + b"\n")


def test_referenced_blobs() -> None:
    subs, data = referenced_blobs(encode_tree(_sample()))
    assert subs == [ID3]
    assert data == [ID1, ID2]


@pytest.mark.parametrize("name", [b"", b".", b"..", b"a/b", b"/", b"a\x00b", b"x" * 256])
def test_unsafe_names_refused(name: bytes) -> None:
    with pytest.raises(IntegrityError):
        check_name(name)
    line = json.dumps({"t": "file", "n": name.decode("ascii")})
    with pytest.raises(IntegrityError):
        decode_tree(HEADER + b"\n" + line.encode() + b"\n")


def _raw(*objs: dict[str, object]) -> bytes:
    return HEADER + b"\n" + b"".join(json.dumps(o).encode() + b"\n" for o in objs)


@pytest.mark.parametrize("objs", [
    [{"t": "file", "n": "a"}, {"t": "file", "n": "a"}],                 # duplicate
    [{"t": "file", "n": "b"}, {"t": "file", "n": "a"}],                 # out of order
    [{"t": "dir", "n": "a"}],                                             # dir without subtree
    [{"t": "file", "n": "a", "s": 5}],                                    # extents do not cover size
    [{"t": "file", "n": "a", "s": -1}],                                   # negative
    [{"t": "bogus", "n": "a"}],                                           # type
    [{"t": "symlink", "n": "a"}],                                         # no target
    [{"t": "hardlink", "n": "a", "ln": "/etc/passwd"}],                   # absolute link
    [{"t": "hardlink", "n": "a", "ln": "../x"}],                          # dot-dot link
    [{"t": "file", "n": "a", "m": 0o170000}],                             # type bits in mode
    [{"t": "file", "n": "a", "zz": 1}],                                   # unknown field
    [{"t": "file", "n": "a", "x": [["short", 1]], "s": 1}],               # bad id
    [{"t": "file", "n": "a", "x": [["A" * 42 + "B", 1]], "s": 1}],        # non-canonical id encoding
    [{"t": "file", "n": "a", "x": [["A" * 42 + "=", 1]], "s": 1}],        # not base64url
])
def test_malformed_trees_refused(objs: list[dict[str, object]]) -> None:
    with pytest.raises(IntegrityError):
        decode_tree(_raw(*objs), tree_id=b"\x09" * 32)


def test_encode_refuses_duplicates() -> None:
    with pytest.raises(IntegrityError):
        encode_tree([Node(name=b"a", type=NodeType.FIFO), Node(name=b"a", type=NodeType.FIFO)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b not in (b".", b"..") and b"/" not in b
                                                          and b"\x00" not in b), unique=True, max_size=20))
def test_any_safe_name_round_trips(names: list[bytes]) -> None:
    nodes = [Node(name=n, type=NodeType.SYMLINK, target=n) for n in names]
    back = decode_tree(encode_tree(nodes))
    assert [(n.name, n.target) for n in back] == sorted((n, n) for n in names)
