"""The fast paths of the tree format agree with the reference ones: object-level parse/encode (what backup
compares parent entries with), batch extent decoding and encoding, and their refusals."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frieze.core.errors import IntegrityError
from frieze.repo.tree import (
    HEADER,
    Extent,
    Node,
    NodeType,
    _b64id,
    _encode_extents,
    _parse_extents,
    _parse_extents_slow,
    decode_tree,
    encode_objects,
    encode_tree,
    extent_ids,
    extent_ids_all,
    node_to_obj,
    obj_to_node,
    parse_tree_objects,
)

from .test_data_support import make_repo, same_but_atime
from .test_data_tree import _sample


@pytest.fixture(name="repo")
def _repo(tmp_path: Path) -> Any:
    return make_repo(tmp_path)

extents_st = st.lists(st.tuples(st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
                                st.integers(min_value=1, max_value=(1 << 63) - 1)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(extents_st)
def test_extent_codec_matches_reference(raw: list[tuple[bytes | None, int]]) -> None:
    exts = [Extent(i, n) for i, n in raw]
    enc = _encode_extents(exts)
    assert enc == [[None if e.id is None else _b64id(e.id), e.length] for e in exts]
    assert _parse_extents(enc, "t") == _parse_extents_slow(enc, "t") == exts
    assert extent_ids(enc, "t") == [e.id for e in exts if e.id is not None]


def test_batch_ids_of_several_files() -> None:
    ids = [os.urandom(32) for _ in range(50)]
    xss = [_encode_extents([Extent(i, 10) for i in ids[k:k + 10]]) for k in range(0, 50, 10)]
    raw = extent_ids_all(xss)
    assert raw is not None and [raw[k:k + 32] for k in range(0, len(raw), 33)] == ids
    assert extent_ids_all([*xss, [[None, 5]]]) is None  # a hole: checked file by file instead
    assert extent_ids_all([*xss, "nope"]) is None


_ID = _b64id(b"\x07" * 32)


@pytest.mark.parametrize(("xs", "message"), [
    ([[_ID, 0]], "bad extent length 0"),
    ([[_ID, True]], "bad extent length True"),
    ([[_ID, 1.5]], "bad extent length 1.5"),
    ([[_ID, 1, 2]], "bad extent"),
    ([_ID], "bad extent"),
    ([["x" * 43, 4]], "bad blob id"),
    ([[_ID[:-1] + "B", 4]], "bad blob id"),  # not canonical: its last 2 bits are not zero
    ([[_ID[:-2] + "!A", 4]], "bad blob id"),
    ([[_ID[:-1], 4]], "bad blob id"),
    ([[_ID[:-1] + "é", 4]], "bad blob id"),
    ([[3, 4]], "bad blob id"),
])
def test_bad_extents_refused_like_the_reference(xs: list[Any], message: str) -> None:
    with pytest.raises(IntegrityError, match="bad") as fast:
        _parse_extents(xs, "tree t")
    with pytest.raises(IntegrityError) as ref:
        _parse_extents_slow(xs, "tree t")
    assert fast.value.message == ref.value.message
    assert message in fast.value.message
    with pytest.raises(IntegrityError):
        extent_ids(xs, "tree t")
    assert extent_ids_all([xs]) is None


def test_objects_round_trip_like_nodes() -> None:
    nodes = _sample()
    blob = encode_tree(nodes)
    objs = parse_tree_objects(blob)
    assert list(objs) == sorted(n.name for n in nodes)
    assert {n.name: node_to_obj(n) for n in nodes} == objs
    assert [obj_to_node(o, "t") for o in objs.values()] == decode_tree(blob)
    assert encode_objects([(n.name, node_to_obj(n)) for n in reversed(nodes)]) == blob
    with pytest.raises(IntegrityError, match="duplicate"):
        encode_objects([(b"a", {"t": "fifo", "n": "a"}), (b"a", {"t": "fifo", "n": "a"})])


@pytest.mark.parametrize(("lines", "message"), [
    ([b'{"n":"a","t":"fifo"}', b"{nope"], "line 2 is not JSON"),
    ([b'{"n":"a","t":"fifo"}', b'{"n":"b","t":"fifo"},{"n":"c","t":"fifo"}'], "line 2 is not JSON"),
    ([b'{"n":"a","t":"fifo"}', b""], "line 2 is not JSON"),
    ([b'["n"]'], "not an object"),
    ([b'{"t":"fifo"}'], "without a name"),
    ([b'{"n":"..","t":"fifo"}'], "unsafe entry name"),
    ([b'{"n":"b","t":"fifo"}', b'{"n":"a","t":"fifo"}'], "out of order"),
    ([b'{"n":"a","t":"fifo"}', b'{"n":"a","t":"fifo"}'], "duplicate or out of order"),
])
def test_object_parse_checks_the_framing(lines: list[bytes], message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        parse_tree_objects(b"\n".join([HEADER, *lines]) + b"\n")
    with pytest.raises(IntegrityError, match=message.split()[0]):
        decode_tree(b"\n".join([HEADER, *lines]) + b"\n")


def test_backup_reuses_unchanged_and_rereads_a_bad_parent_entry(tmp_path: Path, repo: Any) -> None:
    """Unchanged files reuse the parent's entry as is (the tree id too); an entry whose parent object does
    not check out is read again with a warning, the rest of its directory is still reused."""
    from frieze.repo.backup import backup
    from frieze.repo.types import BlobKind

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    rng = random.Random(3)
    for i in range(20):
        (src / "d" / f"f{i:02d}").write_bytes(rng.randbytes(rng.randint(0, 3000)))
    backup(repo, [src], host="h")  # (listing the directories may update their atime once: relatime)
    first = backup(repo, [src], host="h")
    again = backup(repo, [src], host="h")
    assert again.tree == first.tree and again.stats.files_unchanged == 20 and again.stats.bytes_read == 0
    # a parent whose d/ tree has one entry with a malformed extent list (a writer with the keys made it)
    root = parse_tree_objects(repo.read_blob(first.tree))
    sub_id = obj_to_node(root[b"d"], "t").subtree
    assert sub_id is not None
    objs = parse_tree_objects(repo.read_blob(sub_id))
    objs[b"f05"] = {**objs[b"f05"], "x": [[objs[b"f05"]["x"][0][0], 0]]}
    blob = encode_objects(list(objs.items()))
    bad_sub = repo.chunk_id(blob)
    root[b"d"] = {**root[b"d"], "st": _b64id(bad_sub)}
    rblob = encode_objects(list(root.items()))
    with repo.writer(host="h") as w:
        w.add_blob(bad_sub, blob, kind=BlobKind.TREE)
        w.add_blob(repo.chunk_id(rblob), rblob, kind=BlobKind.TREE)
        bad = w.commit(tree=repo.chunk_id(rblob), paths=[str(src)], host="h", tags=[], label=None,
                       parent=None, stats={})
    third = backup(repo, [src], host="h", parent=bad)
    assert third.stats.files_unchanged == 19 and third.stats.files_read == 1
    assert any("f05" in w and "unreadable" in w for w in third.stats.warnings)
    # the re-read file gives back the good entry: d's tree is first's again; d's own record may differ from
    # first's in its access time only (it differs from the bad parent's in its subtree, so it is taken anew)
    assert same_but_atime(repo, third.tree, first.tree)
    assert obj_to_node(parse_tree_objects(repo.read_blob(third.tree))[b"d"], "t").subtree == sub_id
    n = Node(name=b"x", type=NodeType.FILE)
    assert obj_to_node(node_to_obj(n), "t") == n


@pytest.mark.parametrize("bad_at", [-1, "x", 1.5, None, True, 1 << 70])
def test_a_parent_entry_with_a_bad_atime_is_not_kept(tmp_path: Path, repo: Any, bad_at: Any) -> None:
    """A parent record that differs from the new one in its atime alone is kept only if that atime is valid:
    a malformed one (written by a client with the keys) is read again with a warning, never carried on."""
    from frieze.repo.backup import backup
    from frieze.repo.types import BlobKind

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data" * 100)
    first = backup(repo, [src], host="h")
    root = parse_tree_objects(repo.read_blob(first.tree))
    root[b"f"] = {**root[b"f"], "at": bad_at}
    rblob = encode_objects(list(root.items()))
    with repo.writer(host="h") as w:
        w.add_blob(repo.chunk_id(rblob), rblob, kind=BlobKind.TREE)
        bad = w.commit(tree=repo.chunk_id(rblob), paths=[str(src)], host="h", tags=[], label=None,
                       parent=None, stats={})
    got = backup(repo, [src], host="h", parent=bad)
    assert got.stats.files_unchanged == 0 and got.stats.files_read == 1
    assert any("unreadable" in w for w in got.stats.warnings), got.stats.warnings
    assert decode_tree(repo.read_blob(got.tree), got.tree)[0].atime_ns == (src / "f").stat().st_atime_ns
