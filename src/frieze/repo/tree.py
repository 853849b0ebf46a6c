"""Files and trees: the node format of a snapshot's directory tree.

A **tree blob** describes one directory: the list of its entries (nodes), sorted by name bytes. It is
stored as a blob of kind ``TREE`` whose id is the repository's keyed chunk id of the serialized bytes, so
equal directories share one blob and a changed file changes the ids of the trees on its path only.

Serialization (version 1), deterministic and compact:

- UTF-8 JSON lines. Line 1 is the header ``{"frieze":"tree","v":1}``; every following line is one node.
- Each node is a JSON object with sorted keys, no spaces, and fields equal to their default omitted.
- Nodes are sorted by name bytes, strictly increasing (so duplicate names cannot be encoded).
- Byte strings (names, symlink targets, hard-link paths, xattr names/values) are stored as text when
  they are valid UTF-8 (key ``n``, ``tg``, ``ln``) and as base64 otherwise (key ``nb``, ``tgb``, ``lnb``).
- Blob ids are base64url without padding (43 characters for 32 bytes).

Contracts:

- :func:`encode_tree` of the same nodes gives the same bytes (the dedup of trees relies on it).
- :func:`decode_tree` accepts only what :func:`encode_tree` can produce: every name passes
  :func:`check_name`, names strictly increase, types and fields are checked, and a file's extents sum to
  its size. Anything else raises :class:`frieze.core.errors.IntegrityError` naming the tree (when the
  caller gave its id) and the offending entry. Restore relies on this as its first line of defence.
- :func:`referenced_blobs` returns ``(subtree ids, data ids)`` of one tree blob, each in first-seen order
  without duplicates: check and prune walk the snapshot graph with it.

See docs/design/repository-files-and-trees.md.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import operator
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from frieze.core.errors import IntegrityError

FORMAT_VERSION = 1
HEADER = b'{"frieze":"tree","v":1}'
#: Longest name accepted (Linux NAME_MAX).
NAME_MAX = 255
#: Longest symlink target or hard-link path accepted (Linux PATH_MAX).
PATH_MAX = 4096
ID_LEN = 32


class NodeType(StrEnum):
    """The kind of a directory entry."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    #: A further name of a file already recorded in this snapshot (``link`` = its snapshot path).
    HARDLINK = "hardlink"
    FIFO = "fifo"
    CHAR = "char"
    BLOCK = "block"
    SOCKET = "socket"


class Extent(NamedTuple):
    """A run of a file's bytes: a data blob (``id``) of ``length`` bytes, or a hole (``id is None``).

    A named tuple (not a dataclass): a 1 GiB database file has 16 384 of them, built on every decode."""

    id: bytes | None
    length: int


@dataclass
class Node:
    """One directory entry. Times are nanoseconds since the epoch; ``mode`` holds permission bits only
    (``st_mode & 0o7777``); the type is in ``type``."""

    name: bytes
    type: NodeType
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    inode: int = 0
    dev: int = 0
    nlink: int = 1
    #: Device number of a char/block device.
    rdev: int = 0
    #: Extended attributes, sorted by name.
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: File content in order; holes have ``id is None``. Their lengths sum to ``size``.
    extents: list[Extent] = field(default_factory=list)
    #: Fixed block size the file was cut with (0: content-defined chunking).
    block_size: int = 0
    #: Page size of the engine the fixed blocks are aligned to (0: not a fixed-block file).
    page_size: int = 0
    #: Tree blob id of a directory.
    subtree: bytes | None = None
    #: Symlink target (never followed by frieze).
    target: bytes | None = None
    #: Hard link: the snapshot-relative path (``/``-separated) of the file node it is another name of.
    link: bytes | None = None

    def data_ids(self) -> list[bytes]:
        """The data blob ids of this node, in file order, with repeats."""
        return [e.id for e in self.extents if e.id is not None]


# ----------------------------------------------------------------------------------------------- names


def check_name(name: bytes) -> bytes:
    """Return ``name`` if it is a safe single path component, else raise IntegrityError.

    Safe: 1..255 bytes, not ``.`` or ``..``, no ``/`` and no NUL byte.
    """
    if not isinstance(name, bytes):
        raise IntegrityError(f"entry name {name!r} is not bytes", name=repr(name))
    if not name or len(name) > NAME_MAX:
        raise IntegrityError(f"unsafe entry name {name!r}: empty or longer than {NAME_MAX} bytes", name=repr(name))
    if name in (b".", b".."):
        raise IntegrityError(f"unsafe entry name {name!r}: a dot entry", name=repr(name))
    if b"/" in name or b"\x00" in name:
        raise IntegrityError(f"unsafe entry name {name!r}: contains '/' or NUL", name=repr(name))
    return name


def split_link_path(path: bytes) -> list[bytes]:
    """Split a snapshot-relative hard-link path into checked components (no absolute path, no ``..``)."""
    if not path or len(path) > PATH_MAX or path.startswith(b"/"):
        raise IntegrityError(f"unsafe hard-link path {path!r}", path=repr(path))
    return [check_name(p) for p in path.split(b"/")]


# -------------------------------------------------------------------------------------------- encoding


def subtree_id(obj: dict[str, Any]) -> bytes:
    """The subtree id of a directory's node object (IntegrityError if malformed)."""
    return _unb64id(obj["st"], "directory entry")


def _b64id(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


# 43 base64url characters carry 258 bits; the canonical encoding of 32 bytes leaves the last 2 bits zero.
_CANON_LAST = frozenset("AEIMQUYcgkosw048")
_B64URL = re.compile(r"[A-Za-z0-9_-]{43}\Z")


def _unb64id(s: Any, what: str) -> bytes:
    if type(s) is not str or len(s) != 43 or s[-1] not in _CANON_LAST or not _B64URL.match(s):
        raise IntegrityError(f"bad blob id {s!r} in {what}")
    try:
        raw = base64.urlsafe_b64decode(s + "=")
    except (binascii.Error, ValueError) as e:
        raise IntegrityError(f"bad blob id {s!r} in {what}") from e
    if len(raw) != ID_LEN:
        raise IntegrityError(f"bad blob id {s!r} in {what}")
    return raw


_B64URL_RUN = re.compile(r"[A-Za-z0-9_-]*\Z")
_TO_STD = str.maketrans("-_", "+/")


def _parse_extents_slow(xs: list[Any], what: str) -> list[Extent]:
    """Check and decode a node's extent list item by item (the reference; names the first bad item)."""
    lens: list[int] = []
    strs: list[str] = []
    for item in xs:
        if type(item) is not list or len(item) != 2:
            raise IntegrityError(f"{what}: bad extent {item!r}")
        sid, ln = item
        if sid is not None:
            if type(sid) is not str or len(sid) != 43 or sid[-1] not in _CANON_LAST:
                raise IntegrityError(f"bad blob id {sid!r} in {what}")
            strs.append(sid)
        if type(ln) is not int or ln <= 0 or ln >= 1 << 63:
            raise IntegrityError(f"{what}: bad extent length {ln!r}")
        lens.append(ln)
    joined = "A".join(strs)
    if not _B64URL_RUN.match(joined):
        for sid in strs:
            _unb64id(sid, what)  # raises for the bad one
        raise IntegrityError(f"bad blob id in {what}")
    raw = binascii.a2b_base64((joined + "A").translate(_TO_STD)) if strs else b""
    out: list[Extent] = []
    k = 0
    for item, ln in zip(xs, lens, strict=True):
        if item[0] is None:
            out.append(Extent(None, ln))
        else:
            out.append(Extent(raw[k:k + ID_LEN], ln))
            k += ID_LEN + 1
    return out


_B64URL_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STD_BYTES = bytes.maketrans(b"-_", b"+/")
_ONLY_LIST = {list}
_ONLY_INT = {int}
_ONLY_STR = {str}
_ONLY_2 = {2}
_ONLY_43 = {43}


def _extent_columns(xs: list[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...], list[str]] | None:
    """``(ids, lengths, id strings)`` of a well-formed extent list, checked with set/map calls instead of a
    Python loop per extent; None when anything is off (the caller then runs the reference check)."""
    if type(xs) is not list or not xs:
        return ((), (), []) if type(xs) is list else None
    if set(map(type, xs)) != _ONLY_LIST or set(map(len, xs)) != _ONLY_2:
        return None
    sids, lens = zip(*xs, strict=True)
    if set(map(type, lens)) != _ONLY_INT or min(lens) <= 0 or max(lens) >= 1 << 63:
        return None
    strs = [x for x in sids if x is not None]
    if strs and (set(map(type, strs)) != _ONLY_STR or set(map(len, strs)) != _ONLY_43):
        return None
    return sids, lens, strs


def _decode_ids(strs: list[str]) -> bytes | None:
    """The 32-byte ids of canonical 43-character base64url ids, each followed by one zero byte (one base64
    call for all: a canonical id plus ``A`` is 44 characters = 33 bytes); None if any id is not canonical."""
    if not strs:
        return b""
    joined = "A".join(strs)
    if not set(joined[42::44]) <= _CANON_LAST or not joined.isascii():
        return None
    jb = joined.encode("ascii")
    if jb.translate(None, _B64URL_BYTES):  # anything left is not a base64url character
        return None
    return binascii.a2b_base64(jb.translate(_TO_STD_BYTES) + b"A")


def _parse_extents(xs: list[Any], what: str) -> list[Extent]:
    """Check and decode a node's extent list; the ids are decoded with one base64 call for all of them."""
    cols = _extent_columns(xs)
    raw = _decode_ids(cols[2]) if cols is not None else None
    if cols is None or raw is None:
        return _parse_extents_slow(xs, what)
    sids, lens, strs = cols
    ids: list[bytes | None] = [raw[k:k + ID_LEN] for k in range(0, len(raw), ID_LEN + 1)]
    if len(strs) != len(sids):  # holes among them
        it = iter(ids)
        ids = [None if x is None else next(it) for x in sids]
    return list(map(Extent, ids, lens))


def extent_ids(xs: Any, what: str) -> list[bytes]:
    """The data blob ids (file order, repeats kept, holes skipped) of a node object's raw ``x`` list, checked
    like :func:`decode_tree` checks it; IntegrityError naming ``what`` otherwise."""
    cols = _extent_columns(xs)
    raw = _decode_ids(cols[2]) if cols is not None else None
    if cols is None or raw is None:
        return [e.id for e in _parse_extents_slow(xs, what) if e.id is not None]
    return [raw[k:k + ID_LEN] for k in range(0, len(raw), ID_LEN + 1)]


def extent_ids_all(xss: list[Any]) -> bytes | None:
    """The ids of several raw ``x`` lists at once, as one bytes of 33-byte groups (id + a zero byte), when
    every list is well formed and has no hole; None otherwise (then check each list with :func:`extent_ids`)."""
    flat: list[Any] = []
    for xs in xss:
        if type(xs) is not list:
            return None
        flat.extend(xs)
    cols = _extent_columns(flat)
    if cols is None or len(cols[2]) != len(cols[0]):
        return None
    return _decode_ids(cols[2])


def _encode_extents(extents: list[Extent]) -> list[list[Any]]:
    """The ``x`` list of a node: ids base64url-encoded with one call for all (see :func:`_decode_ids`)."""
    ids = [e.id for e in extents if e.id is not None]
    if not ids:
        return [[None, e.length] for e in extents]
    if any(len(i) != ID_LEN for i in ids):
        return [[None if e.id is None else _b64id(e.id), e.length] for e in extents]
    text = base64.urlsafe_b64encode(b"\0".join(ids) + b"\0").decode("ascii")
    strs = [text[k:k + 43] for k in range(0, len(text), 44)]
    if len(ids) == len(extents):
        return [[sid, e.length] for sid, e in zip(strs, extents, strict=True)]
    it = iter(strs)
    return [[None if e.id is None else next(it), e.length] for e in extents]


def _put_bytes(d: dict[str, Any], text_key: str, bin_key: str, value: bytes) -> None:
    try:
        d[text_key] = value.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        d[bin_key] = base64.b64encode(value).decode("ascii")


def _get_bytes(d: dict[str, Any], text_key: str, bin_key: str, what: str) -> bytes | None:
    if text_key in d and bin_key in d:
        raise IntegrityError(f"{what}: both {text_key!r} and {bin_key!r} present")
    if text_key in d:
        v = d[text_key]
        if not isinstance(v, str):
            raise IntegrityError(f"{what}: {text_key!r} is not text")
        try:
            return v.encode("utf-8", errors="strict")
        except UnicodeEncodeError as e:
            raise IntegrityError(f"{what}: {text_key!r} is not valid UTF-8") from e
    if bin_key in d:
        v = d[bin_key]
        if not isinstance(v, str):
            raise IntegrityError(f"{what}: {bin_key!r} is not base64 text")
        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError) as e:
            raise IntegrityError(f"{what}: {bin_key!r} is not base64") from e
        try:
            raw.decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            return raw
        raise IntegrityError(f"{what}: {bin_key!r} holds valid UTF-8 (not canonical)")
    return None


_INT_FIELDS = ("mode", "uid", "gid", "mtime_ns", "atime_ns", "ctime_ns", "size", "inode", "dev", "rdev",
               "block_size", "page_size")
_INT_KEYS = {"mode": "m", "uid": "u", "gid": "g", "mtime_ns": "mt", "atime_ns": "at", "ctime_ns": "ct",
             "size": "s", "inode": "i", "dev": "d", "rdev": "rd", "block_size": "bs", "page_size": "ps"}


_INT_ATTRS = operator.attrgetter(*_INT_FIELDS)
_INT_KEY_SEQ = tuple(_INT_KEYS[f] for f in _INT_FIELDS)


def node_to_obj(node: Node) -> dict[str, Any]:
    """The JSON object of one node (defaults omitted)."""
    name = check_name(node.name)
    d: dict[str, Any] = {"t": node.type.value}
    try:
        d["n"] = name.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        d["nb"] = base64.b64encode(name).decode("ascii")
    for k, v in zip(_INT_KEY_SEQ, _INT_ATTRS(node), strict=True):
        if v:
            d[k] = int(v)
    if node.nlink != 1:
        d["nl"] = node.nlink
    if node.user:
        d["un"] = node.user
    if node.group:
        d["gn"] = node.group
    if node.xattrs:
        d["xa"] = [[base64.b64encode(k).decode("ascii"), base64.b64encode(v).decode("ascii")]
                   for k, v in sorted(node.xattrs)]
    if node.extents:
        d["x"] = _encode_extents(node.extents)
    if node.subtree is not None:
        d["st"] = _b64id(node.subtree)
    if node.target is not None:
        _put_bytes(d, "tg", "tgb", node.target)
    if node.link is not None:
        _put_bytes(d, "ln", "lnb", node.link)
    return d


_KEY_FIELDS = {v: k for k, v in _INT_KEYS.items()}
_KNOWN_KEYS = {"t", "n", "nb", "nl", "un", "gn", "xa", "x", "st", "tg", "tgb", "ln", "lnb", *_INT_KEYS.values()}


def _int(d: dict[str, Any], key: str, what: str, default: int = 0) -> int:
    v = d.get(key, default)
    if type(v) is not int or v < 0 or v >= 1 << 64:
        raise IntegrityError(f"{what}: field {key!r} is not an integer in [0, 2^64)")
    return v


def obj_to_node(d: Any, what: str) -> Node:
    """Parse and check one node object (see :func:`decode_tree`)."""
    if not isinstance(d, dict):
        raise IntegrityError(f"{what}: node is not an object")
    unknown = set(d) - _KNOWN_KEYS
    if unknown:
        raise IntegrityError(f"{what}: unknown node fields {sorted(unknown)}")
    name = _get_bytes(d, "n", "nb", what)
    if name is None:
        raise IntegrityError(f"{what}: node without a name")
    check_name(name)
    what = f"{what} entry {name!r}"
    try:
        ntype = NodeType(str(d.get("t")))
    except ValueError as e:
        raise IntegrityError(f"{what}: unknown node type {d.get('t')!r}") from e
    kw: dict[str, Any] = {}
    for key, val in d.items():
        f = _KEY_FIELDS.get(key)
        if f is not None:
            if type(val) is not int or val < 0 or val >= 1 << 64:
                raise IntegrityError(f"{what}: field {key!r} is not an integer in [0, 2^64)")
            kw[f] = val
    node = Node(name=name, type=ntype, **kw)
    if node.mode > 0o7777:
        raise IntegrityError(f"{what}: mode {node.mode:o} has bits beyond 0o7777")
    node.nlink = _int(d, "nl", what, 1)
    for key, attr in (("un", "user"), ("gn", "group")):
        if key in d:
            if not isinstance(d[key], str):
                raise IntegrityError(f"{what}: {key!r} is not text")
            setattr(node, attr, d[key])
    if "xa" in d:
        xa = d["xa"]
        if not isinstance(xa, list):
            raise IntegrityError(f"{what}: xattrs are not a list")
        pairs: list[tuple[bytes, bytes]] = []
        for item in xa:
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise IntegrityError(f"{what}: bad xattr entry")
            try:
                k, v = base64.b64decode(item[0], validate=True), base64.b64decode(item[1], validate=True)
            except (binascii.Error, ValueError) as e:
                raise IntegrityError(f"{what}: xattr is not base64") from e
            if not k or b"\x00" in k:
                raise IntegrityError(f"{what}: bad xattr name {k!r}")
            pairs.append((k, v))
        if [p[0] for p in pairs] != sorted({p[0] for p in pairs}):
            raise IntegrityError(f"{what}: xattr names not strictly sorted")
        node.xattrs = pairs
    if "x" in d:
        if ntype is not NodeType.FILE:
            raise IntegrityError(f"{what}: extents on a {ntype.value}")
        xs = d["x"]
        if not isinstance(xs, list):
            raise IntegrityError(f"{what}: extents are not a list")
        node.extents = _parse_extents(xs, what)
    if ntype is NodeType.FILE:
        total = sum(e.length for e in node.extents)
        if total != node.size:
            raise IntegrityError(f"{what}: extents cover {total} bytes but size is {node.size}")
    if "st" in d:
        if ntype is not NodeType.DIR:
            raise IntegrityError(f"{what}: subtree on a {ntype.value}")
        node.subtree = _unb64id(d["st"], what)
    elif ntype is NodeType.DIR:
        raise IntegrityError(f"{what}: directory without a subtree")
    node.target = _get_bytes(d, "tg", "tgb", what)
    if ntype is NodeType.SYMLINK:
        if not node.target or b"\x00" in node.target or len(node.target) > PATH_MAX:
            raise IntegrityError(f"{what}: bad symlink target")
    elif node.target is not None:
        raise IntegrityError(f"{what}: target on a {ntype.value}")
    node.link = _get_bytes(d, "ln", "lnb", what)
    if ntype is NodeType.HARDLINK:
        if node.link is None:
            raise IntegrityError(f"{what}: hard link without a path")
        split_link_path(node.link)
    elif node.link is not None:
        raise IntegrityError(f"{what}: link path on a {ntype.value}")
    return node


def encode_tree(nodes: list[Node]) -> bytes:
    """Serialize the nodes of one directory (sorted here by name; duplicate names raise IntegrityError)."""
    ordered = sorted(nodes, key=lambda n: n.name)
    for a, b in itertools.pairwise(ordered):
        if a.name == b.name:
            raise IntegrityError(f"duplicate entry name {a.name!r} in one directory")
    lines = [HEADER]
    for n in ordered:
        lines.append(json.dumps(node_to_obj(n), sort_keys=True, separators=(",", ":"),
                                ensure_ascii=False).encode("utf-8"))
    return b"\n".join(lines) + b"\n"


def decode_tree(blob: bytes, tree_id: bytes | None = None) -> list[Node]:
    """Parse and check a tree blob (see the module docstring). IntegrityError names the tree and entry."""
    what = f"tree {tree_id.hex()}" if tree_id is not None else "tree"
    if not blob.endswith(b"\n"):
        raise IntegrityError(f"{what}: not a tree blob (no final newline)", tree=tree_id.hex() if tree_id else None)
    lines = blob[:-1].split(b"\n")
    if lines[0] != HEADER:
        raise IntegrityError(f"{what}: not a tree blob of version {FORMAT_VERSION}",
                             tree=tree_id.hex() if tree_id else None)
    nodes: list[Node] = []
    for i, line in enumerate(lines[1:], start=1):
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            raise IntegrityError(f"{what}: line {i} is not JSON") from e
        node = obj_to_node(obj, what)
        if nodes and not nodes[-1].name < node.name:
            raise IntegrityError(f"{what}: entry {node.name!r} is a duplicate or out of order",
                                 tree=tree_id.hex() if tree_id else None, name=repr(node.name))
        nodes.append(node)
    return nodes


def parse_tree_objects(blob: bytes, tree_id: bytes | None = None) -> dict[bytes, dict[str, Any]]:
    """The node objects of a tree blob by name, with the framing checked (header, one JSON object per line,
    safe names strictly increasing) but the fields not: :func:`obj_to_node` checks them when a node is built.

    For a caller that compares objects instead of using nodes (backup compares the object it would write for
    an entry with its parent's, and builds a parent node only where it needs one)."""
    what = f"tree {tree_id.hex()}" if tree_id is not None else "tree"
    if not blob.endswith(b"\n"):
        raise IntegrityError(f"{what}: not a tree blob (no final newline)", tree=tree_id.hex() if tree_id else None)
    lines = blob[:-1].split(b"\n")
    if lines[0] != HEADER:
        raise IntegrityError(f"{what}: not a tree blob of version {FORMAT_VERSION}",
                             tree=tree_id.hex() if tree_id else None)
    out: dict[bytes, dict[str, Any]] = {}
    last = b""
    try:  # one parser call for the whole tree; the line-by-line loop below names a bad line
        objs: list[Any] = json.loads(b"[" + b",".join(lines[1:]) + b"]")
        if len(objs) != len(lines) - 1:
            raise ValueError("a line holds more than one value")
    except (ValueError, UnicodeDecodeError):
        objs = []
        for i, line in enumerate(lines[1:], start=1):
            try:
                objs.append(json.loads(line))
            except (ValueError, UnicodeDecodeError) as e:
                raise IntegrityError(f"{what}: line {i} is not JSON") from e
    for obj in objs:
        if type(obj) is not dict:
            raise IntegrityError(f"{what}: node is not an object")
        name = _get_bytes(obj, "n", "nb", what)
        if name is None:
            raise IntegrityError(f"{what}: node without a name")
        check_name(name)
        if out and not last < name:
            raise IntegrityError(f"{what}: entry {name!r} is a duplicate or out of order",
                                 tree=tree_id.hex() if tree_id else None, name=repr(name))
        out[name] = obj
        last = name
    return out


def encode_objects(objs: list[tuple[bytes, dict[str, Any]]]) -> bytes:
    """A tree blob from ``(name, node object)`` pairs (each object as :func:`node_to_obj` makes it): the same
    bytes :func:`encode_tree` gives for the nodes. Duplicate names raise IntegrityError."""
    ordered = sorted(objs, key=lambda p: p[0])
    for a, b in itertools.pairwise(ordered):
        if a[0] == b[0]:
            raise IntegrityError(f"duplicate entry name {a[0]!r} in one directory")
    dumps = json.dumps
    lines = [HEADER]
    lines.extend(dumps(o, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
                 for _n, o in ordered)
    return b"\n".join(lines) + b"\n"


def referenced_blobs(tree_blob: bytes) -> tuple[list[bytes], list[bytes]]:
    """``(subtree ids, data ids)`` referenced by one tree blob, each deduplicated in first-seen order."""
    subtrees: dict[bytes, None] = {}
    data: dict[bytes, None] = {}
    for node in decode_tree(tree_blob):
        if node.subtree is not None:
            subtrees[node.subtree] = None
        for e in node.extents:
            if e.id is not None:
                data[e.id] = None
    return list(subtrees), list(data)
