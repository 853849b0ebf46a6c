"""Restore safety against crafted snapshots and hostile targets: zero writes outside the target.

Every case writes crafted tree blobs straight through the repository writer (as a malicious or buggy
writer could), commits a snapshot, restores it into a fresh target beside a canary directory, and checks
that nothing outside the target changed and that the error (if any) is a clear FriezeError.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.repo.test_data_support import make_repo
from tests.repo.test_format_support import DictStore

from frieze.core.errors import FriezeError, IntegrityError
from frieze.repo.backup import backup
from frieze.repo.browse import resolve
from frieze.repo.pack import pack_key
from frieze.repo.repository import Repository
from frieze.repo.restore import restore
from frieze.repo.tree import HEADER
from frieze.repo.types import BlobKind

Obj = dict[str, Any]


def b64id(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Crafter:
    """Writes raw tree/data blobs and commits snapshots whose root is a crafted tree (one writer per case)."""

    def __init__(self, repo: Any) -> None:
        self.repo = repo
        self.w: Any = None

    def writer(self) -> Any:
        if self.w is None:
            self.w = self.repo.writer(host="evil")
        return self.w

    def data(self, payload: bytes) -> str:
        bid = self.repo.chunk_id(payload)
        self.writer().add_blob(bid, payload)
        return b64id(bid)

    def tree(self, *objs: Obj, claimed_id: bytes | None = None) -> bytes:
        blob = HEADER + b"\n" + b"".join(json.dumps(o, sort_keys=True).encode() + b"\n" for o in objs)
        tid = claimed_id or self.repo.chunk_id(blob)
        self.writer().add_blob(tid, blob, kind=BlobKind.TREE)
        return tid

    def snapshot(self, *objs: Obj) -> str:
        root = self.tree(*objs)
        w, self.w = self.writer(), None
        try:
            return str(w.commit(tree=root, paths=["/evil"], host="evil", tags=[], label=None, parent=None,
                                stats={}))
        finally:
            w.close()


def listing(root: Path, skip: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p == skip:
                continue
            st = os.lstat(p)
            body = p.read_bytes() if stat.S_ISREG(st.st_mode) else (
                os.readlink(p) if stat.S_ISLNK(st.st_mode) else None)
            out[str(p)] = (st.st_mode, st.st_mtime_ns, body)  # not nlink: replacing a link in the target is fine
    return out


@dataclass
class Case:
    name: str
    build: Callable[[Crafter, Path, Path], list[Obj]]  # (crafter, outside dir, target) -> root objects
    expect_error: bool = True
    prepare: Callable[[Path, Path], None] | None = None  # (outside, target): hostile target contents
    check: Callable[[Path, Path], None] | None = None
    kwargs: dict[str, Any] | None = None


def f(name: str, size: int = 0, x: list[Any] | None = None, **kw: Any) -> Obj:
    o: Obj = {"t": "file", "n": name, "s": size, "m": 0o644, **kw}
    if x:
        o["x"] = x
    return o


def nb(name: bytes) -> Obj:
    return {"nb": base64.b64encode(name).decode()}


def _dir(cr: Crafter, name: str, *children: Obj) -> Obj:
    return {"t": "dir", "n": name, "m": 0o755, "st": b64id(cr.tree(*children))}


def _deep(cr: Crafter, depth: int) -> list[Obj]:
    node: list[Obj] = [f("leaf")]
    for i in range(depth):
        node = [_dir(cr, f"d{i}", *node)]
    return node


def _self_ref(cr: Crafter, out: Path, t: Path) -> list[Obj]:
    claimed = b"\x42" * 32
    cr.tree({"t": "dir", "n": "loop", "m": 0o755, "st": b64id(claimed)}, claimed_id=claimed)
    return [{"t": "dir", "n": "top", "m": 0o755, "st": b64id(claimed)}]


def _symlink_out(out: Path, t: Path) -> None:
    t.mkdir()
    os.symlink(out, t / "d")


def _file_symlink_out(out: Path, t: Path) -> None:
    t.mkdir()
    os.symlink(out / "canary", t / "f")


def _nested_symlink_out(out: Path, t: Path) -> None:
    (t / "a").mkdir(parents=True)
    os.symlink(out, t / "a" / "b")


def _hardlink_in_target(out: Path, t: Path) -> None:
    t.mkdir()
    os.link(out / "canary", t / "f")


def _dir_in_place(out: Path, t: Path) -> None:
    (t / "f").mkdir(parents=True)


def _relative_up_symlink(out: Path, t: Path) -> None:
    t.mkdir()
    os.symlink("../outside", t / "d")


def _replaced_is_file(out: Path, t: Path) -> None:
    assert stat.S_ISREG(os.lstat(t / "f").st_mode)
    assert (t / "f").read_bytes() == b"inside"


def cases() -> list[Case]:
    def abs_out(out: Path) -> str:
        return str(out / "evil")

    return [
        # --- names
        Case("name-dotdot", lambda c, o, t: [f("..")]),
        Case("name-dot", lambda c, o, t: [f(".")]),
        Case("name-empty", lambda c, o, t: [f("")]),
        Case("name-slash", lambda c, o, t: [f("a/b")]),
        Case("name-only-slash", lambda c, o, t: [f("/")]),
        Case("name-dotdot-path", lambda c, o, t: [f("../outside/evil")]),
        Case("name-absolute", lambda c, o, t: [f(abs_out(o))]),
        Case("name-nul", lambda c, o, t: [f("a\x00b")]),
        Case("name-b64-dotdot", lambda c, o, t: [{"t": "file", "s": 0, **nb(b"\xff/../../evil")}]),
        Case("name-b64-dotdot-plain", lambda c, o, t: [{"t": "file", "s": 0, **nb(b"..")}]),
        Case("name-too-long", lambda c, o, t: [f("x" * 256)]),
        Case("name-dotdot-in-subdir", lambda c, o, t: [_dir(c, "sub", f(".."))]),
        Case("name-abs-in-subdir", lambda c, o, t: [_dir(c, "sub", _dir(c, "s2", f(abs_out(o))))]),
        Case("dup-files", lambda c, o, t: [f("a"), f("a")]),
        Case("dup-dir-and-file", lambda c, o, t: [_dir(c, "a", f("x")), f("a")]),
        Case("out-of-order", lambda c, o, t: [f("b"), f("a")]),
        # --- symlinks
        Case("symlink-then-dir-same-name", lambda c, o, t: [
            {"t": "symlink", "n": "esc", "tg": str(o)}, _dir(c, "esc", f("evil"))]),
        Case("symlink-then-hardlink-through-it", lambda c, o, t: [
            {"t": "hardlink", "n": "h", "ln": "esc/canary"}, {"t": "symlink", "n": "esc", "tg": str(o)}]),
        Case("symlink-relative-out-then-file-through", lambda c, o, t: [
            {"t": "symlink", "n": "esc", "tg": "../outside"}, _dir(c, "esc", f("evil"))]),
        Case("symlink-target-nul", lambda c, o, t: [{"t": "symlink", "n": "s", "tg": "a\x00b"}]),
        Case("symlink-no-target", lambda c, o, t: [{"t": "symlink", "n": "s"}]),
        Case("symlink-out-is-created-not-followed", lambda c, o, t: [
            {"t": "symlink", "n": "esc", "tg": str(o / "canary")}], expect_error=False,
            check=lambda o, t: os.readlink(t / "esc") == str(o / "canary")),
        # --- hostile targets
        Case("pre-existing-symlink-dir", lambda c, o, t: [_dir(c, "d", f("evil"))], prepare=_symlink_out),
        Case("pre-existing-relative-symlink-dir", lambda c, o, t: [_dir(c, "d", f("evil"))],
             prepare=_relative_up_symlink),
        Case("pre-existing-nested-symlink", lambda c, o, t: [_dir(c, "a", _dir(c, "b", f("evil")))],
             prepare=_nested_symlink_out),
        Case("pre-existing-symlink-file", lambda c, o, t: [f("f", 6, [[c.data(b"inside"), 6]])],
             expect_error=False, prepare=_file_symlink_out, check=_replaced_is_file),
        Case("pre-existing-hardlink-to-outside", lambda c, o, t: [f("f", 6, [[c.data(b"inside"), 6]])],
             expect_error=False, prepare=_hardlink_in_target, check=_replaced_is_file),
        Case("pre-existing-symlink-replaced-by-symlink", lambda c, o, t: [{"t": "symlink", "n": "f", "tg": "x"}],
             expect_error=False, prepare=_file_symlink_out),
        Case("pre-existing-dir-where-file", lambda c, o, t: [f("f", 6, [[c.data(b"inside"), 6]])],
             prepare=_dir_in_place),
        # --- hard links
        Case("hardlink-absolute", lambda c, o, t: [{"t": "hardlink", "n": "h", "ln": str(o / "canary")}]),
        Case("hardlink-dotdot", lambda c, o, t: [{"t": "hardlink", "n": "h", "ln": "../outside/canary"}]),
        Case("hardlink-inner-dotdot", lambda c, o, t: [{"t": "hardlink", "n": "h", "ln": "a/../../outside/canary"}]),
        Case("hardlink-to-symlink", lambda c, o, t: [
            {"t": "hardlink", "n": "h", "ln": "s"}, {"t": "symlink", "n": "s", "tg": str(o / "canary")}]),
        Case("hardlink-to-missing", lambda c, o, t: [{"t": "hardlink", "n": "h", "ln": "nope"}]),
        Case("hardlink-to-dir", lambda c, o, t: [_dir(c, "d", f("x")), {"t": "hardlink", "n": "h", "ln": "d"}]),
        Case("hardlink-nul", lambda c, o, t: [{"t": "hardlink", "n": "h", "ln": "a\x00"}]),
        Case("hardlink-empty", lambda c, o, t: [{"t": "hardlink", "n": "h", "ln": ""}]),
        Case("hardlink-no-path", lambda c, o, t: [{"t": "hardlink", "n": "h"}]),
        # --- devices and specials
        Case("char-device", lambda c, o, t: [{"t": "char", "n": "mem", "rd": os.makedev(1, 1), "m": 0o666}],
             expect_error=False, check=lambda o, t: not os.path.lexists(t / "mem")),
        Case("block-device", lambda c, o, t: [{"t": "block", "n": "sda", "rd": os.makedev(8, 0), "m": 0o666}],
             expect_error=False, check=lambda o, t: not os.path.lexists(t / "sda")),
        Case("device-in-subdir", lambda c, o, t: [_dir(c, "dev", {"t": "char", "n": "kmem", "rd": os.makedev(1, 2)})],
             expect_error=False, check=lambda o, t: not os.path.lexists(t / "dev/kmem")),
        Case("socket", lambda c, o, t: [{"t": "socket", "n": "sock"}], expect_error=False,
             check=lambda o, t: not os.path.lexists(t / "sock")),
        # --- sizes and content
        Case("huge-sparse-claim", lambda c, o, t: [f("big", 1 << 62, [[None, 1 << 62]])]),
        Case("huge-sparse-many-holes", lambda c, o, t: [f("big", (1 << 50) * 3 + 4, [
            [None, 1 << 50], [c.data(b"abcd"), 4], [None, 1 << 50], [None, 1 << 50]])]),
        Case("sparse-over-custom-limit", lambda c, o, t: [f("big", 1 << 30, [[None, 1 << 30]])],
             kwargs={"max_file_size": 1 << 20}),
        Case("extents-do-not-cover-size", lambda c, o, t: [f("a", 100, [[c.data(b"abc"), 3]])]),
        Case("extent-length-lies", lambda c, o, t: [f("a", 10, [[c.data(b"short"), 10]])],
             check=lambda o, t: not any(p.name.startswith("a") or p.name.startswith(".frieze") for p in t.iterdir())),
        Case("negative-size", lambda c, o, t: [f("a", -5)]),
        Case("missing-blob", lambda c, o, t: [f("a", 3, [[b64id(b"\x07" * 32), 3]])]),
        Case("mode-with-type-bits", lambda c, o, t: [f("a", m=0o170777)]),
        Case("xattr-name-nul", lambda c, o, t: [f("a", xa=[[base64.b64encode(b"user.a\x00b").decode(), ""]])]),
        # --- structure
        Case("tree-references-itself", _self_ref),
        Case("subtree-is-a-data-blob", lambda c, o, t: [{"t": "dir", "n": "d", "st": c.data(b"not a tree")}]),
        Case("subtree-missing", lambda c, o, t: [{"t": "dir", "n": "d", "st": b64id(b"\x08" * 32)}]),
        Case("dir-without-subtree", lambda c, o, t: [{"t": "dir", "n": "d"}]),
        Case("too-deep", lambda c, o, t: _deep(c, 1100)),
    ]


CASES = cases()


def test_case_count() -> None:
    assert len(CASES) >= 40


@pytest.fixture(scope="module")
def crafter() -> Crafter:
    return Crafter(make_repo())


def _rm_tree(path: Path) -> None:
    """Remove a tree of any depth (the too-deep case nests past PATH_MAX and the recursion limit, which
    shutil.rmtree and pytest's temp-dir cleanup cannot): iterative, through directory file descriptors."""
    if not os.path.lexists(path):
        return
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        os.unlink(path)
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    parent = os.open(path.parent, flags)
    stack: list[tuple[int, str]] = [(parent, path.name)]  # (fd of the directory holding it, name)
    fds: list[int] = [parent]
    try:
        while stack:
            pfd, name = stack[-1]
            fd = os.open(name, flags, dir_fd=pfd)
            sub = None
            with os.scandir(fd) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        sub = e.name
                        break
                    os.unlink(e.name, dir_fd=fd)
            if sub is None:
                os.close(fd)
                os.rmdir(name, dir_fd=pfd)
                stack.pop()
            else:
                fds.append(fd)
                stack.append((fd, sub))
    finally:
        for fd in fds:
            os.close(fd)


def _run_case(case: Case, crafter: Crafter, root: Path) -> tuple[int, FriezeError | None, bool]:
    """Run one case under ``root`` (its outside dir, canary and target live there); return (writes outside the
    target anywhere under ``scan``, the error, refused at commit). ``scan`` is ``root``'s parent, so a sweep
    over many cases also sees a write into an earlier case's directories."""
    scan = root.parent
    outside = root / "outside"
    outside.mkdir(parents=True)
    (outside / "canary").write_bytes(b"canary")
    target = root / "target"
    if case.prepare:
        case.prepare(outside, target)
    objs = case.build(crafter, outside, target)
    try:
        snap = crafter.snapshot(*objs)
    except FriezeError as e:  # refused at commit time is fine too
        return 0, e, True
    if not os.path.lexists(target):
        target.mkdir()  # created now, so that creating it is not counted as a change of its parent
    before = listing(scan, target)
    err: FriezeError | None = None
    try:
        restore(crafter.repo, snap, target, **(case.kwargs or {}))
    except FriezeError as e:
        err = e
    after = listing(scan, target)
    writes = len(set(before.items()) ^ set(after.items()))
    assert (outside / "canary").read_bytes() == b"canary"
    assert list(outside.iterdir()) == [outside / "canary"]
    if case.expect_error:
        assert err is not None, "expected a clear error"
        assert isinstance(err, FriezeError) and err.message
    else:
        assert err is None, err
    if case.check:
        assert case.check(outside, target) is not False
    leftovers = [n for _, _, files, _ in os.fwalk(target) for n in files if n.startswith(".frieze-restore-")]
    assert leftovers == []
    _rm_tree(target)
    return writes, err, False


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malicious_restore(case: Case, crafter: Crafter, tmp_path: Path) -> None:
    writes, err, refused = _run_case(case, crafter, tmp_path / "case")
    where = "commit" if refused else "restore"
    print(f"RESULT R-MAL case={case.name} outside_writes={writes} refused_at={where} "
          f"error={err.code if err is not None else None}")
    assert writes == 0


def test_summary_line(tmp_path: Path) -> None:
    """Every case in one sweep, one repository, one directory: the figures are counted, not written in."""
    crafter = Crafter(make_repo())
    writes = errors = refused = 0
    per_case: dict[str, int] = {}
    for i, case in enumerate(CASES):
        w, err, ref = _run_case(case, crafter, tmp_path / f"{i:03d}")
        per_case[case.name] = w
        writes += w
        errors += err is not None
        refused += ref
    bad = {n: w for n, w in per_case.items() if w}
    print(f"RESULT R-MAL cases={len(per_case)} outside_writes={writes} clear_errors={errors} "
          f"refused_at_commit={refused}")
    assert len(per_case) == len(CASES) >= 40
    assert writes == 0, bad
    # control: the scan does see a write outside a target (so the zero above is a measurement)
    ctl = tmp_path / "000"
    before = listing(ctl, ctl / "target")
    (ctl / "outside" / "planted").write_bytes(b"x")
    assert len(set(before.items()) ^ set(listing(ctl, ctl / "target").items())) >= 1


def test_corrupted_blob_fails_closed(tmp_path: Path) -> None:
    """A snapshot whose data blob is damaged: restore fails closed, never puts a wrong byte in place."""
    from frieze.repo.types import KdfParams, RepoParams

    store = DictStore()
    repo = Repository.init(store, "pw", params=RepoParams(cdc_min=16384, cdc_avg=65536, cdc_max=262144,
                                                          kdf=KdfParams.cheap_for_tests()))
    src = tmp_path / "src"
    src.mkdir()
    files = {f"f{i}": os.urandom(50_000 + i) for i in range(6)}
    for n, b in files.items():
        (src / n).write_bytes(b)
    res = backup(repo, [str(src)], host="h")
    node, _ = resolve(repo, res.tree, "f3")
    assert node is not None
    victim = node.extents[-1].id
    assert victim is not None
    e = repo.dedup.lookup(victim)
    key = pack_key(e.pack_id)
    raw = bytearray(store.get(key))
    raw[e.offset + e.length // 2] ^= 0x01
    store.force(key, bytes(raw))
    target = tmp_path / "out"
    with pytest.raises(IntegrityError) as ei:
        restore(repo, res.snapshot_id, target, threads=1)
    assert victim.hex() in str(ei.value.details) or victim.hex() in ei.value.message
    present = {p.name: p.read_bytes() for p in target.iterdir()}
    assert "f3" not in present
    assert all(files[n] == b for n, b in present.items())  # whatever is there is byte-exact
    assert not any(n.startswith(".frieze") for n in present)
    print(f"RESULT R-CORRUPT restored_ok={len(present)} wrong_bytes=0 error={ei.value.code}")
